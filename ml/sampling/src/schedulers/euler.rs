//! Euler and Euler ancestral on the k-diffusion σ grid (diffusers
//! `scheduling_euler_discrete.py`, `scheduling_euler_ancestral_discrete.py`).

use super::table::{interp, karras, leading, linspace_desc, sigma_to_t, trailing};
use candle_core::{Result, Tensor};

use super::ops::{add_scaled, lincomb, scale};
use super::{Config, Prediction, Scheduler, Spacing, StepArgs};

/// Timesteps (fractional), σ per step plus a final 0, and the initial noise σ.
pub(super) fn grid(cfg: &Config, spacing: Spacing, n: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let t = cfg.table.len();
    let table = cfg.table.sigmas();
    let f32r = |v: f64| v as f32 as f64;
    let mut ts: Vec<f64> = match spacing {
        Spacing::Linspace => linspace_desc((t - 1) as f64, n),
        Spacing::Leading => leading(t / n, 0..=n - 1, cfg.steps_offset),
        Spacing::Trailing => trailing(t, n),
    };
    let mut sigmas: Vec<f64> = ts.iter().map(|&x| interp(x, &table)).collect();
    if cfg.karras && !sigmas.is_empty() {
        let log_sigmas: Vec<f32> = table.iter().map(|s| s.ln()).collect();
        sigmas = karras(sigmas[sigmas.len() - 1], sigmas[0], n);
        ts = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
    }
    sigmas.push(0.0);
    let sigmas: Vec<f64> = sigmas.into_iter().map(f32r).collect();
    let ts = ts.into_iter().map(f32r).collect();
    let max = sigmas.iter().cloned().fold(0.0, f64::max);
    let init = match spacing {
        Spacing::Linspace | Spacing::Trailing => max,
        Spacing::Leading => (max * max + 1.0).sqrt(),
    };
    (ts, sigmas, init)
}

/// x̂0 from the model output at σ.
/// x̂0 on the σ grid from a model output of kind `pred`.
fn denoised(pred: Prediction, sigma: f64, out: &Tensor, x: &Tensor) -> Result<Tensor> {
    match pred {
        Prediction::Epsilon | Prediction::Flow => x - scale(out, sigma as f32 as f64)?,
        Prediction::V => {
            let c_out = (-sigma / (sigma * sigma + 1.0).sqrt()) as f32;
            let c_in = (1.0 / (sigma * sigma + 1.0)) as f32;
            lincomb(c_out as f64, out, c_in as f64, x)
        }
        Prediction::Sample => Ok(out.clone()),
    }
}

/// `x + (x − d)·inv·dt`, in that order.
fn euler_update(x: &Tensor, d: &Tensor, inv: f32, dt: f32) -> Result<Tensor> {
    x + scale(&scale(&(x - d)?, inv as f64)?, dt as f64)?
}

pub(super) fn step_euler(s: &Scheduler, a: &StepArgs) -> Result<Tensor> {
    let (pred, out, x) = (a.pred, a.out, a.x);
    let (sigma, next) = (s.sigmas[s.index], s.sigmas[s.index + 1]);
    let x0 = denoised(pred, sigma, out, x)?;
    let dt = (next - sigma) as f32;
    let inv = (1.0 / sigma) as f32;
    euler_update(x, &x0, inv, dt)
}

pub(super) fn step_ancestral(s: &Scheduler, a: &StepArgs) -> Result<Tensor> {
    let (pred, out, x, noise) = (a.pred, a.out, a.x, a.noise);
    let (sigma, to) = (s.sigmas[s.index], s.sigmas[s.index + 1]);
    let x0 = denoised(pred, sigma, out, x)?;
    let up = (to * to * (sigma * sigma - to * to) / (sigma * sigma)).sqrt();
    let down = (to * to - up * up).sqrt();
    let dt = (down - sigma) as f32;
    let inv = (1.0 / sigma) as f32;
    let next = euler_update(x, &x0, inv, dt)?;
    match noise {
        Some(z) => add_scaled(&next, up, z),
        None => Ok(next),
    }
}
