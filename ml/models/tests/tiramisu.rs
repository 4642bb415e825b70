//! One Tiramisu steering step on the tiny VQ model and a random circuit over its patches.

use candle_core::{DType, Device, Tensor};
use latentflow_models::tiramisu::{steer, Direct, SteerConfig};
use latentflow_models::vq::VqModel;
use latentflow_pc::structure::mixture;
use latentflow_testutil::{fixtures, load};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn run(cfg: &SteerConfig, seed: u64) -> (Vec<f32>, Vec<f32>, f64) {
    let r = load("tpm-ref/vq.safetensors");
    let vq = VqModel::load(&fixtures().join("tiny-vq")).unwrap();
    let pc = mixture(&[32; 12 * 16], 3, 5).unwrap();
    let x0 = &r["image"];
    let var = 0.01;
    let variance = (x0.ones_like().unwrap() * var).unwrap();
    let mut m = vec![0f32; 24 * 32];
    for y in 0..24 {
        for x in 0..16 {
            m[y * 32 + x] = 1.0;
        }
    }
    let mask = Tensor::from_vec(m, (1, 1, 24, 32), &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let out = steer(
        x0,
        &variance,
        &mask,
        240.0,
        250.0,
        &Direct { vq: &vq, pc: &pc },
        cfg,
        &mut rng,
    )
    .unwrap();
    assert_eq!(out.dims(), x0.dims());
    let flat = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    (flat(&out), flat(x0), var)
}

#[test]
fn steered_values_lie_on_the_bins_and_the_draw_is_seeded() {
    let cfg = SteerConfig::default();
    let (a, _, _) = run(&cfg, 1);
    let (b, _, _) = run(&cfg, 1);
    let (c, _, _) = run(&cfg, 2);
    assert_eq!(a, b, "same seed, same draw");
    assert_ne!(a, c);
    for v in &a {
        let i = ((v + 1.0) * 127.5).round();
        assert!(
            (v - (i / 127.5 - 1.0)).abs() < 1e-6 && (0.0..=255.0).contains(&i),
            "{v} is not a bin"
        );
    }
}

#[test]
fn with_alpha_one_every_pixel_stays_in_the_denoisers_window() {
    let cfg = SteerConfig {
        alpha_start: 1.0,
        alpha_end: 1.0,
        ..Default::default()
    };
    let (out, mean, var) = run(&cfg, 3);
    let window = 2.0 * var.sqrt() + 1.0 / 255.0;
    for (o, m) in out.iter().zip(&mean) {
        assert!(
            ((o - m).abs() as f64) <= window,
            "{o} outside {m} ± {window}"
        );
    }
}
