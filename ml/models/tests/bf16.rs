//! bf16 compute against the f32 diffusers references: the weights are rounded to bf16 when
//! loaded (a bf16 file would be held as it is), activations run in bf16, attention, norms and
//! RoPE in f32. One forward of each family, non-square, within a stated bound (the printed
//! errors are what BENCHMARKS.md records); the f32 path keeps its own bounds in the parity tests.

use candle_core::{DType, Device, Tensor};
use latentflow_models::flux::Flux;
use latentflow_models::sd::loader::{self, Source};
use latentflow_models::sd::unet::Extras;
use latentflow_models::sd3::Sd3;
use latentflow_testutil::{fixtures, load, rel_err};

/// What bf16 compute may differ from the f32 reference by in one forward.
const BOUND: f32 = 2e-2;

fn check(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dtype(), DType::F32, "{what}: results come back in f32");
    let e = rel_err(got, want);
    eprintln!("{what} in bf16: relative error {e:e}");
    assert!(e <= BOUND, "{what} in bf16: error {e:e}");
    // Not the f32 numbers: the model did compute in bf16.
    assert!(e > 1e-5, "{what}: bf16 gave f32's numbers ({e:e})");
}

#[test]
fn sd_unet_in_bf16() {
    let r = load("sd-ref/unet.safetensors");
    let src = Source::detect(&fixtures().join("tiny-sd"), None).unwrap();
    let loaded = loader::unet(&src, DType::BF16).unwrap();
    assert_eq!(loaded.store.dtype(), DType::BF16);
    assert_eq!(loaded.unet.dtype(), DType::BF16);
    let out = loaded
        .unet
        .forward(&r["x"], 421.0, &r["context"], &Extras::default())
        .unwrap();
    check("SD UNet", &out, &r["out"]);
    // The f32 model is another one, not the bf16 one from the cache.
    let f32 = loader::unet(&src, DType::F32).unwrap();
    assert_eq!(f32.unet.dtype(), DType::F32);
}

#[test]
fn sdxl_unet_in_bf16() {
    let r = load("sdxl-ref/forward.safetensors");
    let src = Source::detect(&fixtures().join("tiny-sdxl"), None).unwrap();
    let loaded = loader::unet(&src, DType::BF16).unwrap();
    let added = Tensor::cat(&[&r["pooled"], &r["time_ids"]], 1).unwrap();
    let extras = Extras {
        added: Some(&added),
        ..Extras::default()
    };
    let out = loaded
        .unet
        .forward(&r["x"], 421.0, &r["text"], &extras)
        .unwrap();
    check("SDXL UNet", &out, &r["out"]);
}

#[test]
fn sd3_and_sd35_in_bf16() {
    let r = load("sd3-ref/forward.safetensors");
    for (dir, tag) in [("tiny-sd3", "out_wide"), ("tiny-sd35", "out35_wide")] {
        let m = Sd3::load(&fixtures().join(dir), DType::BF16, &Device::Cpu).unwrap();
        assert_eq!(m.dtype(), DType::BF16);
        let got = m
            .forward(&r["x_wide"], 421.5, &r["text"], &r["pooled"])
            .unwrap();
        check(dir, &got, &r[tag]);
    }
}

#[test]
fn flux_in_bf16() {
    let r = load("flux-ref/forward.safetensors");
    let m = Flux::load(&fixtures().join("tiny-flux"), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(m.dtype(), DType::BF16);
    let got = m
        .forward(&r["x_wide"], 421.5, &r["text"], &r["pooled"], Some(3.5))
        .unwrap();
    check("Flux", &got, &r["out_wide"]);
}

#[test]
fn t5_in_bf16_for_sd3_and_flux_text() {
    use latentflow_models::flux::text::FluxText;
    use latentflow_models::sd3::text::Sd3Text;
    let prompt = "a small red house by the sea";
    let r = load("flux-ref/pipeline.safetensors");
    let flux = FluxText::load(&fixtures().join("tiny-flux"), DType::BF16, &Device::Cpu).unwrap();
    let got = flux.encode(&[prompt], 512, &Device::Cpu).unwrap();
    check("Flux's T5 tokens", &got.context, &r["context"]);
    // CLIP stays f32: the pooled embedding is the reference's.
    assert!(rel_err(&got.pooled, &r["pooled"]) <= 1e-5);
    let r = load("sd3-ref/pipeline.safetensors");
    let dir = fixtures().join("tiny-sd3");
    let sd3 = Sd3Text::load(&dir, 64, Some(DType::BF16), &Device::Cpu).unwrap();
    let got = sd3.encode(&[prompt], 256, &Device::Cpu).unwrap();
    check("SD3's joint tokens (T5 part)", &got.context, &r["context"]);
    // Without T5 nothing of it is loaded.
    let none = Sd3Text::load(&dir, 64, None, &Device::Cpu).unwrap();
    assert!(none.t5.is_none());
}

#[test]
fn dit_and_pixart_in_bf16() {
    use latentflow_models::dit::DiT;
    use latentflow_models::pixart::{PixArt, SizeCondition};
    let r = load("dit-ref/forward.safetensors");
    let m = DiT::load(&fixtures().join("tiny-dit"), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(m.dtype(), DType::BF16);
    let got = m.forward(&r["x_wide"], 421.0, &[3, 1000]).unwrap();
    check("DiT", &got, &r["out_wide"]);
    let r = load("pixart-ref/forward.safetensors");
    let m = PixArt::load(&fixtures().join("tiny-pixart"), DType::BF16, &Device::Cpu).unwrap();
    let got = m
        .forward(&r["x_wide"], 421.0, &r["text"], Some(&r["mask"]), None)
        .unwrap();
    check("PixArt", &got, &r["out_wide"]);
    // With the resolution and aspect-ratio conditions.
    let m = PixArt::load(
        &fixtures().join("tiny-pixart-sizes"),
        DType::BF16,
        &Device::Cpu,
    )
    .unwrap();
    let size = SizeCondition {
        height: 64.0,
        width: 32.0,
        aspect_ratio: 2.0,
    };
    let got = m
        .forward(
            &r["x_wide"],
            421.0,
            &r["text"],
            Some(&r["mask"]),
            Some(size),
        )
        .unwrap();
    check("PixArt with size conditions", &got, &r["out_sizes"]);
}
