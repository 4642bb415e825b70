//! `llm.sur_adapter`: SUR-adapter on a CLIP conditioning, applied as the authors' pipeline
//! does: once, to the guidance batch `[negative; positive]`.

use std::path::PathBuf;

use candle_core::Tensor as CTensor;
use latentflow_models::sur::{SurAdapter, SurMode};
use latentflow_plugin_api::sdk::candle::{compute_device, from_candle};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_weights::Header;

use crate::convert::{f32_tensor, fail};

fn sur(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let model = SurAdapter::load(&path, &device).map_err(fail)?;
    let mode = match p.str("attend")? {
        "tokens" => SurMode::Tokens,
        _ => SurMode::Faithful,
    };
    let beta = p.f64("adapter_weight")?;
    let pos = f32_tensor(inputs.tensor("positive")?)?;
    let neg = inputs.opt_tensor("negative")?.map(f32_tensor).transpose()?;
    let (batch, split) = match &neg {
        Some(n) => {
            if n.dims() != pos.dims() {
                return Err(NodeError::invalid(format!(
                    "negative {:?} and positive {:?} conditionings differ: SUR-adapter takes them as one batch",
                    n.dims(),
                    pos.dims()
                )));
            }
            (
                CTensor::cat(&[n, &pos], 0).map_err(fail)?,
                n.dim(0).map_err(fail)?,
            )
        }
        None => (pos.clone(), 0),
    };
    let out = model.forward(&batch, beta, mode).map_err(fail)?;
    let rows = out.dim(0).map_err(fail)?;
    let positive = out.narrow(0, split, rows - split).map_err(fail)?;
    let mut values = vec![Value::Tensor(from_candle(&positive)?)];
    values.push(match split {
        0 => Value::None,
        n => Value::Tensor(from_candle(&out.narrow(0, 0, n).map_err(fail)?)?),
    });
    Ok(values)
}

/// The node.
pub fn node() -> NodeDef {
    let f = || Family::var("F");
    NodeDef::new("llm.sur_adapter", sur).param(Param::device())
        .doc("SUR-adapter (Zhong et al. 2023): a residual adapter on the CLIP context that carries an LLM's knowledge of simple prompts. out = β·fc(attention(encoder(x), x)) + (1 − β)·x, run once on [negative; positive] as the authors' pipeline does. attend faithful keeps the authors' quirk: their transformer encoder is not batch-first, so it attends across the batch (between the negative and positive prompts) at each token position; tokens attends across each prompt's tokens instead. Weights: the authors' Adapter state dict as .safetensors (tools/convert/sur_adapter.py converts their .pt).")
        .input("positive", PortType::conditioning_of(Dim::var("D"), f()), "the positive CLIP conditioning")
        .optional_input("negative", PortType::conditioning_of(Dim::var("D"), f()), "the negative CLIP conditioning")
        .param(Param::path("path").doc("the adapter's .safetensors"))
        .param(Param::float("adapter_weight").default(0.1).range(0.0, 1.0).doc("β, the authors' adapter_weight (their checkpoints' folder names say it: adapterw0.1)"))
        .param(Param::choice("attend", &["faithful", "tokens"]).default("faithful").doc("faithful: across the batch, as the authors' code; tokens: across each prompt's tokens"))
        .output("positive", PortType::conditioning_of(Dim::var("D"), f()), "the adapted positive conditioning")
        .output("negative", PortType::conditioning_of(Dim::var("D"), f()), "the adapted negative conditioning (none when no negative is given)")
        .infer(|p| {
            let path = PathBuf::from(p.str("path")?);
            let h = Header::read(&path).map_err(fail)?;
            if h.shape("fc.weight").is_none() || !h.has_prefix("transformer_encoder.layers.") {
                return Err(NodeError::invalid(format!(
                    "{}: not a SUR-adapter (no fc.weight / transformer_encoder.layers.*)",
                    path.display()
                )));
            }
            let f = Family::var("F");
            Ok(vec![
                PortType::conditioning_of(Dim::var("D"), f.clone()),
                PortType::conditioning_of(Dim::var("D"), f),
            ])
        })
}
