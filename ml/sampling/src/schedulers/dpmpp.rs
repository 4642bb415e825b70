//! DPM-Solver++ 2M (diffusers `scheduling_dpmsolver_multistep.py`: algorithm `dpmsolver++`,
//! order 2, `midpoint`, `lower_order_final`, final σ 0).

use super::table::{interp, karras, leading, linspace_desc, sigma_to_t, trailing};
use candle_core::{Result, Tensor};

use super::ops::{lincomb, scale};
use super::{Config, Prediction, Scheduler, Spacing, StepArgs};

/// Integer timesteps, σ per step plus a final 0, and the initial noise σ (1: VP form).
pub(super) fn grid(cfg: &Config, spacing: Spacing, n: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let t = cfg.table.len();
    let table = cfg.table.sigmas();
    // n + 1 points from T−1 down to 0, dropping the last (0).
    let mut ts: Vec<f64> = match spacing {
        Spacing::Linspace => linspace_desc((t - 1) as f64, n + 1)
            .into_iter()
            .take(n)
            .map(f64::round_ties_even)
            .collect(),
        Spacing::Leading => leading(t / (n + 1), 1..=n, cfg.steps_offset),
        Spacing::Trailing => trailing(t, n),
    };
    let mut sigmas: Vec<f64> = if cfg.karras {
        let log_sigmas: Vec<f32> = table.iter().map(|s| s.ln()).collect();
        let s = karras(table[0] as f64, table[t - 1] as f64, n);
        ts = s
            .iter()
            .map(|&x| sigma_to_t(x, &log_sigmas).round_ties_even())
            .collect();
        s
    } else {
        ts.iter().map(|&x| interp(x, &table)).collect()
    };
    sigmas.push(0.0);
    (
        ts,
        sigmas.into_iter().map(|s| s as f32 as f64).collect(),
        1.0,
    )
}

/// (α, σ) and λ = log α − log σ of a grid σ: VP (α = 1/√(σ²+1), σ·α) for a k-diffusion σ,
/// (1 − σ, σ) on a flow grid.
pub(super) fn vp(flow: bool, sigma: f64) -> (f64, f64, f64) {
    let (alpha, s) = if flow {
        super::flow::alpha_sigma(sigma)
    } else {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    };
    (alpha, s, alpha.ln() - s.ln())
}

/// The data prediction x̂0 of a model output (the solvers' `convert_model_output`).
pub(super) fn data_prediction(
    flow: bool,
    pred: Prediction,
    sigma: f64,
    out: &Tensor,
    x: &Tensor,
) -> Result<Tensor> {
    let (a, s, _) = vp(flow, sigma);
    match pred {
        Prediction::Epsilon => lincomb(1.0 / a, x, -s / a, out),
        Prediction::V => lincomb(a, x, -s, out),
        Prediction::Flow => lincomb(1.0, x, -(sigma as f32 as f64), out),
        Prediction::Sample => Ok(out.clone()),
    }
}

pub(super) fn step(s: &mut Scheduler, a: &StepArgs) -> Result<Tensor> {
    let (pred, out, x) = (a.pred, a.out, a.x);
    let i = s.index;
    let flow = s.cfg.flow.is_some();
    let (_, s0, l0) = vp(flow, s.sigmas[i]);
    let x0 = data_prediction(flow, pred, s.sigmas[i], out, x)?;
    s.history.push(x0);
    if s.history.len() > 2 {
        s.history.remove(0);
    }
    let (at, st, lt) = vp(flow, s.sigmas[i + 1]);
    let h = lt - l0;
    let phi = (-h).exp() - 1.0;
    let ratio = if st == 0.0 { 0.0 } else { st / s0 };
    let last = i + 1 == s.steps;
    let first_order = s.lower_order_nums < 1 || last;
    let d0 = &s.history[s.history.len() - 1];
    let next = if first_order {
        lincomb(ratio, x, -at * phi, d0)?
    } else {
        // ratio·x − α_t·φ·(m0 + ½·(m0 − m1)/r0)
        let (_, _, l1) = vp(flow, s.sigmas[i - 1]);
        let r0 = (l0 - l1) / h;
        let m1 = &s.history[s.history.len() - 2];
        let d1 = scale(&(d0 - m1)?, 0.5 / r0)?;
        lincomb(ratio, x, -at * phi, &(d0 + d1)?)?
    };
    if s.lower_order_nums < 2 {
        s.lower_order_nums += 1;
    }
    Ok(next)
}
