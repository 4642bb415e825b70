//! One step of each diffusion transformer on the CPU, at published widths with random weights:
//! DiT-XL/2-256 (all 28 blocks, CFG batch 2 of a 32×32 latent), PixArt-α-XL-2-512 (all 28
//! blocks, batch 2 of 64×64 with 120 T5 tokens), SD3.5 medium's width with 4 of its 24 blocks
//! (batch 2 of 16×64×64 with 333 text tokens), FLUX.1-dev's width with 1 double- and 2
//! single-stream blocks (batch 1 of 16×64×64 with 512 T5 tokens). The mean wall time of two
//! steps after a warm-up one.
//!
//!   tools/reference/.venv/bin/python tools/reference/bench_transformers.py target/transformers-random make
//!   LATENTFLOW_TRANSFORMERS=$PWD/target/transformers-random cargo bench -p latentflow-models --bench transformers
//! `tools/bench/transformers.sh` runs this and diffusers side by side.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use latentflow_models::dit::DiT;
use latentflow_models::flux::Flux;
use latentflow_models::pixart::PixArt;
use latentflow_models::sd3::Sd3;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn time(name: &str, step: impl Fn() -> Tensor) {
    let _ = step();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let t0 = Instant::now();
        let _ = step();
        runs.push(t0.elapsed().as_secs_f64());
    }
    println!(
        "{name:8} step {:8.3} s (mean of {runs:.3?})",
        runs.iter().sum::<f64>() / runs.len() as f64
    );
}

fn main() {
    let Some(root) = std::env::var_os("LATENTFLOW_TRANSFORMERS").map(PathBuf::from) else {
        eprintln!("set LATENTFLOW_TRANSFORMERS (see the file header)");
        return;
    };
    let dev = Device::Cpu;
    let r = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &dev).expect("randn");
    {
        let m = DiT::load(&root.join("dit"), candle_core::DType::F32, &dev).expect("dit");
        let x = r(&[2, 4, 32, 32]);
        time("dit", || {
            m.forward(&x, 500.0, &[207, 1000]).expect("dit forward")
        });
    }
    {
        let m = PixArt::load(&root.join("pixart"), candle_core::DType::F32, &dev).expect("pixart");
        let (x, text) = (r(&[2, 4, 64, 64]), r(&[2, 120, 4096]));
        let mask = Tensor::ones((2, 120), candle_core::DType::F32, &dev).expect("mask");
        time("pixart", || {
            m.forward(&x, 500.0, &text, Some(&mask), None)
                .expect("pixart forward")
        });
    }
    {
        let m = Sd3::load(&root.join("sd3"), DType::F32, &dev).expect("sd3");
        let (x, text, pooled) = (r(&[2, 16, 64, 64]), r(&[2, 333, 4096]), r(&[2, 2048]));
        time("sd3", || {
            m.forward(&x, 500.0, &text, &pooled).expect("sd3 forward")
        });
    }
    {
        let m = Flux::load(&root.join("flux"), DType::F32, &dev).expect("flux");
        let (x, text, pooled) = (r(&[1, 16, 64, 64]), r(&[1, 512, 4096]), r(&[1, 768]));
        time("flux", || {
            m.forward(&x, 500.0, &text, &pooled, Some(3.5))
                .expect("flux forward")
        });
    }
}
