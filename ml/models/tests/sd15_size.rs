//! Checks at the real SD 1.5 sizes, run by hand (they need 2 GB of random weights that are not
//! committed):
//!   tools/reference/.venv/bin/python tools/reference/make_sd15_random.py target/sd15-random
//!   (cd tools/reference && .venv/bin/python make_single_file.py ../../target/sd15-random ../../target/sd15-random.safetensors)
//!   LATENTFLOW_SD15=$PWD/target/sd15-random LATENTFLOW_SD15_SINGLE=$PWD/target/sd15-random.safetensors \
//!     cargo test --release -p latentflow-sd --test sd15_size -- --ignored

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use latentflow_models::sd::loader::{self as models, Source};
use latentflow_models::sd::unet::Extras as Hooks;
use latentflow_testutil::rel_err;

fn env(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("set {name}")))
}

#[test]
#[ignore = "needs SD 1.5-sized weights; see the file header"]
fn sd15_single_file_with_builtin_configs_equals_the_folder() {
    let folder = Source::detect(&env("LATENTFLOW_SD15"), None).unwrap();
    let single = Source::detect(&env("LATENTFLOW_SD15_SINGLE"), None).unwrap();
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 4, 16, 24), &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 77, 768), &dev).unwrap();
    let a = models::unet(&folder, candle_core::DType::F32)
        .unwrap()
        .unet
        .forward(&x, 321.0, &ctx, &Hooks::default())
        .unwrap();
    let b = models::unet(&single, candle_core::DType::F32)
        .unwrap()
        .unet
        .forward(&x, 321.0, &ctx, &Hooks::default())
        .unwrap();
    let e = rel_err(&b, &a);
    eprintln!("UNet single-file vs folder: {e:e}");
    assert!(e < 1e-6);
    let mut ids: Vec<u32> = (0..77u32).map(|i| 300 + i * 13).collect();
    ids[0] = 49406;
    ids[40..].fill(49407);
    let ids = Tensor::from_vec(ids, (1, 77), &dev).unwrap();
    let encode = |src| {
        models::text_encoder(src)
            .unwrap()
            .model
            .forward(&ids, None)
            .unwrap()
    };
    let (ta, tb) = (encode(&folder).last, encode(&single).last);
    assert!(rel_err(&tb, &ta) < 1e-6);
    let z = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &dev).unwrap();
    let va = models::vae(&folder).unwrap().decode_raw(&z).unwrap();
    let vb = models::vae(&single).unwrap().decode_raw(&z).unwrap();
    assert!(rel_err(&vb, &va) < 1e-6);
}
