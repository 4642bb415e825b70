//! SDXL against diffusers (tools/reference/make_sdxl_fixtures.py): the tiny UNet with text_time
//! added conditioning (pooled embedding and time ids) on a non-square latent, and
//! `StableDiffusionXLPipeline.encode_prompt` (CLIP-L and bigG, the empty negative as zeros).

use candle_core::{Device, Tensor};
use latentflow_models::sd::loader::{self, Source};
use latentflow_models::sd::sdxl_text::SdxlText;
use latentflow_models::sd::unet::Extras;
use latentflow_testutil::{fixtures, load, rel_err};

#[test]
fn sdxl_unet_matches_diffusers() {
    let r = load("sdxl-ref/forward.safetensors");
    let src = Source::detect(&fixtures().join("tiny-sdxl"), None).unwrap();
    let loaded = loader::unet(&src, candle_core::DType::F32).unwrap();
    let unet = &loaded.unet;
    let added = Tensor::cat(&[&r["pooled"], &r["time_ids"]], 1).unwrap();
    let extras = Extras {
        added: Some(&added),
        ..Extras::default()
    };
    let got = unet.forward(&r["x"], 421.0, &r["text"], &extras).unwrap();
    let e = rel_err(&got, &r["out"]);
    eprintln!("SDXL UNet: relative error {e:e}");
    assert!(e <= 1e-5, "SDXL UNet: error {e:e}");
    // Without the added conditioning it says what is missing.
    let e = unet
        .forward(&r["x"], 421.0, &r["text"], &Extras::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("time ids"), "{e}");
}

#[test]
fn text_conditioning_matches_the_pipeline_encode_prompt() {
    let r = load("sdxl-ref/pipeline.safetensors");
    let text = SdxlText::load(&fixtures().join("tiny-sdxl"), &Device::Cpu).unwrap();
    let pos = text
        .encode("a small red house by the sea", true, &Device::Cpu)
        .unwrap();
    let (ec, ep) = (
        rel_err(&pos.context, &r["context"]),
        rel_err(&pos.pooled, &r["pooled"]),
    );
    eprintln!("SDXL context {ec:e}, pooled {ep:e}");
    assert!(ec <= 1e-5 && ep <= 1e-5, "context {ec:e}, pooled {ep:e}");
    let neg = text.encode("", true, &Device::Cpu).unwrap();
    assert_eq!(neg.context.dims(), r["negative_context"].dims());
    let zero = |t: &Tensor| {
        t.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(zero(&neg.context) + zero(&neg.pooled), 0.0);
    assert_eq!(
        zero(&r["negative_context"]) + zero(&r["negative_pooled"]),
        0.0
    );
}
