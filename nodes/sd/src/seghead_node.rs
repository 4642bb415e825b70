//! `sd.segment_head`: dense prediction from UNet features (VPD-style).

use candle_core::Device;
use latentflow_models::sd::seghead::SegHead;
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::fail;

fn segment_head(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let head = SegHead::load(std::path::Path::new(p.str("head")?)).map_err(fail)?;
    let args = vec![
        Value::Tensor(inputs.tensor("latent")?.clone()),
        Value::Float(p.f64("t")?),
        Value::Tensor(inputs.tensor("conditioning")?.clone()),
        Value::Bool(p.bool("attention")?),
    ];
    let feats = match inputs
        .object("model")?
        .call(ctx.host(), "features", args)?
        .into_iter()
        .next()
    {
        Some(Value::List(items)) => items
            .iter()
            .map(|v| {
                v.as_tensor()
                    .ok_or_else(|| NodeError::failed("features returned a non-tensor"))
                    .and_then(|t| to_candle(t, &Device::Cpu))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(NodeError::failed(
                "the model gave no features (an SD UNet denoiser is needed)",
            ))
        }
    };
    let logits = head.forward(&feats).map_err(fail)?;
    let (_, _, h, w) = logits.dims4().map_err(fail)?;
    let f = p.usize("upscale")?.max(1);
    let up = logits.upsample_nearest2d(h * f, w * f).map_err(fail)?;
    let labels = up
        .argmax(1)
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .map_err(fail)?;
    Ok(vec![
        Value::Tensor(from_candle(&logits)?),
        Value::Tensor(from_candle(&labels)?),
    ])
}

/// The node.
pub fn node() -> NodeDef {
    NodeDef::new("sd.segment_head", segment_head)
                .doc("Dense prediction from UNet features (VPD-style): runs the UNet once at timestep t on a clean latent (no noise), takes its multi-scale features (finest first: the last up block's output, coarser up blocks after their second layer) and applies a head in LatentFlow's `latentflow-seghead-v1` .safetensors format (per level a 1×1 lateral conv, nearest upsampling to the finest level, sum, ReLU, 1×1 classifier; see nodes/sd/src/seghead.rs). Outputs class logits and the argmax label map.")
                .input("model", PortType::handle_of("Denoiser", Family::var("F")), "an SD UNet denoiser")
                .input("latent", PortType::latent(Dim::Any), "a clean latent (sd.vae_encode)")
                .input("conditioning", PortType::conditioning_of(Dim::Any, Family::var("F")), "text conditioning (e.g. class names or an empty prompt)")
                .output("logits", PortType::tensor(Some(DType::F32), Dim::Fixed(4)), "N×K×h×w class logits at latent resolution")
                .output("labels", PortType::Mask, "N×H×W class index per pixel (as a float), upscaled")
                .param(Param::path("head").doc("latentflow-seghead-v1 .safetensors"))
                .param(Param::float("t").default(1.0).range(0.0, 1000.0).doc("timestep of the feature pass"))
                .param(Param::bool("attention").default(false).doc("append the down/up blocks' cross-attention maps (averaged over layers and heads, one channel per token) to the coarser levels, as VPD does; the head's laterals must expect them"))
                .param(Param::int("upscale").default(8).range(1.0, 64.0).doc("label map size over the latent's (the VAE factor)"))
}
