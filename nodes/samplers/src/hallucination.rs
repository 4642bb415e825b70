//! The hallucination score nodes (Aithal et al. 2024, mode interpolation): the score of each
//! sample from its x̂0 trajectory, and a filter that keeps the settled samples.

use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::hallucination::{keep, trajectory_variance};

fn invalid(e: latentflow_sampling::SampleError) -> NodeError {
    NodeError::invalid(e.to_string())
}

fn score(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let t = inputs.tensor("x0")?;
    let shape = t.shape();
    let scores =
        trajectory_variance(&t.to_f32_vec()?, &shape, p.usize("last_k")?).map_err(invalid)?;
    let n = scores.len();
    Ok(vec![Value::Tensor(Tensor::from_vec(scores, &[n])?)])
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
    let kept = keep(&scores, p.str("mode")?, p.f64("value")?).map_err(invalid)?;
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
