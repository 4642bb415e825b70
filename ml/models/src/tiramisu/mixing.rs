//! The per-pixel distributions over 256 bins (values −1 + 2i/255) and their weighted geometric
//! mean, as the authors compute them:
//!
//! - denoiser: a Gaussian around μ with the model's variance, truncated at 2σ, normalised;
//! - circuit: a Gaussian with the decoded samples' mean and (unbiased) variance, its density
//!   plus 1e-3, normalised;
//! - mixture: softmax(α·log p_DM + (1 − α)·log p_PC).
//!
//! Two cases make the authors' code divide by zero: a variance of 0, and a truncation window
//! narrower than the bins. Variances are floored at [`MIN_VARIANCE`], and a window holding no
//! bin puts all mass on the bin nearest μ.

/// Bins.
pub const BINS: usize = 256;
/// The floor under variances (the authors' value for known pixels).
pub const MIN_VARIANCE: f64 = 1e-8;
/// Added to the circuit's density before it is normalised.
pub const PC_FLOOR: f64 = 1e-3;

/// The value of bin `i`.
pub fn bin_value(i: usize) -> f64 {
    -1.0 + 2.0 * i as f64 / (BINS - 1) as f64
}

/// The authors' `truncated_gaussian_pdf`: the normal density, 0 beyond `k` standard deviations.
pub fn truncated_gaussian_pdf(x: f64, mean: f64, var: f64, k: f64) -> f64 {
    let sd = var.max(MIN_VARIANCE).sqrt();
    if (x - mean).abs() > k * sd {
        return 0.0;
    }
    let z = (x - mean) / sd;
    (-0.5 * z * z).exp() / (sd * (2.0 * std::f64::consts::PI).sqrt())
}

fn normalised(mut p: [f64; BINS], mean: f64) -> [f64; BINS] {
    let s: f64 = p.iter().sum();
    if s > 0.0 && s.is_finite() {
        p.iter_mut().for_each(|x| *x /= s);
    } else {
        p = [0.0; BINS];
        let i = (((mean + 1.0) * 0.5 * (BINS - 1) as f64).round()).clamp(0.0, (BINS - 1) as f64);
        p[i as usize] = 1.0;
    }
    p
}

/// The denoiser's distribution over the bins.
pub fn denoiser_bins(mean: f64, var: f64) -> [f64; BINS] {
    let mut p = [0.0; BINS];
    for (i, x) in p.iter_mut().enumerate() {
        *x = truncated_gaussian_pdf(bin_value(i), mean, var, 2.0);
    }
    normalised(p, mean)
}

/// The circuit's distribution over the bins; `floor` is added to the density ([`PC_FLOOR`]).
pub fn circuit_bins(mean: f64, var: f64, floor: f64) -> [f64; BINS] {
    let mut p = [0.0; BINS];
    for (i, x) in p.iter_mut().enumerate() {
        *x = truncated_gaussian_pdf(bin_value(i), mean, var, 100.0) + floor;
    }
    normalised(p, mean)
}

/// softmax(α·log p + (1 − α)·log q) over the bins.
pub fn geometric_mixture(p: &[f64; BINS], q: &[f64; BINS], alpha: f64) -> [f64; BINS] {
    let mut logits = [0.0; BINS];
    for i in 0..BINS {
        // 0·log 0 is 0: a weight of zero ignores that side entirely.
        let a = if alpha == 0.0 { 0.0 } else { alpha * p[i].ln() };
        let b = if alpha == 1.0 {
            0.0
        } else {
            (1.0 - alpha) * q[i].ln()
        };
        logits[i] = a + b;
    }
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut out = [0.0; BINS];
    if m == f64::NEG_INFINITY {
        return normalised(out, 0.0);
    }
    for i in 0..BINS {
        out[i] = (logits[i] - m).exp();
    }
    let s: f64 = out.iter().sum();
    out.iter_mut().for_each(|x| *x /= s);
    out
}

/// An index drawn from non-negative `weights` (normalised or not) with `u` uniform in [0, 1).
pub fn draw(weights: &[f64], u: f64) -> usize {
    let target = u * weights.iter().sum::<f64>();
    let mut acc = 0.0;
    for (i, x) in weights.iter().enumerate() {
        acc += x;
        if target < acc {
            return i;
        }
    }
    weights
        .iter()
        .rposition(|&x| x > 0.0)
        .unwrap_or(weights.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_one_is_the_denoisers_truncated_gaussian() {
        let p = denoiser_bins(0.1, 0.01);
        let q = circuit_bins(-0.5, 0.2, PC_FLOOR);
        let m = geometric_mixture(&p, &q, 1.0);
        for i in 0..BINS {
            assert!((m[i] - p[i]).abs() < 1e-12);
            // Outside 2σ (0.2 around 0.1) nothing.
            if (bin_value(i) - 0.1).abs() > 0.2 {
                assert_eq!(m[i], 0.0);
            }
        }
        assert!((m.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_geometric_mean_of_gaussians_is_the_precision_weighted_gaussian() {
        // Untruncated, unfloored: α/v₁ + (1−α)/v₂ is the mixture's precision and its mean is
        // the precision-weighted mean; compare bin by bin with that Gaussian on the same bins.
        let (m1, v1, m2, v2, alpha) = (0.1, 0.04, -0.2, 0.09, 0.7);
        let p = circuit_bins(m1, v1, 0.0);
        let q = circuit_bins(m2, v2, 0.0);
        let mix = geometric_mixture(&p, &q, alpha);
        let prec = alpha / v1 + (1.0 - alpha) / v2;
        let mean = (alpha * m1 / v1 + (1.0 - alpha) * m2 / v2) / prec;
        let closed = circuit_bins(mean, 1.0 / prec, 0.0);
        for i in 0..BINS {
            assert!((mix[i] - closed[i]).abs() < 1e-12, "bin {i}");
        }
    }

    #[test]
    fn degenerate_variances_and_windows_stay_finite() {
        let p = denoiser_bins(0.3, 0.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let nearest = ((0.3 + 1.0) * 0.5 * 255.0_f64).round() as usize;
        assert_eq!(p[nearest], 1.0);
        let q = circuit_bins(0.0, 0.0, PC_FLOOR);
        assert!(q.iter().all(|x| x.is_finite()));
        assert_eq!(draw(&p, 0.999), nearest);
    }
}
