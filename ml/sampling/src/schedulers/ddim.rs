//! ᾱ-based schedulers: DDIM, DDPM and LCM (diffusers `scheduling_ddim.py`, `scheduling_ddpm.py`,
//! `scheduling_lcm.py`).

use super::table::{leading, linspace_desc, trailing};
use candle_core::{Result, Tensor};

use super::ops::{add_scaled, lincomb};
use super::{Config, Prediction, Scheduler, Spacing, StepArgs};

/// `np.round`: halves go to the even neighbour.
fn round(x: f64) -> f64 {
    x.round_ties_even()
}

/// Integer timesteps for DDIM and DDPM.
pub(super) fn timesteps(cfg: &Config, spacing: Spacing, n: usize) -> Vec<f64> {
    let t = cfg.table.len();
    match spacing {
        Spacing::Linspace => linspace_desc((t - 1) as f64, n)
            .into_iter()
            .map(round)
            .collect(),
        Spacing::Leading => leading(t / n, 0..=n - 1, cfg.steps_offset),
        Spacing::Trailing => trailing(t, n),
    }
}

/// LCM: `n` timesteps picked from the 50-step origin grid {19, 39, …, 999}.
pub(super) fn lcm_timesteps(cfg: &Config, n: usize) -> Vec<f64> {
    let original = 50usize;
    let k = cfg.table.len() / original;
    let origin: Vec<f64> = (1..=original).rev().map(|j| (j * k) as f64 - 1.0).collect();
    (0..n)
        .map(|i| origin[(i as f64 * original as f64 / n as f64).floor() as usize])
        .collect()
}

/// (x̂0, ε̂) from the model output.
/// (x̂0, ε̂) from a model output of kind `pred` at ᾱ.
fn predictions(
    pred: Prediction,
    alpha_bar: f64,
    out: &Tensor,
    x: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (a, b) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
    Ok(match pred {
        Prediction::Epsilon | Prediction::Flow => (lincomb(1.0 / a, x, -b / a, out)?, out.clone()),
        Prediction::V => (lincomb(a, x, -b, out)?, lincomb(a, out, b, x)?),
        Prediction::Sample => (out.clone(), lincomb(1.0 / b, x, -a / b, out)?),
    })
}

fn alpha_bar_prev(s: &Scheduler, prev_t: f64, alpha_to_one: bool) -> f64 {
    if prev_t >= 0.0 {
        s.cfg.table.alpha_bar(prev_t as i64)
    } else if alpha_to_one {
        1.0
    } else {
        s.cfg.table.alpha_bar(0)
    }
}

/// This step's timestep, the previous one on the evenly strided grid, and ᾱ_t.
fn leading_step(s: &Scheduler) -> (f64, f64, f64) {
    let t = s.timesteps[s.index];
    let prev_t = t - (s.cfg.table.len() / s.steps) as f64;
    (t, prev_t, s.cfg.table.alpha_bar(t as i64))
}

pub(super) fn step_ddim(s: &Scheduler, eta: f64, a: &StepArgs) -> Result<Tensor> {
    let (pred, out, x, noise) = (a.pred, a.out, a.x, a.noise);
    let (_, prev_t, a_t) = leading_step(s);
    let a_prev = alpha_bar_prev(s, prev_t, s.cfg.set_alpha_to_one.unwrap_or(false));
    let (x0, eps) = predictions(pred, a_t, out, x)?;
    let variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
    let std = eta * variance.sqrt();
    let next = lincomb(a_prev.sqrt(), &x0, (1.0 - a_prev - std * std).sqrt(), &eps)?;
    match noise {
        Some(z) => add_scaled(&next, std, z),
        None => Ok(next),
    }
}

pub(super) fn step_ddpm(s: &Scheduler, a: &StepArgs) -> Result<Tensor> {
    let (pred, out, x, noise) = (a.pred, a.out, a.x, a.noise);
    let (t, prev_t, a_t) = leading_step(s);
    let a_prev = if prev_t >= 0.0 {
        s.cfg.table.alpha_bar(prev_t as i64)
    } else {
        1.0
    };
    let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
    let cur_alpha = a_t / a_prev;
    let cur_beta = 1.0 - cur_alpha;
    let (x0, _) = predictions(pred, a_t, out, x)?;
    let next = lincomb(
        a_prev.sqrt() * cur_beta / b_t,
        &x0,
        cur_alpha.sqrt() * b_prev / b_t,
        x,
    )?;
    match noise {
        Some(z) if t > 0.0 => {
            let variance = (b_prev / b_t * cur_beta).max(1e-20);
            add_scaled(&next, variance.sqrt(), z)
        }
        _ => Ok(next),
    }
}

pub(super) fn step_lcm(s: &Scheduler, a: &StepArgs) -> Result<Tensor> {
    let (pred, out, x, noise) = (a.pred, a.out, a.x, a.noise);
    let t = s.timesteps[s.index];
    let last = s.index + 1 == s.steps;
    let prev_t = if last { t } else { s.timesteps[s.index + 1] };
    let a_t = s.cfg.table.alpha_bar(t as i64);
    let a_prev = alpha_bar_prev(s, prev_t, s.cfg.set_alpha_to_one.unwrap_or(true));
    // Boundary-condition scalings with σ_data = 0.5 and timestep scaling 10.
    let scaled = t * 10.0;
    let c_skip = 0.25 / (scaled * scaled + 0.25);
    let c_out = scaled / (scaled * scaled + 0.25).sqrt();
    let (x0, _) = predictions(pred, a_t, out, x)?;
    let denoised = lincomb(c_out, &x0, c_skip, x)?;
    match (last, noise) {
        (false, Some(z)) => lincomb(a_prev.sqrt(), &denoised, (1.0 - a_prev).sqrt(), z),
        _ => Ok(denoised),
    }
}
