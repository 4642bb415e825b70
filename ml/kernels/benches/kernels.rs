//! Kernel timings on the shapes of SD 1.5's UNet at a 64×64 latent, batch 2: the bf16 matrix
//! product against candle's f32 one (gemm's AVX-512 kernels) on the same sizes.
//!
//! `cargo bench -p latentflow-kernels --bench kernels`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use latentflow_kernels::bf16_gemm::{self, PackedB, Rows};

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "bf16 kernels on this CPU: {:?}; chosen: {:?}",
        bf16_gemm::Kernel::available(),
        bf16_gemm::kernel()
    );
    println!("| m×k×n | f32 (candle/gemm) | bf16 kernel | bf16 | GFLOP/s f32 | GFLOP/s bf16 | f32 / bf16 time |");
    println!("|---|---|---|---|---|---|---|");
    // Linear layers (tokens × in × out) and 3×3 convolutions as O × 9C × pixels.
    for (m, k, n) in [
        (8192, 320, 320),
        (8192, 320, 2560),
        (8192, 1280, 320),
        (320, 2880, 8192),
        (1280, 11520, 128),
        (2048, 640, 640),
    ] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), &dev)?;
        let f32_s = time(3, || {
            a.matmul(&b).unwrap();
        });
        let a16 = a
            .to_dtype(DType::BF16)?
            .flatten_all()?
            .to_vec1::<half::bf16>()?;
        let b16 = b
            .to_dtype(DType::BF16)?
            .flatten_all()?
            .to_vec1::<half::bf16>()?;
        let pack_s = time(3, || {
            PackedB::from_rows(&b16, k, n, n).unwrap();
        });
        println!(
            "| {m}×{k}×{n} | packing B | | {:.1} ms | | | |",
            pack_s * 1e3
        );
        for kernel in bf16_gemm::Kernel::available() {
            // Packing B is part of every call (the layers pack their weights per call).
            let bf16_s = time(3, || {
                let rows = Rows::new(&a16, m, k, k).unwrap();
                let packed = PackedB::from_rows(&b16, k, n, n).unwrap();
                bf16_gemm::matmul_on(rows, &packed, None, kernel).unwrap();
            });
            let flop = 2.0 * (m * k * n) as f64 / 1e9;
            println!(
                "| {m}×{k}×{n} | {:.1} ms | {kernel:?} | {:.1} ms | {:.0} | {:.0} | {:.2}× |",
                f32_s * 1e3,
                bf16_s * 1e3,
                flop / f32_s,
                flop / bf16_s,
                f32_s / bf16_s
            );
        }
    }
    // A linear layer's weight (out×in) packed per call: what the bf16 Linear adds to its product.
    for (out, inp) in [(2560usize, 320usize), (320, 1280), (5120, 1280)] {
        let w = vec![half::bf16::from_f32(0.5); out * inp];
        let s = time(5, || {
            PackedB::from_columns(&w, inp, out, inp).unwrap();
        });
        println!(
            "packing a {out}×{inp} weight: {:.2} ms ({:.2} ns per value)",
            s * 1e3,
            s * 1e9 / (out * inp) as f64
        );
    }
    // Self-attention of SD 1.5 at a 64×64 latent (4096 tokens, d = 40) and at 32×32 (1024
    // tokens, d = 80), batch 2 × 8 heads: fused against softmax(q·kᵀ)·v in candle ops.
    println!("| attention (b·h × L × d) | fused | matmul-softmax-matmul | speed-up |");
    println!("|---|---|---|---|");
    for (l, d) in [(4096usize, 40usize), (1024, 80)] {
        let q = Tensor::randn(0f32, 0.3, (2, 8, l, d), &dev)?;
        let k = Tensor::randn(0f32, 0.3, (2, 8, l, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (2, 8, l, d), &dev)?;
        let fused = time(3, || {
            latentflow_kernels::attention(&q, &k, &v, Default::default()).unwrap();
        });
        let plain = time(3, || {
            // In query blocks of 256, as the unfused path ran.
            for s in (0..l).step_by(256) {
                let qs = q.narrow(2, s, 256.min(l - s)).unwrap();
                let p =
                    candle_nn::ops::softmax_last_dim(&qs.matmul(&k.t().unwrap()).unwrap()).unwrap();
                p.matmul(&v).unwrap();
            }
        });
        println!(
            "| 16 × {l} × {d} | {:.1} ms | {:.1} ms | {:.2}× |",
            fused * 1e3,
            plain * 1e3,
            plain / fused
        );
    }
    // One work item's worth on one thread: the kernels' own rate, the data in cache.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(candle_core::Error::wrap)?;
    let (m, k, n) = (96, 384, 1024);
    let a16 = vec![half::bf16::from_f32(0.5); m * k];
    let b16 = vec![half::bf16::from_f32(0.25); k * n];
    let packed = PackedB::from_rows(&b16, k, n, n).map_err(candle_core::Error::wrap)?;
    let rows = Rows::new(&a16, m, k, k).map_err(candle_core::Error::wrap)?;
    for kernel in bf16_gemm::Kernel::available() {
        let s = one.install(|| {
            time(20, || {
                bf16_gemm::matmul_on(rows, &packed, None, kernel).unwrap();
            })
        });
        println!(
            "one thread, {m}×{k}×{n} in cache, {kernel:?}: {:.0} GFLOP/s",
            2.0 * (m * k * n) as f64 / s / 1e9
        );
    }
    Ok(())
}
