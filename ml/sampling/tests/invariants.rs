//! Model-free invariants from `shared/reference/seed-algorithms.md` §7: with the exact denoiser
//! of a point mass `c`, deterministic samplers land on `c`.

use candle_core::{Device, Tensor};
use latentflow_sampling::schedulers::{Config, Kind, Scheduler};

fn tensor(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, v.len(), &Device::Cpu).expect("tensor")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec1::<f32>().expect("values")
}

const C: [f32; 6] = [0.5, -1.25, 2.0, 0.0, -0.3, 1.7];

/// ε̂ of the point mass `c` for a VP input with ᾱ.
fn exact_eps(x_in: &[f32], alpha_bar: f64) -> Vec<f32> {
    let (a, b) = (alpha_bar.sqrt() as f32, (1.0 - alpha_bar).sqrt() as f32);
    x_in.iter().zip(C).map(|(x, c)| (x - a * c) / b).collect()
}

fn run(kind: Kind, steps: usize, alpha_to_one: Option<bool>) -> Vec<f32> {
    let mut cfg = Config::sd(kind);
    cfg.set_alpha_to_one = alpha_to_one;
    let table = cfg.table.clone();
    let mut s = Scheduler::new(cfg, steps).expect("scheduler");
    let mut x: Vec<f32> = [1.0f32, -0.5, 0.25, 2.0, -1.0, 0.75]
        .iter()
        .map(|v| v * s.init_noise_sigma() as f32)
        .collect();
    for i in 0..steps {
        let x_in = values(&s.scale_model_input(&tensor(&x)).expect("scale"));
        // σ-based schedulers: ᾱ = 1/(σ²+1) at the step's σ; the others: the table at t.
        let alpha_bar = match s.sigmas().get(i) {
            Some(sigma) => 1.0 / (sigma * sigma + 1.0),
            None => table.alpha_bar(s.timesteps()[i] as i64),
        };
        let eps = exact_eps(&x_in, alpha_bar);
        x = values(&s.step(&tensor(&eps), &tensor(&x), None).expect("step"));
    }
    x
}

fn assert_lands_on_c(x: &[f32], what: &str) {
    for (got, want) in x.iter().zip(C) {
        assert!((got - want).abs() < 2e-4, "{what}: {x:?} != {C:?}");
    }
}

#[test]
fn ddim_one_step_returns_the_point() {
    assert_lands_on_c(&run(Kind::Ddim { eta: 0.0 }, 1, Some(true)), "ddim N=1");
}

#[test]
fn euler_dpmpp_and_unipc_end_at_the_point_for_any_step_count() {
    for steps in [1, 2, 3, 5, 10, 25, 50] {
        assert_lands_on_c(&run(Kind::Euler, steps, None), &format!("euler N={steps}"));
        assert_lands_on_c(
            &run(Kind::DpmPp2M, steps, None),
            &format!("dpmpp_2m N={steps}"),
        );
        assert_lands_on_c(&run(Kind::UniPc, steps, None), &format!("unipc N={steps}"));
    }
}

#[test]
fn stochastic_samplers_refuse_to_step_without_noise() {
    let mut s = Scheduler::new(Config::sd(Kind::EulerAncestral), 4).expect("scheduler");
    let x = tensor(&[0.0f32; 6]);
    assert!(s.step(&x, &x, None).is_err());
    assert!(s.step(&x, &x, Some(&tensor(&[0.0; 5]))).is_err());
    assert!(s.step(&x, &x, Some(&tensor(&[0.0; 6]))).is_ok());
}

#[test]
fn bad_step_counts_are_errors() {
    assert!(Scheduler::new(Config::sd(Kind::Euler), 0).is_err());
    assert!(Scheduler::new(Config::sd(Kind::Euler), 1001).is_err());
}

