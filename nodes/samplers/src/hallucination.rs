//! The hallucination score of Aithal et al. (2024), "Understanding hallucinations in diffusion
//! models through mode interpolation": the variance of the predicted clean sample x̂0 over the
//! last steps of the reverse process. Samples that land between modes keep changing their x̂0
//! late; those at a mode do not. Plus a node that keeps the lowest-scoring samples of a batch.

use latentflow_plugin_api::sdk::prelude::*;

/// Per-sample score: the population variance over the last `last_k` steps of each element of
/// x̂0, averaged over the elements. `traj` is steps×N×rest, row-major.
pub fn trajectory_variance(
    traj: &[f32],
    shape: &[usize],
    last_k: usize,
) -> Result<Vec<f32>, NodeError> {
    if shape.len() < 2 {
        return Err(NodeError::invalid(format!(
            "the trajectory must be steps×N×…, got {shape:?}"
        )));
    }
    let (steps, n) = (shape[0], shape[1]);
    if steps == 0 {
        return Err(NodeError::invalid(
            "the trajectory is empty: turn on record_steps in samplers.sample",
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

fn score(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let t = inputs.tensor("x0")?;
    let shape = t.shape();
    let scores = trajectory_variance(&t.to_f32_vec()?, &shape, p.usize("last_k")?)?;
    let n = scores.len();
    Ok(vec![Value::Tensor(Tensor::from_vec(scores, &[n])?)])
}

/// Indices kept by `mode` (ascending score order is not imposed: batch order is kept).
pub fn keep(scores: &[f32], mode: &str, value: f64) -> Result<Vec<usize>, NodeError> {
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
        other => return Err(NodeError::invalid(format!("unknown mode `{other}`"))),
    };
    kept.sort_unstable();
    Ok(kept)
}

fn filter(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let samples = inputs.tensor("samples")?;
    let scores = inputs.tensor("scores")?.to_f32_vec()?;
    let shape = samples.shape();
    if shape.first() != Some(&scores.len()) {
        return Err(NodeError::invalid(format!(
            "{} scores for a batch of {:?}",
            scores.len(),
            shape.first()
        )));
    }
    let kept = keep(&scores, p.str("mode")?, p.f64("value")?)?;
    let data = samples.to_f32_vec()?;
    let per = data.len() / scores.len().max(1);
    let mut out = Vec::with_capacity(kept.len() * per);
    for &i in &kept {
        out.extend_from_slice(&data[i * per..(i + 1) * per]);
    }
    let mut new_shape = shape.clone();
    new_shape[0] = kept.len();
    let idx: Vec<f32> = kept.iter().map(|&i| i as f32).collect();
    let nk = idx.len();
    Ok(vec![
        Value::Tensor(Tensor::from_vec(out, &new_shape)?),
        Value::Tensor(Tensor::from_vec(idx, &[nk])?),
    ])
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("samplers.hallucination_score", score)
            .doc("Hallucination score (mode interpolation, Aithal et al. 2024): per sample, the population variance of the predicted x̂0 over the last `last_k` steps, averaged over elements. Feed it samplers.sample's `x0` output (record_steps on). Low = settled on a mode.")
            .input("x0", PortType::tensor(Some(DType::F32), Dim::Any), "steps×N×… predicted x̂0 trajectory")
            .output("scores", PortType::tensor(Some(DType::F32), Dim::Fixed(1)), "one score per sample")
            .param(Param::int("last_k").default(10).range(1.0, 10000.0).doc("window: the final k steps")),
        NodeDef::new("samplers.hallucination_filter", filter)
            .doc("Keeps the latents of a batch with low hallucination scores, in batch order: `threshold` keeps scores ≤ value, `keep_lowest` the value lowest, `quantile` the lowest fraction value.")
            .input("samples", PortType::latent(Dim::var("C")), "N×C×h×w latents")
            .input("scores", PortType::tensor(Some(DType::F32), Dim::Fixed(1)), "N scores")
            .output("samples", PortType::latent(Dim::var("C")), "the kept latents")
            .output("indices", PortType::tensor(Some(DType::F32), Dim::Fixed(1)), "their batch indices")
            .param(Param::choice("mode", &["threshold", "keep_lowest", "quantile"]).default("quantile"))
            .param(Param::float("value").default(0.9).doc("the threshold, the count, or the fraction")),
    ]
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
