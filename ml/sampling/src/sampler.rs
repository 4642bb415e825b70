//! The sampling loop: from an initial latent and a scheduler, call the model each step (one
//! batch `[negative; positive]` under classifier-free guidance), let hooks see x̂0 and the new
//! latent, and return the result with, optionally, every step's latent and x̂0.

use candle_core::Tensor;

use crate::guidance;
use crate::hooks::{HookPoint, StepContext, StepHook};
use crate::noise::Noise;
use crate::schedulers::{Prediction, Scheduler};
use crate::SampleError;

/// Where the sampler is when it calls the model: step `index` (0-based; img2img counts from
/// its first step) of `total`, and the guidance scale under classifier-free guidance, when the
/// batch is `[negative; positive]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct Step {
    pub index: usize,
    pub total: usize,
    pub guidance: Option<f64>,
}

/// The model, as the loop sees it.
pub trait Model {
    /// The prediction for the scaled input `x` (the doubled batch under guidance) at timestep
    /// `t`, and what kind of prediction it is.
    fn predict(
        &mut self,
        x: &Tensor,
        t: f64,
        step: Step,
    ) -> Result<(Tensor, Prediction), SampleError>;

    /// Called before each step; an error (cancellation) ends the run.
    fn progress(&mut self, done: usize, total: usize) -> Result<(), SampleError> {
        let _ = (done, total);
        Ok(())
    }
}

/// How the run starts.
pub enum Start {
    /// From pure noise (txt2img).
    Noise,
    /// From `latent` noised to the level of step `at` (img2img: the first `at` steps are
    /// skipped).
    Partial {
        /// The clean latent.
        latent: Tensor,
        /// The first step to run.
        at: usize,
    },
    /// From this x_T, as it is (already at the first step's noise level; FreeInit's later
    /// passes). Nothing is drawn for it.
    Given(Tensor),
}

/// One run's settings.
pub struct Run<'a> {
    /// The schedule (fresh: at step 0).
    pub scheduler: Scheduler,
    /// The latent's shape.
    pub shape: Vec<usize>,
    /// How it starts.
    pub start: Start,
    /// Classifier-free guidance scale, when the model gets the doubled batch.
    pub guidance: Option<f64>,
    /// Hooks, in order.
    pub hooks: Vec<&'a mut dyn StepHook>,
    /// Keep every step's latent and x̂0.
    pub record: bool,
}

/// What a run produced.
pub struct Sampled {
    /// The final latent.
    pub latent: Tensor,
    /// The latent after every step (when recording).
    pub steps: Vec<Tensor>,
    /// The predicted x̂0 of every step (when recording).
    pub x0: Vec<Tensor>,
}

/// Runs the loop.
pub fn sample(
    mut run: Run<'_>,
    model: &mut dyn Model,
    noise: &mut Noise,
) -> Result<Sampled, SampleError> {
    let sched = &mut run.scheduler;
    let steps = sched.len();
    let device = candle_core::Device::Cpu;
    let (mut x, first, initial) = match &run.start {
        Start::Noise => {
            let initial = noise.draw(&run.shape, &device)?;
            (initial.affine(sched.init_noise_sigma(), 0.0)?, 0, initial)
        }
        Start::Partial { latent, at } => {
            let initial = noise.draw(&run.shape, &device)?;
            sched.start_at(*at)?;
            (sched.add_noise(latent, &initial, *at)?, *at, initial)
        }
        Start::Given(x) => {
            if x.dims() != run.shape.as_slice() {
                return Err(SampleError::Invalid(format!(
                    "the start latent is {:?}, the run's shape {:?}",
                    x.dims(),
                    run.shape
                )));
            }
            (x.clone(), 0, x.clone())
        }
    };
    let total = steps - first;
    let wants_x0 = run.record || run.hooks.iter().any(|h| h.wants_x0());
    let mut out = Sampled {
        latent: x.clone(),
        steps: Vec::new(),
        x0: Vec::new(),
    };
    for i in first..steps {
        model.progress(i - first, total)?;
        let t = sched.timesteps()[i];
        let x_in = sched.scale_model_input(&x)?;
        let step = Step {
            index: i - first,
            total,
            guidance: run.guidance,
        };
        let (mut pred, mut kind) = match run.guidance {
            Some(g) => {
                let doubled = Tensor::cat(&[&x_in, &x_in], 0)?;
                let (p, kind) = model.predict(&doubled, t, step)?;
                check_shape(&p, doubled.dims())?;
                (guidance::combine(&p, g)?, kind)
            }
            None => {
                let (p, kind) = model.predict(&x_in, t, step)?;
                check_shape(&p, x_in.dims())?;
                (p, kind)
            }
        };
        let next_level = (i + 1 < steps).then(|| sched.noise_coefficients(i + 1));
        let variance = if wants_x0 {
            let fixed = posterior_variance(sched.noise_coefficients(i), next_level);
            Some(Tensor::full(fixed as f32, x.dims(), x.device())?)
        } else {
            None
        };
        let ctx = StepContext {
            index: i - first,
            total,
            timestep: t,
            next_level,
            initial_noise: &initial,
            variance: variance.as_ref(),
            position: Some((total - 1 - (i - first), total)),
        };
        if wants_x0 {
            let mut x0 = sched.predict_x0(&pred, kind, &x)?;
            let mut replaced = false;
            for h in run.hooks.iter_mut().filter(|h| h.wants_x0()) {
                if let Some(new) = h.see(HookPoint::X0, &ctx, &x0)? {
                    x0 = new;
                    replaced = true;
                }
            }
            if replaced {
                pred = x0.clone();
                kind = Prediction::Sample;
            }
            if run.record {
                out.x0.push(x0);
            }
        }
        let z = if sched.needs_noise() {
            Some(noise.draw(&run.shape, &device)?)
        } else {
            None
        };
        x = sched.step_as(kind, &pred, &x, z.as_ref())?;
        for h in run.hooks.iter_mut() {
            if let Some(new) = h.see(HookPoint::Latent, &ctx, &x)? {
                x = new;
            }
        }
        if run.record {
            out.steps.push(x.clone());
        }
    }
    model.progress(total, total)?;
    out.latent = x;
    Ok(out)
}

/// DDPM's posterior variance β̃ = (1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev) between the levels
/// (a, b) of this step and the next (ᾱ = a²/(a² + b²), which covers the σ grids too; after the
/// last step ᾱ_prev = 1): the spread of x̂0 that x̂0 hooks such as TPM steering use when the
/// model has no learned variance.
pub fn posterior_variance(now: (f64, f64), next: Option<(f64, f64)>) -> f64 {
    let bar = |(a, b): (f64, f64)| {
        let d = a * a + b * b;
        if d > 0.0 {
            a * a / d
        } else {
            1.0
        }
    };
    let a_t = bar(now);
    let a_prev = next.map(bar).unwrap_or(1.0);
    if a_t >= 1.0 || a_prev <= 0.0 {
        return 0.0;
    }
    ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).max(0.0)
}

fn check_shape(pred: &Tensor, want: &[usize]) -> Result<(), SampleError> {
    if pred.dims() != want {
        return Err(SampleError::Invalid(format!(
            "the denoiser returned shape {:?} for an input of {want:?}",
            pred.dims()
        )));
    }
    Ok(())
}
