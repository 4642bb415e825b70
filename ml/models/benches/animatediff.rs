//! One AnimateDiff step at SD 1.5 + motion-adapter sizes on the CPU: 16 frames of a 32×32
//! latent (256×256 pixels), batch 2 (CFG: 32 frames through the UNet), random weights; the
//! mean wall time of two steps after a warm-up one and the peak memory the step adds, per frame.
//!
//! Needs an SD 1.5-sized diffusers folder and a motion adapter of the released v2 size:
//!   tools/reference/.venv/bin/python tools/reference/make_sd15_random.py target/sd15-random
//!   tools/reference/.venv/bin/python tools/reference/bench_animatediff.py target/sd15-random target/motion-random make
//!   LATENTFLOW_SD15=$PWD/target/sd15-random LATENTFLOW_MOTION=$PWD/target/motion-random \
//!       cargo bench -p latentflow-models --bench animatediff
//! `tools/bench/animatediff.sh` runs this and diffusers side by side.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use latentflow_models::animatediff::{MotionAdapter, MotionUNet};
use latentflow_models::sd::loader::{self as models, Source};
use latentflow_models::sd::unet::Extras;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resets the peak resident size (Linux: `clear_refs` 5), so the next reading is this step's.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak and the current resident size in KiB (`VmHWM`, `VmRSS`).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn main() {
    let (Some(sd), Some(motion)) = (
        std::env::var_os("LATENTFLOW_SD15").map(PathBuf::from),
        std::env::var_os("LATENTFLOW_MOTION").map(PathBuf::from),
    ) else {
        eprintln!("set LATENTFLOW_SD15 and LATENTFLOW_MOTION (see the file header)");
        return;
    };
    let dev = Device::Cpu;
    let src = Source::detect(&sd, None).expect("SD 1.5 folder");
    let t0 = Instant::now();
    let unet = models::unet(&src, candle_core::DType::F32).expect("unet");
    let adapter = MotionAdapter::load(&motion, unet.unet.config.norm_num_groups, &dev)
        .expect("motion adapter");
    println!(
        "load unet + adapter    {:8.2} s",
        t0.elapsed().as_secs_f64()
    );
    let m = MotionUNet::new(&unet.unet, &adapter).expect("pair");
    let frames = 16;
    let x = Tensor::randn(0f32, 1.0, (2, 4, frames, 32, 32), &dev).expect("x");
    let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &dev).expect("ctx");
    let step = || {
        m.forward(&x, 500.0, &ctx, &Extras::default())
            .expect("forward")
    };
    let (_, before) = rss();
    reset_peak();
    let _ = step();
    let (peak, _) = rss();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let t0 = Instant::now();
        let _ = step();
        runs.push(t0.elapsed().as_secs_f64());
    }
    println!(
        "animatediff step 16x32x32 b2 {:8.3} s (mean of {runs:.3?})",
        runs.iter().sum::<f64>() / runs.len() as f64
    );
    let added = peak.saturating_sub(before) as f64 / 1024.0;
    println!(
        "peak memory of the step  {added:8.1} MiB = {:.1} MiB per frame (of 16, CFG batch 2)",
        added / frames as f64
    );
}
