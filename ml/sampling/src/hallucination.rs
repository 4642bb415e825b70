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

