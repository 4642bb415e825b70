//! Helpers for the model library's tests: where the fixtures are, loading them, and comparing
//! tensors the way the parity tests state their bounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// `tests/fixtures` of the workspace.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The tensors of a fixture file (a path under `tests/fixtures`), on the CPU.
pub fn load(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(rel), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A tensor's largest absolute value, as f32.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .and_then(|t| t.abs())
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max |t|")
}

/// max |a − b|.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).expect("f32");
    let b = b.to_dtype(DType::F32).expect("f32");
    max_abs(&(a - b).expect("difference"))
}

/// max |a − b| / max |b|: the relative error the parity bounds are stated in.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    max_diff(a, b) / max_abs(b).max(1e-12)
}

/// max |a − b| / max |b| computed in f64, for bounds below f32's precision.
pub fn rel_err_f64(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let f64_of = |t: &Tensor| t.to_dtype(DType::F64).expect("f64");
    let max = |t: Tensor| {
        t.abs()
            .and_then(|t| t.max_all())
            .and_then(|t| t.to_scalar::<f64>())
            .expect("max |t|")
    };
    max((f64_of(a) - f64_of(b)).expect("difference")) / max(f64_of(b)).max(1e-300)
}

/// The files in `dir` whose extension is `ext`, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// The median of `v` (benchmarks report it).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One warm-up, then the median wall time of `n` runs of `f`, its result forced each time
/// (summed on the CPU), in seconds.
pub fn time_forced(n: usize, mut f: impl FnMut() -> Tensor) -> f64 {
    let force = |t: Tensor| {
        t.to_dtype(DType::F32)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.to_scalar::<f32>())
    };
    force(f()).ok();
    let runs = (0..n)
        .map(|_| {
            let t0 = std::time::Instant::now();
            force(f()).ok();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    median(runs)
}
