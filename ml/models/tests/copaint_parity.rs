//! CoPaint on the tiny ADM model against the Tiramisu authors' `O_DDIMSampler`
//! (tools/reference/make_copaint_fixture.py): a 20-step respaced schedule, two gradient steps
//! per step with the adaptive learning rate, a non-square batch of two with different masks;
//! every step's x_{t−1} and x̂0, the loss, and the learned-range variance.

use candle_core::Tensor;
use latentflow_models::unet2d::UNet2DModel;
use latentflow_sampling::copaint::{copaint, variance, CoPaintConfig, CoPaintRun, GradModel};
use latentflow_sampling::respace::{named_betas, space_timesteps, SpacedDiffusion};
use latentflow_sampling::{HookPoint, Noise, SampleError, StepContext, StepHook};
use latentflow_testutil::{fixtures, load, rel_err};

/// The fixture's model: the network's noise estimate scaled by 0.005 and added to x (so x̂0
/// stays of order one at t = 999, as a trained model's does), its variance channels as they are.
struct Adm(UNet2DModel);

const SCALE: f64 = 0.005;

fn err(e: latentflow_models::ModelError) -> SampleError {
    SampleError::Model(Box::new(e))
}

impl GradModel for Adm {
    fn output(&mut self, x: &Tensor, t: f64) -> Result<Tensor, SampleError> {
        let out = self.0.forward(x, t, None).map_err(err)?;
        let eps = (x + (out.narrow(1, 0, 3)? * SCALE)?)?;
        Ok(Tensor::cat(&[&eps, &out.narrow(1, 3, 3)?], 1)?)
    }
    fn vjp(&mut self, x: &Tensor, t: f64, cot: &Tensor) -> Result<Tensor, SampleError> {
        let ce = cot.narrow(1, 0, 3)?;
        let inner = Tensor::cat(&[&(&ce * SCALE)?, &cot.narrow(1, 3, 3)?], 1)?;
        Ok((ce + self.0.vjp(x, t, None, &inner).map_err(err)?)?)
    }
}

/// Keeps the variance the sampler hands to x̂0 hooks at the first step, and every step's place.
struct SeeVariance(Option<Tensor>, Vec<(usize, usize)>);

impl StepHook for SeeVariance {
    fn wants_x0(&self) -> bool {
        true
    }
    fn see(
        &mut self,
        at: HookPoint,
        ctx: &StepContext,
        _: &Tensor,
    ) -> latentflow_sampling::hooks::Replacement {
        if at == HookPoint::X0 {
            if self.0.is_none() {
                self.0 = ctx.variance.cloned();
            }
            self.1.extend(ctx.position);
        }
        Ok(None)
    }
}

#[test]
fn copaint_matches_the_authors_sampler_at_every_step() {
    check("unet2d-ref/copaint.safetensors", false);
}

/// From a rate of 20 the loss grows and the rate backs off 47 times in the reference run.
#[test]
fn the_adaptive_rate_backs_off_as_the_authors_does() {
    check("unet2d-ref/copaint_adaptive.safetensors", true);
}

fn check(fixture: &str, adaptive: bool) {
    let r = load(fixture);
    let lr: Vec<f64> = r["lr"].to_vec1().unwrap();
    let base = named_betas("linear", 1000).unwrap();
    let d = SpacedDiffusion::new(&base, &space_timesteps(1000, "20").unwrap()).unwrap();
    let map: Vec<i64> = r["timestep_map"].to_vec1().unwrap();
    assert_eq!(
        map,
        d.timestep_map.iter().map(|&t| t as i64).collect::<Vec<_>>()
    );
    let acs: Vec<f64> = r["alphas_cumprod"].to_vec1().unwrap();
    for (a, b) in acs.iter().zip(&d.alphas_cumprod) {
        assert!((a - b).abs() < 1e-12);
    }
    let mut model = Adm(UNet2DModel::load(&fixtures().join("tiny-adm")).unwrap());
    let mut seen = SeeVariance(None, Vec::new());
    let run = CoPaintRun {
        diffusion: &d,
        config: CoPaintConfig {
            steps: 20,
            adaptive_lr: adaptive,
            lr: lr[0],
            ..CoPaintConfig::default()
        },
        known: r["known"].clone(),
        keep: r["mask"].clone(),
        hooks: vec![&mut seen],
        record: true,
    };
    let out = copaint(run, &mut model, &r["noise"], &mut Noise::seeded(0)).unwrap();
    let losses: Vec<f64> = r["loss"].to_vec1().unwrap();
    assert_eq!(out.steps.len(), 19);
    for (i, (x, x0)) in out.steps.iter().zip(&out.x0).enumerate() {
        let want = r["steps"].get(i).unwrap();
        let e = rel_err(x, &want);
        assert!(e <= 1e-4, "x at step {i}: error {e:e}");
        // x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ multiplies the noise estimate's rounding by 1/√ᾱ (158 at
        // t = 999): its bound is 2e-4 while ᾱ < 1e-3 (the first three steps), 1e-4 after.
        let bound = if acs[19 - i] < 1e-3 { 2e-4 } else { 1e-4 };
        let e = rel_err(x0, &r["x0"].get(i).unwrap());
        assert!(e <= bound, "x̂0 at step {i}: error {e:e}");
        let l = (out.losses[i] - losses[i]).abs() / losses[i].abs().max(1.0);
        assert!(
            l <= 1e-4,
            "loss at step {i}: {} vs {}",
            out.losses[i],
            losses[i]
        );
    }
    let e = rel_err(&out.image, &r["sample"]);
    assert!(e <= 1e-4, "sample: error {e:e}");
    let at_noise = model.output(&r["noise"], 999.0).unwrap();
    let v = variance(&d, 19, &at_noise, 3).unwrap();
    let e = rel_err(&v, &r["variance_at_noise"]);
    assert!(e <= 1e-5, "learned-range variance: error {e:e}");
    assert!(seen.0.is_some(), "x̂0 hooks see the variance");
    assert_eq!(seen.1.first(), Some(&(19, 20)));
    assert_eq!(seen.1.last(), Some(&(1, 20)));
}