#[test]
fn hallucination_score_equals_numpy_population_variance() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hallucination.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let v = st.tensor(name).unwrap();
        let d = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (v.shape().to_vec(), d)
    };
    let (shape, traj) = f32s("x0");
    let (_, want) = f32s("scores");
    let got = latentflow_sampling::hallucination::trajectory_variance(&traj, &shape, 10).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
            "{got:?} vs {want:?}"
        );
    }
    assert!(got[1] < got[0] / 1000.0, "the settled sample scores lowest");
}

/// The variance x̂0 hooks get from the plain loop: DDPM's posterior variance between a step's
/// ᾱ and the next's, the same from the (√ᾱ, √(1−ᾱ)) and the σ parameterisations, 0 after the
/// last step.
#[test]
fn hooks_get_ddpms_posterior_variance_in_every_parameterisation() {
    use latentflow_sampling::sampler::posterior_variance;
    let cfg = Config::sd(Kind::Ddim { eta: 0.0 });
    let table = cfg.table.clone();
    let s = Scheduler::new(cfg, 10).expect("scheduler");
    let (t, t_prev) = (s.timesteps()[3] as i64, s.timesteps()[4] as i64);
    let (a, ap) = (table.alpha_bar(t), table.alpha_bar(t_prev));
    let want = (1.0 - ap) / (1.0 - a) * (1.0 - a / ap);
    let vp = posterior_variance(s.noise_coefficients(3), Some(s.noise_coefficients(4)));
    assert!((vp - want).abs() < 1e-12, "{vp} vs {want}");
    let sigma = |a: f64| ((1.0 - a) / a).sqrt();
    let ve = posterior_variance((1.0, sigma(a)), Some((1.0, sigma(ap))));
    assert!((ve - want).abs() < 1e-12, "{ve} vs {want}");
    assert_eq!(posterior_variance(s.noise_coefficients(9), None), 0.0);
}

mod copaint_resampling {
    use candle_core::{Device, Tensor};
    use latentflow_sampling::copaint::resample_by_fit;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Three 1×2×2 samples whose errors on the known left column are `errors` (squared sums).
    fn samples(errors: [f32; 3]) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let mut v = Vec::new();
        for e in errors {
            let d = (e / 2.0).sqrt();
            // The right column differs wildly: it is masked out.
            v.extend([d, 50.0, d, -50.0]);
        }
        let s = Tensor::from_vec(v, (3, 1, 2, 2), &dev).unwrap();
        let known = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let mask = Tensor::from_vec(vec![1f32, 0.0, 1.0, 0.0], (1, 1, 2, 2), &dev).unwrap();
        (s, known, mask)
    }

    #[test]
    fn the_best_fitting_sample_takes_the_places_at_the_authors_temperature() {
        let (s, k, m) = samples([0.1, 1.0, 1.0]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            resample_by_fit(&s, &k, &m, 2, 100.0, &mut rng).unwrap(),
            [0, 0]
        );
    }

    #[test]
    fn equal_fits_keep_every_sample_once_and_broken_weights_fall_back_to_uniform() {
        let (s, k, m) = samples([0.5, 0.5, 0.5]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            resample_by_fit(&s, &k, &m, 3, 100.0, &mut rng).unwrap(),
            [0, 1, 2]
        );
        // A perfect fit makes a weight infinite: the authors fall back to uniform weights.
        let (s, k, m) = samples([0.0, 0.5, 0.5]);
        assert_eq!(
            resample_by_fit(&s, &k, &m, 3, 100.0, &mut rng).unwrap(),
            [0, 1, 2]
        );
    }

    #[test]
    fn the_remainder_is_drawn_without_replacement_and_seeded() {
        let (s, k, m) = samples([0.5, 0.5, 0.5]);
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            resample_by_fit(&s, &k, &m, 2, 100.0, &mut rng).unwrap()
        };
        for seed in 0..20 {
            let d = draw(seed);
            assert_eq!(d, draw(seed));
            assert!(d[0] < d[1], "two distinct samples: {d:?}");
        }
        assert!(
            (0..20)
                .map(draw)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        );
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(resample_by_fit(&s, &k, &m, 0, 100.0, &mut rng).is_err());
    }
}
