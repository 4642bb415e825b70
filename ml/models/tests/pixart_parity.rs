//! PixArt against diffusers (tools/reference/make_pixart_fixtures.py): the tiny learned-sigma
//! `PixArtTransformer2DModel` on a batch whose text features are padded differently per sample,
//! square and non-square, and with PixArt-α 1024's resolution and aspect-ratio conditions.

use candle_core::Device;
use latentflow_models::pixart::{PixArt, SizeCondition};
use latentflow_testutil::{fixtures, load, rel_err};

#[test]
fn pixart_matches_diffusers() {
    let r = load("pixart-ref/forward.safetensors");
    let m = PixArt::load(
        &fixtures().join("tiny-pixart"),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(m.config.learns_sigma() && !m.config.additional_conditions());
    for (x, want) in [("x", "out"), ("x_wide", "out_wide")] {
        let got = m
            .forward(&r[x], 421.0, &r["text"], Some(&r["mask"]), None)
            .unwrap();
        let e = rel_err(&got, &r[want]);
        eprintln!("PixArt {want}: relative error {e:e}");
        assert!(e <= 1e-5, "PixArt {want}: error {e:e}");
    }
    let s = PixArt::load(
        &fixtures().join("tiny-pixart-sizes"),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(s.config.additional_conditions());
    let size = SizeCondition {
        height: 64.0,
        width: 32.0,
        aspect_ratio: 2.0,
    };
    let got = s
        .forward(
            &r["x_wide"],
            421.0,
            &r["text"],
            Some(&r["mask"]),
            Some(size),
        )
        .unwrap();
    let e = rel_err(&got, &r["out_sizes"]);
    eprintln!("PixArt with size conditions: relative error {e:e}");
    assert!(e <= 1e-5, "PixArt with size conditions: error {e:e}");
    // The padding matters (the mask is used), and a model with size conditions needs them.
    let open = m.forward(&r["x"], 421.0, &r["text"], None, None).unwrap();
    assert!(rel_err(&open, &r["out"]) > 1e-3);
    let e = s
        .forward(&r["x_wide"], 421.0, &r["text"], Some(&r["mask"]), None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("resolution and aspect ratio"), "{e}");
}

#[test]
fn bad_text_is_refused() {
    let r = load("pixart-ref/forward.safetensors");
    let m = PixArt::load(
        &fixtures().join("tiny-pixart"),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let narrow = r["text"].narrow(2, 0, 16).unwrap();
    let e = m
        .forward(&r["x"], 1.0, &narrow, None, None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("T5 features") && e.contains("32"), "{e}");
    let mask = r["mask"].narrow(1, 0, 5).unwrap();
    let e = m
        .forward(&r["x"], 1.0, &r["text"], Some(&mask), None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("text mask"), "{e}");
}
