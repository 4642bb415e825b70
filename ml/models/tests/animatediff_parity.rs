//! AnimateDiff against diffusers (tools/reference/make_animatediff_fixtures.py): the tiny SD
//! UNet with a diffusers-format motion adapter (a mid-block module, 4 heads, the UNet's norm
//! groups rather than the adapter's) and with an original-layout one, on a non-square batch of
//! two videos with their own contexts; and the checks a user meets first.

use candle_core::{DType, Device, Tensor};
use latentflow_models::animatediff::{ContextWindows, MotionAdapter, MotionUNet, Weighting};
use latentflow_models::sd::unet::{Extras, UNet};
use latentflow_testutil::{fixtures, load, rel_err};

fn unet() -> UNet {
    UNet::load(&fixtures().join("tiny-sd/unet"), &Device::Cpu).unwrap()
}

fn adapter(name: &str, unet: &UNet) -> MotionAdapter {
    MotionAdapter::load(
        &fixtures().join(name),
        unet.config.norm_num_groups,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn motion_unets_match_diffusers_in_both_layouts() {
    let r = load("animatediff-ref/forward.safetensors");
    let unet = unet();
    for (file, want) in [
        ("tiny-motion", "out"),
        ("tiny-motion-original.safetensors", "out_original"),
    ] {
        let a = adapter(file, &unet);
        let m = MotionUNet::new(&unet, &a).unwrap();
        let got = m
            .forward(&r["x"], 421.0, &r["context"], &Extras::default())
            .unwrap();
        assert_eq!(got.dims(), r[want].dims());
        let e = rel_err(&got, &r[want]);
        eprintln!("{file}: relative error {e:e}");
        assert!(e <= 1e-5, "{file}: error {e:e}");
    }
}

#[test]
fn the_original_layout_is_read_off_its_names() {
    let unet = unet();
    let a = adapter("tiny-motion-original.safetensors", &unet);
    assert_eq!(a.plan.max_seq_length, 24);
    assert!(a.mid.is_empty(), "a v1 adapter has no mid-block module");
    assert_eq!(a.up.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3]);
    let d = adapter("tiny-motion", &unet);
    assert_eq!((d.plan.max_seq_length, d.mid.len()), (8, 1));
}

#[test]
fn more_frames_than_the_position_table_are_refused() {
    let unet = unet();
    let a = adapter("tiny-motion", &unet);
    let m = MotionUNet::new(&unet, &a).unwrap();
    let x = Tensor::zeros((1, 4, 9, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let ctx = Tensor::zeros((1, 7, 32), DType::F32, &Device::Cpu).unwrap();
    let e = m
        .forward(&x, 10.0, &ctx, &Extras::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("9 frames") && e.contains("1 to 8") && e.contains("context_length"),
        "{e}"
    );
    // An image latent is refused too, naming the expected layout.
    let img = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let e = m
        .forward(&img, 10.0, &ctx, &Extras::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("B×4×F×H×W"), "{e}");
}

#[test]
fn frames_interact_only_through_the_motion_modules() {
    // Without temporal attention every frame would be denoised alone: changing the last frame
    // would leave the first unchanged. With it, the first frame moves.
    let unet = unet();
    let a = adapter("tiny-motion", &unet);
    let m = MotionUNet::new(&unet, &a).unwrap();
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 4, 4, 8, 6), &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 7, 32), &dev).unwrap();
    let bumped = x
        .narrow(2, 0, 3)
        .and_then(|head| Tensor::cat(&[head, (x.narrow(2, 3, 1).unwrap() + 1.0).unwrap()], 2))
        .unwrap();
    let first = |x: &Tensor| {
        m.forward(x, 500.0, &ctx, &Extras::default())
            .unwrap()
            .narrow(2, 0, 1)
            .unwrap()
    };
    let moved = (first(&x) - first(&bumped))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        moved > 1e-4,
        "the first frame did not see the last: {moved}"
    );
}

#[test]
fn free_noise_windows_match_diffusers() {
    // diffusers' FreeNoiseTransformerBlock (tools/reference/make_freenoise_attention_fixtures.py)
    // on videos longer than the adapter's 8 positions: overlapping windows ending on the last
    // frame (pyramid, even and odd windows; the sawtooth), and a closing window moved back.
    let r = load("animatediff-ref/freenoise_forward.safetensors");
    let unet = unet();
    let a = adapter("tiny-motion", &unet);
    for (name, frames, length, stride, weighting) in [
        ("pyramid", 14, 6, 4, Weighting::Pyramid),
        ("pyramid_odd", 14, 5, 3, Weighting::Pyramid),
        ("sawtooth", 14, 6, 4, Weighting::DelayedReverseSawtooth),
        ("flat_tail", 13, 6, 4, Weighting::Flat),
    ] {
        let w = ContextWindows::new(length, stride, weighting).unwrap();
        let m = MotionUNet::new(&unet, &a)
            .unwrap()
            .with_windows(Some(w))
            .unwrap();
        let x = &r[&format!("x_{frames}")];
        let got = m
            .forward(x, 421.0, &r["context"], &Extras::default())
            .unwrap();
        let want = &r[&format!("out_{name}")];
        assert_eq!(got.dims(), want.dims());
        let e = rel_err(&got, want);
        eprintln!("FreeNoise {name}: relative error {e:e}");
        assert!(e <= 1e-5, "FreeNoise {name}: error {e:e}");
    }
}

#[test]
fn windows_as_long_as_the_video_change_nothing_and_bad_windows_are_refused() {
    let r = load("animatediff-ref/forward.safetensors");
    let unet = unet();
    let a = adapter("tiny-motion", &unet);
    let plain = MotionUNet::new(&unet, &a).unwrap();
    let want = plain
        .forward(&r["x"], 421.0, &r["context"], &Extras::default())
        .unwrap();
    // Five frames, windows of 8 (or of exactly 5): one window, the plain pass.
    for length in [8, 5] {
        let w = ContextWindows::new(length, 4, Weighting::Pyramid).unwrap();
        let m = MotionUNet::new(&unet, &a)
            .unwrap()
            .with_windows(Some(w))
            .unwrap();
        let got = m
            .forward(&r["x"], 421.0, &r["context"], &Extras::default())
            .unwrap();
        assert_eq!(rel_err(&got, &want), 0.0, "windows of {length}");
    }
    let long = ContextWindows::new(9, 4, Weighting::Flat).unwrap();
    let e = MotionUNet::new(&unet, &a)
        .unwrap()
        .with_windows(Some(long))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("windows of 9 frames") && e.contains("at most 8"),
        "{e}"
    );
    let e = ContextWindows::new(4, 5, Weighting::Flat).unwrap_err();
    assert!(e.contains("skips frames"), "{e}");
    assert!(ContextWindows::new(0, 1, Weighting::Flat).is_err());
}
