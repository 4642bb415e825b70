//! BIVDiff's mixed-inversion step (its `DDIMScheduler.reverse_step`): a DDIM-style inversion
//! that walks the scheduler's timesteps in ascending order and, at each, re-noises the
//! predicted clean latent with the predicted noise to the next level:
//! x̂0 = (z − √(1−ᾱ_t)·ε̂)/√ᾱ_t, t' = min(T − 2, t + T/N), z ← √ᾱ_t'·x̂0 + √(1−ᾱ_t')·ε̂.
//! Without guidance; BIVDiff runs it with the unconditional text, once with an image model on
//! every frame and once with a video model, and mixes the two at the end.

use candle_core::Tensor;

use crate::sampler::{Model, Step};
use crate::schedulers::{Prediction, Scheduler};
use crate::SampleError;

/// ε̂ from a prediction of `kind` at ᾱ.
fn epsilon(pred: &Tensor, kind: Prediction, x: &Tensor, ab: f64) -> Result<Tensor, SampleError> {
    let (a, s) = (
        (ab as f32).sqrt() as f64,
        (1.0f32 - ab as f32).sqrt() as f64,
    );
    Ok(match kind {
        Prediction::Epsilon => pred.clone(),
        // v = a·ε − s·x0 and x = a·x0 + s·ε give ε = a·v + s·x.
        Prediction::V => ((pred * a)? + (x * s)?)?,
        Prediction::Sample => ((x - (pred * a)?)? / s)?,
        Prediction::Flow => {
            return Err(SampleError::Invalid(
                "DDIM inversion needs a diffusion model (ε, v or x0), not a flow-matching one"
                    .into(),
            ))
        }
    })
}

/// `z0` (at the scheduler's initial σ, 1 for DDIM) inverted to the last level of the
/// scheduler's timesteps; the model is asked once per timestep, without guidance.
pub fn reverse_ddim(
    model: &mut dyn Model,
    z0: &Tensor,
    scheduler: &Scheduler,
) -> Result<Tensor, SampleError> {
    let table = &scheduler.config().table;
    let train = table.len();
    let n = scheduler.len();
    if n == 0 {
        return Err(SampleError::Invalid(
            "inversion needs at least one step".into(),
        ));
    }
    let stride = train / n;
    let mut x = z0.affine(scheduler.init_noise_sigma(), 0.0)?;
    let ascending: Vec<f64> = scheduler.timesteps().iter().rev().copied().collect();
    for (i, &t) in ascending.iter().enumerate() {
        model.progress(i, n)?;
        let step = Step {
            index: i,
            total: n,
            guidance: None,
        };
        let (pred, kind) = model.predict(&x, t, step)?;
        if pred.dims() != x.dims() {
            return Err(SampleError::Invalid(format!(
                "the model predicted {:?} for a latent of {:?}",
                pred.dims(),
                x.dims()
            )));
        }
        let ti = t as i64;
        let ab = table.alpha_bar(ti);
        let eps = epsilon(&pred, kind, &x, ab)?;
        let x0 =
            ((&x - (&eps * (1.0f32 - ab as f32).sqrt() as f64)?)? / (ab as f32).sqrt() as f64)?;
        let next = (ti + stride as i64).min(train as i64 - 2);
        let an = table.alpha_bar(next);
        x = ((x0 * (an as f32).sqrt() as f64)? + (eps * (1.0f32 - an as f32).sqrt() as f64)?)?;
    }
    model.progress(n, n)?;
    Ok(x)
}
