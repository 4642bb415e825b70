//! SD 1.5-sized forward passes on the CPU: text encode, one UNet step (batch 2, as with CFG) at
//! 32×32 and 64×64 latents, one VAE decode of a 64×64 latent. Reports the median wall time.
//!
//! Needs a diffusers folder of SD 1.5 size (random weights are fine):
//!   tools/reference/.venv/bin/python tools/reference/make_sd15_random.py target/sd15-random
//!   LATENTFLOW_SD15=$PWD/target/sd15-random cargo bench -p latentflow-models --bench sd15
//! `tools/bench/sd15.sh` runs this and the PyTorch reference side by side.
//!
//! It runs with the SD plugin's allocator (mimalloc): the numbers are what the plugin gets.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use latentflow_models::sd::encode_prompt;
use latentflow_models::sd::loader::{self as models, Source};
use latentflow_models::sd::unet::Extras as Hooks;
use latentflow_testutil::time_forced as time;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let Some(dir) = std::env::var_os("LATENTFLOW_SD15").map(PathBuf::from) else {
        eprintln!("set LATENTFLOW_SD15 to an SD 1.5-sized diffusers folder (see the file header)");
        return;
    };
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let src = Source::detect(&dir, None).expect("SD 1.5 folder");
    let dev = Device::Cpu;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("candle {} threads", threads);

    if want("conv") {
        use candle_core::Module;
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        for (b, c, hw) in [(2usize, 320usize, 64usize), (2, 640, 32), (1, 128, 512)] {
            let ours = latentflow_kernels::Conv::new(c, c, 3, cfg, vb.pp(format!("c{c}_{hw}")))
                .expect("conv");
            let theirs =
                candle_nn::conv2d(c, c, 3, cfg, vb.pp(format!("c{c}_{hw}"))).expect("conv");
            let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), &dev).expect("x");
            let a = time(3, || ours.forward(&x).expect("conv"));
            let t = time(3, || theirs.forward(&x).expect("conv"));
            println!("conv3x3 {b}x{c}@{hw}: im2col {a:.3} s, candle {t:.3} s");
        }
    }
    if want("text") {
        let t0 = Instant::now();
        let text = models::text_encoder(&src).expect("text encoder");
        println!(
            "load text encoder      {:8.2} s",
            t0.elapsed().as_secs_f64()
        );
        let s = time(5, || {
            encode_prompt(
                &text,
                "a photograph of an astronaut riding a horse",
                0,
                true,
            )
            .expect("encode")
            .0
        });
        println!("text encode            {:8.3} s", s);
    }
    if want("unet") {
        let t0 = Instant::now();
        let unet = models::unet(&src, candle_core::DType::F32).expect("unet");
        println!(
            "load unet              {:8.2} s",
            t0.elapsed().as_secs_f64()
        );
        let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &dev).expect("ctx");
        for (size, n) in [(32usize, 3usize), (64, 2)] {
            let x = Tensor::randn(0f32, 1.0, (2, 4, size, size), &dev).expect("x");
            let s = time(n, || {
                unet.unet
                    .forward(&x, 500.0, &ctx, &Hooks::default())
                    .expect("forward")
            });
            println!("unet step {size}x{size} b2     {:8.3} s", s);
        }
    }
    if want("bf16") {
        // The UNet held and computed in bf16 (`dtype: bf16`), inputs in bf16, result in f32.
        let unet = models::unet(&src, DType::BF16).expect("unet");
        let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &dev)
            .and_then(|t| t.to_dtype(DType::BF16))
            .expect("ctx");
        println!("bf16 kernel: {:?}", latentflow_kernels::bf16_gemm::kernel());
        let sizes: &[(usize, usize)] = if std::env::var_os("LATENTFLOW_SD15_SMALL").is_some() {
            &[(32, 3)]
        } else {
            &[(32, 3), (64, 2)]
        };
        for &(size, n) in sizes {
            let x = Tensor::randn(0f32, 1.0, (2, 4, size, size), &dev)
                .and_then(|t| t.to_dtype(DType::BF16))
                .expect("x");
            let s = time(n, || {
                unet.unet
                    .forward(&x, 500.0, &ctx, &Hooks::default())
                    .expect("forward")
            });
            println!("unet step {size}x{size} b2 bf16 {:8.3} s", s);
        }
    }
    if want("deepcache") {
        // 12 steps at 32×32, batch 2: plain, and DeepCache interval 3 (4 full + 8 shallow).
        let unet = models::unet(&src, candle_core::DType::F32).expect("unet");
        let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &dev).expect("ctx");
        let x = Tensor::randn(0f32, 1.0, (2, 4, 32, 32), &dev).expect("x");
        let t0 = Instant::now();
        for i in 0..12 {
            unet.unet
                .forward(&x, 900.0 - 75.0 * i as f64, &ctx, &Hooks::default())
                .expect("forward");
        }
        let plain = t0.elapsed().as_secs_f64();
        for branch in [0usize, 1] {
            let mut cache = None;
            let t0 = Instant::now();
            for i in 0..12 {
                latentflow_models::sd::deepcache::forward(
                    &unet.unet,
                    &x,
                    900.0 - 75.0 * i as f64,
                    &ctx,
                    &Hooks::default(),
                    branch,
                    &mut cache,
                    i % 3 == 0,
                )
                .expect("deepcache");
            }
            let cached = t0.elapsed().as_secs_f64();
            let (run, total) =
                latentflow_models::sd::deepcache::modules(&unet.unet, branch).expect("branch");
            println!(
                "deepcache N=3 b={branch}: 12 steps {cached:.2} s vs {plain:.2} s plain: {:.2}x; a shallow step runs {run} of {total} ResNet/transformer modules",
                plain / cached
            );
        }
    }
    if want("capture") {
        // Cross-attention capture: a UNet step at 32×32, batch 2, with and without the hook.
        let unet = models::unet(&src, candle_core::DType::F32).expect("unet");
        let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &dev).expect("ctx");
        let x = Tensor::randn(0f32, 1.0, (2, 4, 32, 32), &dev).expect("x");
        let off = time(3, || {
            unet.unet
                .forward(&x, 500.0, &ctx, &Hooks::default())
                .expect("forward")
        });
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let hook = |_: &str, p: &Tensor| {
            // What the capture does: copy the positive half's probabilities out.
            if let Ok(v) = p
                .get(1)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
            {
                seen.fetch_add(v.len(), std::sync::atomic::Ordering::Relaxed);
            }
        };
        let hooks = Hooks {
            attention: Some(&hook),
            ..Hooks::default()
        };
        let on = time(3, || {
            unet.unet.forward(&x, 500.0, &ctx, &hooks).expect("forward")
        });
        println!("attention capture: off {off:.3} s, on {on:.3} s per step");
    }
    if want("vae") {
        let vae = models::vae(&src).expect("vae");
        let z = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), &dev).expect("z");
        let s = time(1, || vae.decode_raw(&z).expect("decode"));
        println!("vae decode 64x64       {:8.3} s", s);
    }
}
