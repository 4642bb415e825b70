//! When Tiramisu steers, and how much of the denoiser it keeps.

/// Steering is active at sampler timestep `t` (counting down from `total`) when
/// `t > total · frac` (the authors' `detach_pc_frac`; CelebA 0.9: the first tenth of the steps).
pub fn active(t: f64, total: f64, frac: f64) -> bool {
    t > total * frac
}

/// The weight α of the denoiser's distribution at timestep `t` of `total`:
/// `(end − start)·exp(−k·t/total) + start` (the authors' `mixing_prior_factor`).
pub fn mixing_factor(t: f64, total: f64, start: f64, end: f64, k: f64) -> f64 {
    (end - start) * (-k * t / total).exp() + start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_is_active_exactly_above_the_fraction() {
        // 250 respaced steps, frac 0.9: t = 249 … 226 steer (24 steps above 225), 225 does not.
        let steered: Vec<u32> = (0..250).filter(|&t| active(t as f64, 250.0, 0.9)).collect();
        assert_eq!(steered.first(), Some(&226));
        assert_eq!(steered.len(), 24);
        assert!(!active(225.0, 250.0, 0.9));
    }

    #[test]
    fn alpha_runs_from_start_to_end() {
        // CelebA: start 0.8, end 1.0, k 2.
        assert!((mixing_factor(0.0, 250.0, 0.8, 1.0, 2.0) - 1.0).abs() < 1e-12);
        let a = mixing_factor(250.0, 250.0, 0.8, 1.0, 2.0);
        assert!((a - (0.2 * (-2f64).exp() + 0.8)).abs() < 1e-12);
        let b = mixing_factor(125.0, 250.0, 0.8, 1.0, 2.0);
        assert!(a < b && b < 1.0, "monotone in t");
    }
}
