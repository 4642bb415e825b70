//! DiT against diffusers (tools/reference/make_dit_fixtures.py): the tiny learned-sigma
//! `DiTTransformer2DModel` on a batch with a class and the "no class" label, square and
//! non-square (positions recomputed for the grid, unpatchified to it); and the checks a user
//! meets first.

use candle_core::{DType, Device, Tensor};
use latentflow_models::dit::DiT;
use latentflow_testutil::{fixtures, load, rel_err};

fn model() -> DiT {
    DiT::load(
        &fixtures().join("tiny-dit"),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn dit_matches_diffusers_square_and_not() {
    let r = load("dit-ref/forward.safetensors");
    let m = model();
    assert!(m.config.learns_sigma());
    for (x, want) in [("x", "out"), ("x_wide", "out_wide")] {
        let got = m.forward(&r[x], 421.0, &[3, 1000]).unwrap();
        assert_eq!(got.dims(), r[want].dims());
        let e = rel_err(&got, &r[want]);
        eprintln!("DiT {want}: relative error {e:e}");
        assert!(e <= 1e-5, "DiT {want}: error {e:e}");
    }
}

#[test]
fn bad_latents_and_labels_are_refused() {
    let m = model();
    let zeros = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    let e = m
        .forward(&zeros(&[1, 4, 10, 8]), 1.0, &[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiples of 4"), "{e}");
    let e = m
        .forward(&zeros(&[1, 3, 8, 8]), 1.0, &[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("B×4×H×W"), "{e}");
    let e = m
        .forward(&zeros(&[1, 4, 8, 8]), 1.0, &[1001])
        .unwrap_err()
        .to_string();
    assert!(e.contains("1001") && e.contains("0..999"), "{e}");
    let e = m
        .forward(&zeros(&[2, 4, 8, 8]), 1.0, &[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 class labels for a batch of 2"), "{e}");
}

#[test]
fn other_transformer_configs_are_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(fixtures().join("tiny-dit/transformer/config.json")).unwrap();
    let pixart = src.replace("\"ada_norm_zero\"", "\"ada_norm_single\"");
    std::fs::write(dir.path().join("config.json"), pixart).unwrap();
    let e = DiT::load(dir.path(), candle_core::DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("norm_type") && e.contains("PixArt"), "{e}");
    let e = DiT::load(
        &fixtures().join("tiny-sd"),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not a DiT folder"), "{e}");
}
