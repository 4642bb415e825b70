//! FreeInit's filters and frequency mix against diffusers' `FreeInitMixin`
//! (tools/reference/make_freeinit_fixtures.py), and the invariants of the mix.

use candle_core::{DType, Device, Tensor};
use latentflow_sampling::free_init::{low_pass, mix, FilterKind};
use latentflow_testutil::{load, rel_err_f64 as rel_err};

#[test]
fn filters_and_mixes_equal_diffusers() {
    let r = load("video-ref/free_init.safetensors");
    let dev = Device::Cpu;
    for (name, kind, d_s, d_t) in [
        (
            "butterworth",
            FilterKind::Butterworth { order: 4.0 },
            0.25,
            0.25,
        ),
        ("gaussian", FilterKind::Gaussian, 0.3, 0.5),
        ("ideal", FilterKind::Ideal, 0.25, 0.25),
        (
            "butterworth_order2",
            FilterKind::Butterworth { order: 2.0 },
            0.4,
            0.2,
        ),
    ] {
        let filter = low_pass(5, 6, 7, kind, d_s, d_t, &dev).unwrap();
        let want = r[&format!("{name}.filter")].get(0).unwrap().get(0).unwrap();
        // Element-wise: both compute in f64 and store f32.
        assert_eq!(rel_err(&filter, &want), 0.0, "{name} filter");
        let mixed = mix(&r["x"], &r["noise"], &filter).unwrap();
        let e = rel_err(&mixed, &r[&format!("{name}.mixed")]);
        // diffusers forms the high pass 1 − H in f32 (the filter's dtype), rounding it by up
        // to 6e-8; ours is exact in f64.
        assert!(e <= 1e-7, "{name} mix: relative error {e:e}");
    }
}

#[test]
fn the_box_filter_equals_the_freeinit_authors() {
    let r = load("video-ref/free_init.safetensors");
    for (name, d_s, d_t) in [
        ("box", 0.25, 0.25),
        ("box_wide", 0.5, 1.0),
        ("box_half", 0.25, 0.75),
    ] {
        let filter = low_pass(5, 6, 7, FilterKind::Box, d_s, d_t, &Device::Cpu).unwrap();
        let want = r[&format!("{name}.filter")].get(0).unwrap().get(0).unwrap();
        assert_eq!(rel_err(&filter, &want), 0.0, "{name}");
    }
    // Half of two frames rounds to even: no frame is kept, so the filter is zero.
    let none = low_pass(5, 6, 7, FilterKind::Box, 0.25, 0.25, &Device::Cpu).unwrap();
    assert_eq!(none.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert!(low_pass(5, 6, 7, FilterKind::Box, 1.5, 0.25, &Device::Cpu).is_err());
}

#[test]
fn an_all_pass_filter_keeps_the_latent_and_a_zero_filter_gives_the_noise() {
    let r = load("video-ref/free_init.safetensors");
    let dev = Device::Cpu;
    let ones = Tensor::ones((5, 6, 7), DType::F32, &dev).unwrap();
    assert!(rel_err(&mix(&r["x"], &r["noise"], &ones).unwrap(), &r["x"]) <= 1e-12);
    let zero = low_pass(5, 6, 7, FilterKind::Gaussian, 0.0, 0.25, &dev).unwrap();
    assert!(rel_err(&mix(&r["x"], &r["noise"], &zero).unwrap(), &r["noise"]) <= 1e-12);
}

#[test]
fn bad_filters_and_shapes_are_refused() {
    let dev = Device::Cpu;
    assert!(FilterKind::parse("boxy", 4.0).is_err());
    assert_eq!(FilterKind::parse("box", 4.0).unwrap(), FilterKind::Box);
    assert_eq!(
        FilterKind::parse("butterworth", 2.0).unwrap(),
        FilterKind::Butterworth { order: 2.0 }
    );
    assert!(low_pass(2, 2, 2, FilterKind::Ideal, -1.0, 0.2, &dev).is_err());
    assert!(low_pass(2, 2, 2, FilterKind::Ideal, f64::NAN, 0.2, &dev).is_err());
    let x = Tensor::zeros((1, 4, 3, 8, 8), DType::F32, &dev).unwrap();
    let wrong = Tensor::ones((3, 8, 9), DType::F32, &dev).unwrap();
    let e = mix(&x, &x, &wrong).unwrap_err().to_string();
    assert!(e.contains("F×H×W filter"), "{e}");
}

mod passes {
    use candle_core::{Device, Tensor};
    use latentflow_sampling::free_init::{FilterKind, FreeInit};

    fn settings(kind: FilterKind, d: f64, fast: bool) -> FreeInit {
        FreeInit {
            iterations: 3,
            kind,
            d_s: d,
            d_t: d,
            fast,
        }
    }

    #[test]
    fn coarse_to_fine_takes_diffusers_step_counts() {
        let f = settings(FilterKind::Gaussian, 0.25, true);
        let counts = |n| (0..3).map(|k| f.steps(k, n)).collect::<Vec<_>>();
        assert_eq!(counts(6), [2, 4, 6]);
        assert_eq!(counts(5), [1, 3, 5]);
        assert_eq!(counts(1), [1, 1, 1], "at least one step a pass");
        let slow = settings(FilterKind::Gaussian, 0.25, false);
        assert_eq!(slow.steps(0, 7), 7);
    }

    #[test]
    fn an_all_pass_filter_keeps_the_renoised_latent_and_a_none_pass_the_fresh_noise() {
        let dev = Device::Cpu;
        let shape = (1, 2, 4, 6, 5);
        let z0 = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let initial = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let fresh = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let ab = 0.0047f64;
        let zt = ((&z0 * (ab as f32).sqrt() as f64).unwrap()
            + (&initial * (1.0f32 - ab as f32).sqrt() as f64).unwrap())
        .unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        // The box filter with both stop frequencies at 1 passes every frequency.
        let all = settings(FilterKind::Box, 1.0, false)
            .reinit(&z0, &initial, &fresh, ab)
            .unwrap();
        assert!(diff(&all, &zt) < 1e-5, "{}", diff(&all, &zt));
        // A stop frequency of 0 passes none: the fresh noise.
        let none = settings(FilterKind::Butterworth { order: 4.0 }, 0.0, false)
            .reinit(&z0, &initial, &fresh, ab)
            .unwrap();
        assert!(diff(&none, &fresh) < 1e-5);
        // Image latents are refused.
        let img = Tensor::zeros((1, 2, 6, 5), candle_core::DType::F32, &dev).unwrap();
        assert!(settings(FilterKind::Gaussian, 0.25, false)
            .reinit(&img, &img, &img, ab)
            .is_err());
    }
}
