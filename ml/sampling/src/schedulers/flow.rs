//! Flow-matching schedules (rectified flows: SD3, Flux): x_σ = (1 − σ)·x0 + σ·ε with σ from 1
//! to 0 and a model that predicts the velocity v = ε − x0. The σ grids of diffusers'
//! `FlowMatchEulerDiscreteScheduler` and of DPM-Solver++ and UniPC with `use_flow_sigmas`,
//! each in the precision diffusers computes it, and the Euler step.

use candle_core::{Result, Tensor};

use super::ops::scale;
use super::{Scheduler, StepArgs};

/// The σ schedule of a flow-matching model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flow {
    /// The σ shift s: σ' = s·σ / (1 + (s − 1)·σ) (diffusers' `shift`, `flow_shift`; SD3: 3).
    pub shift: f64,
    /// Dynamic shifting (`use_dynamic_shifting`, Flux): the exponential time shift by e^μ
    /// replaces `shift`; [`Flow::mu_for`] gives μ for an image.
    pub mu: Option<f64>,
    /// `flow_euler` only: σ from 1 to 1/n, as `FluxPipeline` passes them, in place of the
    /// scheduler's own grid over the training timesteps.
    pub uniform: bool,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            shift: 1.0,
            mu: None,
            uniform: false,
        }
    }
}

/// The parameters of dynamic shifting (diffusers' `calculate_shift`; Flux's defaults in
/// [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicShift {
    /// μ at `base_seq_len` tokens (`base_shift`).
    pub base_shift: f64,
    /// μ at `max_seq_len` tokens (`max_shift`).
    pub max_shift: f64,
    /// `base_image_seq_len`.
    pub base_seq_len: f64,
    /// `max_image_seq_len`.
    pub max_seq_len: f64,
}

impl Default for DynamicShift {
    fn default() -> Self {
        DynamicShift {
            base_shift: 0.5,
            max_shift: 1.15,
            base_seq_len: 256.0,
            max_seq_len: 4096.0,
        }
    }
}

impl Flow {
    /// μ for an image of `seq_len` tokens: linear in the token count through
    /// (`base_seq_len`, `base_shift`) and (`max_seq_len`, `max_shift`).
    pub fn mu_for(seq_len: usize, d: DynamicShift) -> f64 {
        let m = (d.max_shift - d.base_shift) / (d.max_seq_len - d.base_seq_len);
        let b = d.base_shift - m * d.base_seq_len;
        seq_len as f64 * m + b
    }

    /// The shift in effect: e^μ under dynamic shifting, else `shift`.
    pub fn effective_shift(&self) -> f64 {
        self.mu.map_or(self.shift, f64::exp)
    }

    /// Checks the settings.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(format!(
                "the flow shift must be positive, got {}",
                self.shift
            ));
        }
        if let Some(mu) = self.mu {
            if !(mu.is_finite() && mu.abs() < 50.0) {
                return Err(format!(
                    "the dynamic-shift μ must be finite and |μ| < 50, got {mu}"
                ));
            }
        }
        Ok(())
    }
}

