//! Full-size models on the CPU: the peak memory of loading SDXL base 1.0's UNet (2.57 B) and
//! SD3.5 medium's transformer (2.47 B), and FLUX.1-dev's width with 2 + 4 of its 19 + 38 blocks,
//! from random bf16 weights at their published configs,
//! against the weight file, and one SDXL UNet step (CFG batch 2 of a 4×64×64 latent, 77 tokens of
//! 2048, pooled embedding and time ids; the mean of two after a warm-up). One measurement per
//! process, so peaks do not mix:
//!
//!   tools/reference/.venv/bin/python tools/reference/bench_big_models.py target/big-random make
//!   LATENTFLOW_BIG=$PWD/target/big-random LATENTFLOW_BIG_RUN=load:sdxl-unet cargo bench -p latentflow-models --bench big_models
//! (`load:sd35m`, `load:flux-width`, `step`); `LATENTFLOW_BIG_DTYPE=bf16` loads and computes in
//! bf16 (weights held as stored). `tools/bench/big_models.sh` runs all of it and diffusers side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use latentflow_models::flux::Flux;
use latentflow_models::sd::loader::{unet_folder, PredictionType};
use latentflow_models::sd::unet::Extras;
use latentflow_models::sd3::Sd3;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process's peak resident set (VmHWM), GiB.
fn peak_gib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0 / 1024.0)
}

fn file_gib(dir: &Path) -> f64 {
    let f = dir.join("diffusion_pytorch_model.safetensors");
    std::fs::metadata(f).map_or(f64::NAN, |m| m.len() as f64 / (1u64 << 30) as f64)
}

fn main() {
    let (Some(root), Some(run)) = (
        std::env::var_os("LATENTFLOW_BIG").map(PathBuf::from),
        std::env::var("LATENTFLOW_BIG_RUN").ok(),
    ) else {
        eprintln!("set LATENTFLOW_BIG and LATENTFLOW_BIG_RUN (see the file header)");
        return;
    };
    let dev = Device::Cpu;
    let (dtype, label) = match std::env::var("LATENTFLOW_BIG_DTYPE").as_deref() {
        Ok("bf16") => (DType::BF16, "bfloat16"),
        _ => (DType::F32, "float32"),
    };
    match run.as_str() {
        "load:sdxl-unet" | "load:sd35m" | "load:flux-width" => {
            let name = &run[5..];
            let dir = root.join(name);
            let before = peak_gib();
            let t0 = Instant::now();
            if name == "sdxl-unet" {
                let m = unet_folder(&dir, PredictionType::Epsilon, dtype).expect("unet");
                std::hint::black_box(&m);
            } else if name == "sd35m" {
                let m = Sd3::load(&dir, dtype, &dev).expect("sd3");
                std::hint::black_box(&m);
            } else {
                let m = Flux::load(&dir, dtype, &dev).expect("flux");
                std::hint::black_box(&m);
            }
            let (peak, size) = (peak_gib(), file_gib(&dir));
            println!(
                "LatentFlow {name} ({label}): file {size:.2} GiB, peak RSS {peak:.2} GiB ({:.2}× the file; {before:.2} GiB before loading), loaded in {:.1} s",
                peak / size,
                t0.elapsed().as_secs_f64()
            );
        }
        "step" => {
            let m =
                unet_folder(&root.join("sdxl-unet"), PredictionType::Epsilon, dtype).expect("unet");
            let r = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &dev).expect("randn");
            let (x, text, pooled) = (r(&[2, 4, 64, 64]), r(&[2, 77, 2048]), r(&[2, 1280]));
            let ids = Tensor::new(&[[512f32, 512., 0., 0., 512., 512.]; 2], &dev).expect("ids");
            let added = Tensor::cat(&[&pooled, &ids], 1).expect("added");
            let extras = Extras {
                added: Some(&added),
                ..Default::default()
            };
            let step = || m.unet.forward(&x, 500.0, &text, &extras).expect("forward");
            let _ = step();
            let mut runs = Vec::new();
            for _ in 0..2 {
                let t0 = Instant::now();
                let _ = step();
                runs.push(t0.elapsed().as_secs_f64());
            }
            println!(
                "LatentFlow sdxl-unet {label:8} step {:8.3} s (mean of {runs:.3?}), peak RSS {:.2} GiB",
                runs.iter().sum::<f64>() / 2.0,
                peak_gib()
            );
        }
        other => {
            eprintln!("unknown LATENTFLOW_BIG_RUN `{other}`: load:sdxl-unet, load:sd35m, step")
        }
    }
}
