//! Linear multistep (diffusers `scheduling_lms_discrete.py`, order 4) on the Euler σ grid.

use candle_core::{Result, Tensor};

use super::ops::{lincomb, scale};
use super::{Prediction, Scheduler, StepArgs};

const ORDER: usize = 4;

/// 4-point Gauss–Legendre: exact for the degree ≤ 3 polynomials LMS integrates.
const GAUSS: [(f64, f64); 4] = [
    (-0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
    (-0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
    (0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
    (0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
];

/// ∫_{σ_t}^{σ_{t+1}} of the Lagrange basis polynomial of point `current` over the last `order`
/// σ points ending at step `t`.
fn coefficient(sigmas: &[f64], order: usize, t: usize, current: usize) -> f64 {
    let basis = |tau: f64| {
        (0..order)
            .filter(|&k| k != current)
            .map(|k| (tau - sigmas[t - k]) / (sigmas[t - current] - sigmas[t - k]))
            .product::<f64>()
    };
    let (a, b) = (sigmas[t], sigmas[t + 1]);
    let (half, mid) = ((b - a) / 2.0, (a + b) / 2.0);
    half * GAUSS
        .iter()
        .map(|(x, w)| w * basis(half * x + mid))
        .sum::<f64>()
}

pub(super) fn step(s: &mut Scheduler, a: &StepArgs) -> Result<Tensor> {
    let (pred, out, x) = (a.pred, a.out, a.x);
    let i = s.index;
    let sigma = s.sigmas[i];
    let inv = (1.0 / sigma) as f32 as f64;
    // The derivative (x − x̂0)/σ.
    let derivative = match pred {
        Prediction::Epsilon | Prediction::Flow => out.clone(),
        Prediction::V => {
            let c_out = (-sigma / (sigma * sigma + 1.0).sqrt()) as f32;
            let c_in = (1.0 / (sigma * sigma + 1.0)) as f32;
            scale(&(x - lincomb(c_out as f64, out, c_in as f64, x)?)?, inv)?
        }
        Prediction::Sample => scale(&(x - out)?, inv)?,
    };
    s.history.push(derivative);
    if s.history.len() > ORDER {
        s.history.remove(0);
    }
    let order = (i + 1).min(ORDER);
    let mut next = x.clone();
    for (k, d) in s.history.iter().rev().take(order).enumerate() {
        let c = coefficient(&s.sigmas, order, i, k) as f32;
        next = (next + scale(d, c as f64)?)?;
    }
    Ok(next)
}
