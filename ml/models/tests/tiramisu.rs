//! One Tiramisu steering step on the tiny VQ model and a random circuit over its patches.

use candle_core::{DType, Device, Tensor};
use latentflow_models::tiramisu::{steer, Direct, LatentCodec, Space, SteerConfig};
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
        x0,
        &mask,
        &Space::Pixels,
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

/// The tiny SD VAE as the latent codec.
struct TinyVae(latentflow_models::sd::vae::Vae);

impl LatentCodec for TinyVae {
    fn decode(&self, z: &Tensor) -> latentflow_models::Result<Tensor> {
        self.0.decode_raw(&(z / self.0.config.scaling_factor)?)
    }
    fn encode(&self, x: &Tensor) -> latentflow_models::Result<Tensor> {
        Ok((self.0.encode_mean_raw(x)? * self.0.config.scaling_factor)?)
    }
}

#[test]
fn in_latent_space_the_mixture_is_per_latent_element_on_the_scaled_bins() {
    let r = load("tpm-ref/vq.safetensors");
    let vq = VqModel::load(&fixtures().join("tiny-vq")).unwrap();
    let vae =
        TinyVae(latentflow_models::sd::vae::Vae::load(&fixtures().join("tiny-sd/vae")).unwrap());
    let pc = mixture(&[32; 12 * 16], 3, 5).unwrap();
    let image = &r["image"]; // 1×3×24×32
    let known = vae.encode(image).unwrap(); // 1×4×12×16
    let x0 = Tensor::randn(0f32, 1.0, known.dims(), &Device::Cpu).unwrap();
    let var = 0.05;
    let variance = (x0.ones_like().unwrap() * var).unwrap();
    let keep = Tensor::zeros((1, 1, 24, 32), DType::F32, &Device::Cpu).unwrap();
    let keep_latent = Tensor::zeros(known.dims(), DType::F32, &Device::Cpu).unwrap();
    let cfg = SteerConfig {
        alpha_start: 1.0,
        alpha_end: 1.0,
        range: 4.0,
        ..SteerConfig::default()
    };
    let space = Space::Latent {
        codec: &vae,
        known: &known,
        keep: &keep_latent,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let parts = Direct { vq: &vq, pc: &pc };
    let out = steer(
        &x0, &variance, image, &keep, &space, 240.0, 250.0, &parts, &cfg, &mut rng,
    )
    .unwrap();
    assert_eq!(out.dims(), x0.dims());
    let (o, m) = (
        out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        x0.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    let step = 8.0 / 255.0;
    for (v, mu) in o.iter().zip(&m) {
        let i = ((v + 4.0) / step).round();
        assert!(
            (v - (i * step - 4.0)).abs() < 1e-5,
            "{v} is not a bin of [−4, 4]"
        );
        // α = 1: the denoiser's Gaussian, truncated at 2σ (plus the bins' half width).
        assert!(
            (v - mu).abs() <= 2.0 * (var as f32).sqrt() + step,
            "{v} far from {mu}"
        );
    }
    // The circuit's side changes the draw when α < 1.
    let mixed = SteerConfig {
        range: 4.0,
        alpha_start: 0.2,
        alpha_end: 0.2,
        ..SteerConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let other = steer(
        &x0, &variance, image, &keep, &space, 240.0, 250.0, &parts, &mixed, &mut rng,
    )
    .unwrap();
    assert_ne!(other.flatten_all().unwrap().to_vec1::<f32>().unwrap(), o);
}
