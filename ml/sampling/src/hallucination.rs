//! The hallucination score of Aithal et al. (2024), "Understanding hallucinations in diffusion
//! models through mode interpolation": the variance of the predicted clean sample x̂0 over the
//! last steps of the reverse process. Samples that land between modes keep changing their x̂0
//! late; those at a mode do not.

use crate::SampleError;

/// Per-sample score: the population variance over the last `last_k` steps of each element of
/// x̂0, averaged over the elements. `traj` is steps×N×rest, row-major.
pub fn trajectory_variance(
    traj: &[f32],
    shape: &[usize],
    last_k: usize,
) -> Result<Vec<f32>, SampleError> {
    if shape.len() < 2 {
        return Err(SampleError::Invalid(format!(
            "the trajectory must be steps×N×…, got {shape:?}"
        )));
    }
    let (steps, n) = (shape[0], shape[1]);
    if steps == 0 {
        return Err(SampleError::Invalid(
            "the trajectory is empty: turn on record_steps in samplers.sample".into(),
        ));
    }
    let per = shape[2..].iter().product::<usize>().max(1);
    let k = last_k.clamp(1, steps);
    let first = steps - k;
    let mut scores = vec![0f32; n];
    for (b, score) in scores.iter_mut().enumerate() {
        let mut total = 0f64;
        for d in 0..per {
            let at = |s: usize| traj[(s * n + b) * per + d] as f64;
            let mean = (first..steps).map(at).sum::<f64>() / k as f64;
            total += (first..steps).map(|s| (at(s) - mean).powi(2)).sum::<f64>() / k as f64;
        }
        *score = (total / per as f64) as f32;
    }
    Ok(scores)
}

/// Indices kept by `mode` (ascending score order is not imposed: batch order is kept).
pub fn keep(scores: &[f32], mode: &str, value: f64) -> Result<Vec<usize>, SampleError> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut kept: Vec<usize> = match mode {
        "threshold" => (0..scores.len())
            .filter(|&i| scores[i] <= value as f32)
            .collect(),
        "keep_lowest" => order.into_iter().take(value.max(0.0) as usize).collect(),
        "quantile" => {
            let count = (scores.len() as f64 * value.clamp(0.0, 1.0)).round() as usize;
            order.into_iter().take(count).collect()
        }
        other => return Err(SampleError::Invalid(format!("unknown mode `{other}`"))),
    };
    kept.sort_unstable();
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_trajectories_score_zero_and_scaling_scales_by_the_square() {
        let shape = [6, 2, 3];
        let constant: Vec<f32> = (0..36).map(|i| (i % 6) as f32).collect();
        // Element-wise constant over steps: the same 6 values at every step.
        let constant: Vec<f32> = (0..6).flat_map(|_| constant[..6].to_vec()).collect();
        assert_eq!(
            trajectory_variance(&constant, &shape, 4).unwrap(),
            vec![0.0, 0.0]
        );
        let traj: Vec<f32> = (0..36).map(|i| ((i * 7919) % 13) as f32 / 13.0).collect();
        let a = trajectory_variance(&traj, &shape, 4).unwrap();
        let scaled: Vec<f32> = traj.iter().map(|v| v * 3.0).collect();
        let b = trajectory_variance(&scaled, &shape, 4).unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((b - 9.0 * a).abs() <= 1e-5 * b.abs().max(1.0));
        }
    }

    #[test]
    fn filter_modes_keep_the_lowest_in_batch_order() {
        let s = [0.5, 0.1, 0.9, 0.3];
        assert_eq!(keep(&s, "threshold", 0.3).unwrap(), vec![1, 3]);
        assert_eq!(keep(&s, "keep_lowest", 3.0).unwrap(), vec![0, 1, 3]);
        assert_eq!(keep(&s, "quantile", 0.5).unwrap(), vec![1, 3]);
        assert!(keep(&s, "median", 0.5).is_err());
    }
}
