//! UniPC (diffusers `scheduling_unipc_multistep.py`: `bh2`, order 2, data prediction,
//! `lower_order_final`, corrector on every step after the first). The σ grid is DPM-Solver++'s.

use super::{lincomb, Prediction, Scheduler};

/// VP (α, σ) and λ = log α − log σ of a k-diffusion σ.
fn vp(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let s = sigma * alpha;
    (alpha, s, alpha.ln() - s.ln())
}

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
fn first_order(x: &[f32], ratio: f64, alpha_t: f64, h_phi_1: f64, m0: &[f32]) -> Vec<f32> {
    lincomb(ratio, x, -alpha_t * h_phi_1, m0)
}

/// UniC: corrects the sample of step `i` now that the model output `m_t` there is known.
fn correct(s: &Scheduler, m_t: &[f32], order: usize) -> Vec<f32> {
    let i = s.index;
    let last = s.last_sample.as_deref().unwrap_or(&[]);
    let m0 = &s.history[s.history.len() - 1];
    let (a_t, s_t, l_t) = vp(s.sigmas[i]);
    let (_, s_s0, l_s0) = vp(s.sigmas[i - 1]);
    let h = l_t - l_s0;
    let (h_phi_1, b_h, b1, b2) = phis(h);
    let mut out = first_order(last, s_t / s_s0, a_t, h_phi_1, m0);
    let c = (-a_t * b_h) as f32;
    if order >= 2 && s.history.len() >= 2 && i >= 2 {
        let (_, _, l_s1) = vp(s.sigmas[i - 2]);
        let rk = (l_s1 - l_s0) / h;
        // Solve [[1, 1], [rk, 1]]·ρ = [b1, b2].
        let rho0 = (b1 - b2) / (1.0 - rk);
        let rho1 = b1 - rho0;
        let m1 = &s.history[s.history.len() - 2];
        for (k, o) in out.iter_mut().enumerate() {
            let d1 = (m1[k] - m0[k]) as f64 / rk;
            *o += c * (rho0 * d1 + rho1 * (m_t[k] - m0[k]) as f64) as f32;
        }
    } else {
        for (k, o) in out.iter_mut().enumerate() {
            *o += c * 0.5 * (m_t[k] - m0[k]);
        }
    }
    out
}

/// UniP: predicts the next sample from the (corrected) sample `x` of step `i`.
fn predict(s: &Scheduler, x: &[f32], order: usize) -> Vec<f32> {
    let i = s.index;
    let m0 = &s.history[s.history.len() - 1];
    let (a_t, s_t, l_t) = vp(s.sigmas[i + 1]);
    let (_, s_s0, l_s0) = vp(s.sigmas[i]);
    let h = l_t - l_s0;
    let (h_phi_1, b_h, _, _) = phis(h);
    // σ_t / σ_s, exactly 0 at the end (σ_t = 0).
    let ratio = if s_t == 0.0 { 0.0 } else { s_t / s_s0 };
    let mut out = first_order(x, ratio, a_t, h_phi_1, m0);
    if order >= 2 {
        let (_, _, l_s1) = vp(s.sigmas[i - 1]);
        let rk = (l_s1 - l_s0) / h;
        let m1 = &s.history[s.history.len() - 2];
        let c = -a_t * b_h * 0.5;
        for (k, o) in out.iter_mut().enumerate() {
            *o += (c * (m1[k] - m0[k]) as f64 / rk) as f32;
        }
    }
    out
}

pub(super) fn step(s: &mut Scheduler, out: &[f32], x: &[f32]) -> Vec<f32> {
    let i = s.index;
    let (a, sg, _) = vp(s.sigmas[i]);
    // The model saw the uncorrected sample; convert its output to a data prediction.
    let m_t = match s.cfg.prediction {
        Prediction::Epsilon => lincomb(1.0 / a, x, -sg / a, out),
        Prediction::V => lincomb(a, x, -sg, out),
    };
    let x = if i > 0 && s.last_sample.is_some() {
        correct(s, &m_t, s.this_order)
    } else {
        x.to_vec()
    };
    s.history.push(m_t);
    if s.history.len() > 2 {
        s.history.remove(0);
    }
    let order = 2.min(s.steps - i).min(s.lower_order_nums + 1);
    s.this_order = order;
    let next = predict(s, &x, order);
    s.last_sample = Some(x);
    if s.lower_order_nums < 2 {
        s.lower_order_nums += 1;
    }
    next
}
