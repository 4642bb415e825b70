//! From the VQ encoder's soft codes to the code distribution each patch is sampled from.

/// The fraction of known pixels (mask 1) in each `patch`×`patch` patch of an `h`×`w` mask,
/// row-major over patches.
pub fn known_fractions(mask: &[f32], h: usize, w: usize, patch: usize) -> Vec<f64> {
    let (ph, pw) = (h / patch, w / patch);
    let mut out = vec![0.0; ph * pw];
    for y in 0..ph * patch {
        for x in 0..pw * patch {
            out[(y / patch) * pw + x / patch] += f64::from(mask[y * w + x]);
        }
    }
    let area = (patch * patch) as f64;
    out.iter_mut().for_each(|v| *v /= area);
    out
}

/// The temperature of each patch: τ_max + f·(τ_min − τ_max) (sharper where more is known).
pub fn temperature(known: f64, tau_min: f64, tau_max: f64) -> f64 {
    tau_max + known * (tau_min - tau_max)
}

/// softmax over `logits`, in place.
fn softmax(logits: &mut [f64]) {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for l in logits.iter_mut() {
        *l = (*l - m).exp();
        s += *l;
    }
    logits.iter_mut().for_each(|l| *l /= s);
}

/// `w·ln(x)` with 0·ln 0 = 0 (the authors' code would give NaN there).
fn weighted_ln(w: f64, x: f64) -> f64 {
    if w == 0.0 {
        0.0
    } else {
        w * x.ln()
    }
}

/// Soft evidence of one patch: softmax(log q / τ).
pub fn tempered(q: &[f64], tau: f64) -> Vec<f64> {
    let mut l: Vec<f64> = q.iter().map(|p| p.ln() / tau).collect();
    softmax(&mut l);
    l
}

/// The code distribution of one patch: softmax((1 − f)·log r + f·log e), then every code whose
/// encoder probability `q` is below the `top_k`-th largest set to 1e-8 (not renormalised; the
/// draw normalises).
pub fn patch_distribution(r: &[f64], e: &[f64], q: &[f64], known: f64, top_k: usize) -> Vec<f64> {
    let mut l: Vec<f64> = r
        .iter()
        .zip(e)
        .map(|(r, e)| weighted_ln(1.0 - known, *r) + weighted_ln(known, *e))
        .collect();
    softmax(&mut l);
    if top_k > 0 && top_k < q.len() {
        let mut sorted = q.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k - 1];
        for (p, &qv) in l.iter_mut().zip(q) {
            if qv < kth {
                *p = 1e-8;
            }
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_temperatures_and_top_k() {
        let mut mask = vec![0f32; 4 * 4];
        mask[0] = 1.0;
        mask[1] = 1.0; // two of the top-left 2×2 patch
        let f = known_fractions(&mask, 4, 4, 2);
        assert_eq!(f, vec![0.5, 0.0, 0.0, 0.0]);
        assert!((temperature(0.0, 0.01, 0.1) - 0.1).abs() < 1e-15);
        assert!((temperature(1.0, 0.01, 0.1) - 0.01).abs() < 1e-15);
        let q = [0.5, 0.3, 0.15, 0.05];
        let e = tempered(&q, 1.0);
        assert!(
            e.iter().zip(&q).all(|(a, b)| (a - b).abs() < 1e-12),
            "τ = 1 keeps q"
        );
        let sharp = tempered(&q, 0.1);
        assert!(sharp[0] > 0.99);
        // Nothing known: the circuit's marginal alone, then top-2 of q.
        let r = [0.1, 0.2, 0.3, 0.4];
        let p = patch_distribution(&r, &e, &q, 0.0, 2);
        assert!((p[0] - 0.1).abs() < 1e-12 && (p[1] - 0.2).abs() < 1e-12);
        assert_eq!((p[2], p[3]), (1e-8, 1e-8));
        // All known: the evidence alone, even where the circuit gives 0.
        let p = patch_distribution(&[0.0, 1.0, 0.0, 0.0], &e, &q, 1.0, 0);
        assert!(p.iter().zip(&e).all(|(a, b)| (a - b).abs() < 1e-12));
    }
}
