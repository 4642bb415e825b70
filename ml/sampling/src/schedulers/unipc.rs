//! UniPC (diffusers `scheduling_unipc_multistep.py`: `bh2`, order 2, data prediction,
//! `lower_order_final`, corrector on every step after the first). The σ grid is DPM-Solver++'s.

use candle_core::{Result, Tensor};

use super::dpmpp::{data_prediction, vp};
use super::ops::{lincomb, scale};
use super::{Scheduler, StepArgs};

/// The φ terms of the B(h) = e^{−h} − 1 ("bh2") variant for a step of size `h` in λ:
/// (h·φ₁, B_h, b₁, b₂) with bₖ = k!·φₖ'/B_h.
fn phis(h: f64) -> (f64, f64, f64, f64) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = h_phi_1;
    let phi_1 = h_phi_1 / hh - 1.0;
    let phi_2 = phi_1 / hh - 0.5;
    (h_phi_1, b_h, phi_1 / b_h, 2.0 * phi_2 / b_h)
}

/// `σ_t/σ_s · x − α_t·hφ₁·m0`, the first-order part shared by predictor and corrector.
fn first_order(x: &Tensor, ratio: f64, alpha_t: f64, h_phi_1: f64, m0: &Tensor) -> Result<Tensor> {
    lincomb(ratio, x, -alpha_t * h_phi_1, m0)
}

fn correct(s: &Scheduler, m_t: &Tensor, order: usize) -> Result<Tensor> {
    let i = s.index;
    let m0 = &s.history[s.history.len() - 1];
    let last = s.last_sample.as_ref().unwrap_or(m0);
    let (a_t, s_t, l_t) = vp(s.cfg.flow.is_some(), s.sigmas[i]);
    let (_, s_s0, l_s0) = vp(s.cfg.flow.is_some(), s.sigmas[i - 1]);
    let h = l_t - l_s0;
    let (h_phi_1, b_h, b1, b2) = phis(h);
    let out = first_order(last, s_t / s_s0, a_t, h_phi_1, m0)?;
    let c = -a_t * b_h;
    let d_t = (m_t - m0)?;
    if order >= 2 && s.history.len() >= 2 && i >= 2 {
        let (_, _, l_s1) = vp(s.cfg.flow.is_some(), s.sigmas[i - 2]);
        let rk = (l_s1 - l_s0) / h;
        let rho0 = (b1 - b2) / (1.0 - rk);
        let rho1 = b1 - rho0;
        let m1 = &s.history[s.history.len() - 2];
        let d1 = scale(&(m1 - m0)?, 1.0 / rk)?;
        out + scale(&lincomb(rho0, &d1, rho1, &d_t)?, c)?
    } else {
        out + scale(&d_t, c * 0.5)?
    }
}

fn predict(s: &Scheduler, x: &Tensor, order: usize) -> Result<Tensor> {
    let i = s.index;
    let m0 = &s.history[s.history.len() - 1];
    let (a_t, s_t, l_t) = vp(s.cfg.flow.is_some(), s.sigmas[i + 1]);
    let (_, s_s0, l_s0) = vp(s.cfg.flow.is_some(), s.sigmas[i]);
    let h = l_t - l_s0;
    let (h_phi_1, b_h, _, _) = phis(h);
    let ratio = if s_t == 0.0 { 0.0 } else { s_t / s_s0 };
    let out = first_order(x, ratio, a_t, h_phi_1, m0)?;
    if order >= 2 {
        let (_, _, l_s1) = vp(s.cfg.flow.is_some(), s.sigmas[i - 1]);
        let rk = (l_s1 - l_s0) / h;
        let m1 = &s.history[s.history.len() - 2];
        let c = -a_t * b_h * 0.5;
        out + scale(&(m1 - m0)?, c / rk)?
    } else {
        Ok(out)
    }
}

pub(super) fn step(s: &mut Scheduler, a: &StepArgs) -> Result<Tensor> {
    let (pred, out, x) = (a.pred, a.out, a.x);
    let i = s.index;
    let m_t = data_prediction(s.cfg.flow.is_some(), pred, s.sigmas[i], out, x)?;
    let x = if i > 0 && s.last_sample.is_some() {
        correct(s, &m_t, s.this_order)?
    } else {
        x.clone()
    };
    s.history.push(m_t);
    if s.history.len() > 2 {
        s.history.remove(0);
    }
    let order = 2.min(s.steps - i).min(s.lower_order_nums + 1);
    s.this_order = order;
    let next = predict(s, &x, order)?;
    s.last_sample = Some(x);
    if s.lower_order_nums < 2 {
        s.lower_order_nums += 1;
    }
    Ok(next)
}