/// `np.linspace(start, stop, n)`: `i·step + start`, the last point exactly `stop`.
fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i + 1 == n {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

/// s·σ / (1 + (s − 1)·σ) in f64.
fn shifted(s: f64, sigma: f64) -> f64 {
    s * sigma / (1.0 + (s - 1.0) * sigma)
}

/// e^μ / (e^μ + (1/σ − 1)) in f64 (`_time_shift_exponential` with exponent 1).
fn time_shift(mu: f64, sigma: f64) -> f64 {
    let e = mu.exp();
    e / (e + (1.0 / sigma - 1.0))
}

/// `FlowMatchEulerDiscreteScheduler`: timesteps σ·T (fractional), σ per step plus a final 0,
/// initial noise σ 1.
pub(super) fn euler_grid(flow: &Flow, train: usize, n: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let nt = train as f32;
    let sigmas: Vec<f32> = if flow.uniform {
        // FluxPipeline's σ = linspace(1, 1/n, n), cast to f32 first, then shifted in f32.
        np_linspace(1.0, 1.0 / n as f64, n)
            .into_iter()
            .map(|s| {
                let s = s as f32;
                match flow.mu {
                    Some(mu) => {
                        let e = mu.exp() as f32;
                        e / (e + (1.0f32 / s - 1.0f32))
                    }
                    None => (flow.shift as f32 * s) / (1.0f32 + (flow.shift - 1.0) as f32 * s),
                }
            })
            .collect()
    } else {
        // The training grid's ends (f32, shifted at construction unless dynamic), then a
        // linspace between them in f64, shifted (again) in f64.
        let end = |t: f32| {
            let s = t / nt;
            match flow.mu {
                Some(_) => s,
                None => (flow.shift as f32 * s) / (1.0f32 + (flow.shift - 1.0) as f32 * s),
            }
        };
        let (max, min) = (end(nt) as f64, end(1.0) as f64);
        np_linspace(max * train as f64, min * train as f64, n)
            .into_iter()
            .map(|t| {
                let s = t / train as f64;
                let s = match flow.mu {
                    Some(mu) => time_shift(mu, s),
                    None => shifted(flow.shift, s),
                };
                s as f32
            })
            .collect()
    };
    let ts = sigmas.iter().map(|&s| (s * nt) as f64).collect();
    let mut sigmas: Vec<f64> = sigmas.into_iter().map(f64::from).collect();
    sigmas.push(0.0);
    (ts, sigmas, 1.0)
}

/// DPM-Solver++ with `use_flow_sigmas`: σ = shift(1 − α) for α = linspace(1, 1/T, n + 1),
/// reversed, the last (0) dropped; timesteps ⌊σ·T⌋; a final σ 0. Dynamic shifting sets the
/// shift to e^μ.
pub(super) fn dpm_grid(flow: &Flow, train: usize, n: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let s = flow.effective_shift();
    let alphas = np_linspace(1.0, 1.0 / train as f64, n + 1);
    let sig: Vec<f64> = alphas
        .iter()
        .rev()
        .take(n)
        .map(|a| shifted(s, 1.0 - a))
        .collect();
    finish(sig, train)
}

/// UniPC with `use_flow_sigmas`: σ = linspace(1, 1/T, n + 1) without the last, shifted (or
/// time-shifted by μ), the first moved off 1 by 1e-6; timesteps ⌊σ·T⌋; a final σ 0.
pub(super) fn unipc_grid(flow: &Flow, train: usize, n: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let mut sig: Vec<f64> = np_linspace(1.0, 1.0 / train as f64, n + 1)
        .into_iter()
        .take(n)
        .map(|s| match flow.mu {
            Some(mu) => time_shift(mu, s),
            None => shifted(flow.shift, s),
        })
        .collect();
    if let Some(first) = sig.first_mut() {
        if (*first - 1.0).abs() < 1e-6 {
            *first -= 1e-6;
        }
    }
    finish(sig, train)
}

/// Integer timesteps (truncated, as diffusers casts them) and f32 σ with a final 0.
fn finish(sig: Vec<f64>, train: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let ts = sig.iter().map(|s| (s * train as f64).trunc()).collect();
    let mut sigmas: Vec<f64> = sig.into_iter().map(|s| s as f32 as f64).collect();
    sigmas.push(0.0);
    (ts, sigmas, 1.0)
}

/// (α, σ) of a flow σ: (1 − σ, σ).
pub(super) fn alpha_sigma(sigma: f64) -> (f64, f64) {
    (1.0 - sigma, sigma)
}

/// The Euler step x + (σ_next − σ)·v, with the difference taken in f32.
pub(super) fn step_euler(s: &Scheduler, a: &StepArgs) -> Result<Tensor> {
    let (sigma, next) = (s.sigmas[s.index] as f32, s.sigmas[s.index + 1] as f32);
    let dt = next - sigma;
    a.x + scale(a.out, dt as f64)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_keeps_the_ends_and_pushes_the_middle_up() {
        for s in [0.5, 1.0, 3.0] {
            assert_eq!(shifted(s, 1.0), 1.0);
            assert_eq!(shifted(s, 0.0), 0.0);
        }
        assert!(shifted(3.0, 0.5) > 0.5);
        // The exponential time shift is the static shift with s = e^μ.
        let mu = 0.8f64;
        assert!((time_shift(mu, 0.3) - shifted(mu.exp(), 0.3)).abs() < 1e-12);
    }

    #[test]
    fn mu_interpolates_between_the_base_and_max_shifts() {
        let d = DynamicShift::default();
        assert!((Flow::mu_for(256, d) - 0.5).abs() < 1e-12);
        assert!((Flow::mu_for(4096, d) - 1.15).abs() < 1e-12);
    }

    #[test]
    fn grids_fall_from_about_one_to_zero() {
        let f = Flow {
            shift: 3.0,
            ..Flow::default()
        };
        for (ts, sig, init) in [
            euler_grid(&f, 1000, 7),
            dpm_grid(&f, 1000, 7),
            unipc_grid(&f, 1000, 7),
        ] {
            assert_eq!((ts.len(), sig.len(), init), (7, 8, 1.0));
            assert!(sig.windows(2).all(|w| w[0] > w[1]), "{sig:?}");
            assert!(sig[0] <= 1.0 && sig[0] > 0.99 && sig[7] == 0.0);
        }
    }
}
