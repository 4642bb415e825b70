//! Prompt encoding (weighting, long prompts, clip skip) and tiled VAE decoding on the tiny
//! pipeline.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use latentflow_models::sd::encode_prompt;
use latentflow_models::sd::loader::{self as models, Source};
use latentflow_testutil::max_abs;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd")
}

#[test]
fn weighting_scales_the_token_and_restores_the_mean() {
    let text = models::text_encoder(&Source::detect(&tiny(), None).unwrap()).unwrap();
    let (plain, _) = encode_prompt(&text, "a photo of a cat", 0, true).unwrap();
    let (weighted, _) = encode_prompt(&text, "a photo of a (cat:1.5)", 0, true).unwrap();
    let (literal, _) = encode_prompt(&text, "a photo of a (cat:1.5)", 0, false).unwrap();
    assert_eq!(plain.dims(), &[1, 77, 32]);
    let mean = |t: &Tensor| t.mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(
        (mean(&plain) - mean(&weighted)).abs() < 1e-6,
        "the mean is restored"
    );
    // Token 5 is `cat` (BOS a photo of a cat): scaled 1.5× relative to the others.
    let k = (weighted.i((0, 1)).unwrap() / plain.i((0, 1)).unwrap()).unwrap();
    let k = k.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let expect = (plain.i((0, 5)).unwrap() * (1.5 * k as f64)).unwrap();
    let diff = max_abs(&(weighted.i((0, 5)).unwrap() - &expect).unwrap());
    assert!(diff < 1e-5, "cat scaled by 1.5: {diff}");
    assert!(
        max_abs(&(literal - &weighted).unwrap()) > 1e-3,
        "weighting off tokenizes the brackets"
    );
}

#[test]
fn long_prompts_become_concatenated_windows() {
    let text = models::text_encoder(&Source::detect(&tiny(), None).unwrap()).unwrap();
    let prompt = format!(
        "a very long prompt {}",
        (0..40)
            .map(|i| format!("detail number {i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let tokens = text.tokenizer.encode(&prompt).unwrap().len();
    let (cond, pooled) = encode_prompt(&text, &prompt, 0, true).unwrap();
    let windows = tokens.div_ceil(75);
    assert!(windows >= 2);
    assert_eq!(cond.dims(), &[1, 77 * windows, 32]);
    assert_eq!(pooled.dims(), &[1, 32]);
}

#[test]
fn clip_skip_takes_the_final_norm_of_an_earlier_layer() {
    let text = models::text_encoder(&Source::detect(&tiny(), None).unwrap()).unwrap();
    let (skipped, _) = encode_prompt(&text, "a cat", 1, true).unwrap();
    let mut ids = vec![text.tokenizer.bos];
    ids.extend(text.tokenizer.encode("a cat").unwrap());
    ids.push(text.tokenizer.eos);
    ids.resize(77, text.tokenizer.pad);
    let ids = Tensor::from_vec(ids, (1, 77), &Device::Cpu).unwrap();
    let out = text.model.forward(&ids, None).unwrap();
    let n = out.hidden.len();
    let want = text.model.final_norm(&out.hidden[n - 2]).unwrap();
    assert!(max_abs(&(skipped - &want).unwrap()) < 1e-6);
    assert!(
        encode_prompt(&text, "a cat", 5, true).is_err(),
        "skipping every layer is refused"
    );
}

#[test]
fn tiled_decode_places_tiles_and_covers_the_image() {
    let vae = models::vae(&Source::detect(&tiny(), None).unwrap()).unwrap();
    let z = Tensor::randn(0f32, 1.0, (1, 4, 12, 16), &Device::Cpu).unwrap();
    let whole = vae.decode_raw(&z).unwrap();
    let same = vae.decode_tiled(&z, 64).unwrap();
    assert_eq!(
        max_abs(&(&whole - &same).unwrap()),
        0.0,
        "one tile = whole decode"
    );
    let tiled = vae.decode_tiled(&z, 8).unwrap();
    assert_eq!(tiled.dims(), whole.dims());
    // Tiles start at latent rows 0, 4 and columns 0, 6, 8: pixels 0..8 × 0..12 come from the
    // first tile alone, unblended.
    let first = vae
        .decode_raw(
            &z.narrow(2, 0, 8)
                .unwrap()
                .narrow(3, 0, 8)
                .unwrap()
                .contiguous()
                .unwrap(),
        )
        .unwrap();
    let corner = |t: &Tensor| t.narrow(2, 0, 8).unwrap().narrow(3, 0, 12).unwrap();
    assert_eq!(
        max_abs(&(corner(&tiled) - corner(&first)).unwrap()),
        0.0,
        "tile placement"
    );
    assert!(tiled
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
}
