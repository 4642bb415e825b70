//! `llm.ella`: ELLA's Timestep-Aware Semantic Connector as a denoiser wrapper. The sampler's
//! conditioning is T5 features; at every step the wrapper turns them, for both guidance rows,
//! into the UNet's context at that step's timestep, as the authors' `ELLAProxyUNet` does.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor as CTensor};
use latentflow_models::ella::{Ella, EllaConfig};
use latentflow_plugin_api::sdk::candle::{compute_device, from_candle, to_candle};
use latentflow_plugin_api::sdk::denoiser::{
    wrapper_handle, DenoiseRequest, Denoised, DenoiserClient, WrapperImpl, DENOISER,
};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::guidance::batch_to;
use latentflow_weights::Header;

use crate::convert::{f32_tensor, fail};
use crate::encoders::T5_FAMILY;

/// How many of a row's tokens the connector sees.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Length {
    /// Every token given, padding included (the authors' fixed-length mode).
    Fixed,
    /// Each row its own tokens, as its mask says (the authors' flexible mode).
    Flexible,
}

#[derive(Clone)]
struct EllaWrapper {
    ella: Arc<Ella>,
    length: Length,
    /// ELLA + CLIP: the CLIP contexts appended after ELLA's tokens (positive, negative).
    clip: Option<(CTensor, Option<CTensor>)>,
}

impl EllaWrapper {
    /// The UNet's context for features B×L×D (mask B×L) at timestep `t`.
    fn context(
        &self,
        features: &CTensor,
        mask: Option<&CTensor>,
        t: f64,
        guided: bool,
    ) -> Result<CTensor, NodeError> {
        let (b, l, _) = features.dims3().map_err(fail)?;
        let lengths: Vec<usize> = match (self.length, mask) {
            (Length::Flexible, Some(m)) => {
                let rows: Vec<Vec<f32>> = m.to_vec2().map_err(fail)?;
                if rows.len() != b {
                    return Err(NodeError::invalid(format!(
                        "ELLA: a mask of {} rows for {b} rows of features",
                        rows.len()
                    )));
                }
                rows.iter()
                    .map(|r| r.iter().filter(|&&v| v != 0.0).count().max(1))
                    .collect()
            }
            _ => vec![l; b],
        };
        let context = if lengths.iter().all(|&n| n == l) {
            self.ella.forward(features, t).map_err(fail)?
        } else {
            let rows = lengths
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let row = features.narrow(0, i, 1)?.narrow(1, 0, n.min(l))?;
                    Ok(row)
                })
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(fail)?;
            let outs = rows
                .iter()
                .map(|r| self.ella.forward(r, t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?;
            CTensor::cat(&outs, 0).map_err(fail)?
        };
        let Some((pos, neg)) = &self.clip else {
            return Ok(context);
        };
        let clip = if guided {
            let neg = neg.as_ref().ok_or_else(|| {
                NodeError::invalid("ELLA + CLIP under guidance needs `clip_negative` too")
            })?;
            let half = b / 2;
            let n = batch_to(neg, half, "clip_negative").map_err(fail)?;
            let p = batch_to(pos, half, "clip_positive").map_err(fail)?;
            CTensor::cat(&[&n, &p], 0).map_err(fail)?
        } else {
            batch_to(pos, b, "clip_positive").map_err(fail)?
        };
        CTensor::cat(&[&context, &clip], 1).map_err(fail)
    }
}

impl WrapperImpl for EllaWrapper {
    fn name(&self) -> String {
        let c = &self.ella.config;
        format!(
            "ELLA ({} latents, {}{})",
            c.num_latents,
            match self.length {
                Length::Fixed => "fixed length",
                Length::Flexible => "flexible length",
            },
            if self.clip.is_some() { ", + CLIP" } else { "" }
        )
    }

    fn family(&self) -> Option<String> {
        Some(T5_FAMILY.into())
    }

    fn rewrapped(&self) -> Self {
        self.clone()
    }

    fn denoise(&self, inner: &DenoiserClient, host: HostRef, mut req: DenoiseRequest) -> Denoised {
        let features = f32_tensor(req.cond.require_context("ELLA")?)?;
        let mask = req.cond.mask.as_ref().map(f32_tensor).transpose()?;
        let guided = req.step.is_some_and(|s| s.guided());
        let context = self.context(&features, mask.as_ref(), req.timestep, guided)?;
        req.cond.context = Some(from_candle(&context)?);
        req.cond.mask = None;
        inner.denoise(host, req)
    }
}

fn clip_input(inputs: &Inputs, name: &str, width: usize) -> Result<Option<CTensor>, NodeError> {
    let Some(t) = inputs.opt_tensor(name)? else {
        return Ok(None);
    };
    let t = to_candle(t, &Device::Cpu)?;
    match t.dims() {
        [_, _, d] if *d == width => Ok(Some(t.to_dtype(candle_core::DType::F32).map_err(fail)?)),
        other => Err(NodeError::invalid(format!(
            "{name}: a CLIP conditioning N×L×{width} (the connector's width) is needed for ELLA + CLIP, got {other:?}"
        ))),
    }
}

fn ella(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let heads = p.usize("heads")?;
    let model = Ella::load(&path, heads, &device).map_err(fail)?;
    let width = model.config.width;
    let clip = match clip_input(inputs, "clip_positive", width)? {
        Some(pos) => Some((pos, clip_input(inputs, "clip_negative", width)?)),
        None if inputs.is_connected("clip_negative") => return Err(NodeError::invalid(
            "clip_negative without clip_positive: ELLA + CLIP needs the positive CLIP conditioning",
        )),
        None => None,
    };
    let length = match p.str("length")? {
        "flexible" => Length::Flexible,
        _ => Length::Fixed,
    };
    let inner = inputs.object("model")?.clone();
    let wrapper = EllaWrapper {
        ella: Arc::new(model),
        length,
        clip,
    };
    Ok(vec![Value::Object(wrapper_handle(
        ctx.host(),
        inner,
        wrapper,
    )?)])
}

/// The node.
pub fn node() -> NodeDef {
    let sd1 = || Family::named("sd1");
    NodeDef::new("llm.ella", ella).param(Param::device())
        .doc("ELLA (Hu et al. 2024): wraps an SD 1.x UNet so that it is conditioned on T5 features through the Timestep-Aware Semantic Connector. At every step the connector turns each guidance row's features into the UNet's context (64 tokens for the released model) at that step's timestep. Weights: the authors' ella-sd1.5-tsc-t5xl.safetensors keys. length fixed: every token the T5 node gave (use max_length 128, the training setting); flexible: each row only its own tokens (use max_length 0), as the authors' flexible mode. With clip_positive (and clip_negative under guidance) the CLIP context is appended after ELLA's tokens (ELLA + CLIP, for trigger words; not how ELLA was trained).")
        .input("model", PortType::handle_of(DENOISER, sd1()), "an SD 1.x UNet denoiser (bare or wrapped)")
        .optional_input("clip_positive", PortType::conditioning_of(Dim::Any, sd1()), "ELLA + CLIP: the positive CLIP conditioning")
        .optional_input("clip_negative", PortType::conditioning_of(Dim::Any, sd1()), "ELLA + CLIP: the negative CLIP conditioning")
        .param(Param::path("path").doc("the connector's .safetensors (e.g. ella-sd1.5-tsc-t5xl.safetensors)"))
        .param(Param::int("heads").default(8).range(1.0, 256.0).doc("attention heads of the connector (8 for the released model; checkpoints do not record it)"))
        .param(Param::choice("length", &["fixed", "flexible"]).default("fixed").doc("fixed: the connector sees every token given; flexible: each row only its unpadded tokens"))
        .output("model", PortType::handle_of(DENOISER, Family::named(T5_FAMILY)), "the UNet conditioned on T5 features through ELLA")
        .infer(|p| {
            let path = PathBuf::from(p.str("path")?);
            let header = Header::read(&path).map_err(fail)?;
            EllaConfig::from_header(&header, &path, p.usize("heads")?).map_err(fail)?;
            Ok(vec![PortType::handle_of(DENOISER, Family::named(T5_FAMILY))])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapper(clip: Option<(CTensor, Option<CTensor>)>, length: Length) -> EllaWrapper {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-ella.safetensors");
        EllaWrapper {
            ella: Arc::new(Ella::load(&path, 4, &Device::Cpu).unwrap()),
            length,
            clip,
        }
    }

    fn randn(shape: &[usize], seed: u64) -> CTensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        CTensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &CTensor, b: &CTensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn clip_tokens_follow_ellas_for_both_guidance_rows() {
        let (pos, neg) = (randn(&[1, 6, 32], 1), randn(&[1, 6, 32], 2));
        let w = wrapper(Some((pos.clone(), Some(neg.clone()))), Length::Fixed);
        let features = randn(&[2, 5, 32], 3);
        let out = w.context(&features, None, 500.0, true).unwrap();
        assert_eq!(out.dims(), &[2, 8 + 6, 32]);
        let ella = w.ella.forward(&features, 500.0).unwrap();
        assert!(max_diff(&out.narrow(1, 0, 8).unwrap(), &ella) < 1e-6);
        // [negative; positive]: the negative CLIP context goes with the first row.
        assert!(max_diff(&out.narrow(0, 0, 1).unwrap().narrow(1, 8, 6).unwrap(), &neg) < 1e-6);
        assert!(max_diff(&out.narrow(0, 1, 1).unwrap().narrow(1, 8, 6).unwrap(), &pos) < 1e-6);
        // Under guidance the negative CLIP context is required.
        let w = wrapper(Some((pos, None)), Length::Fixed);
        assert!(w.context(&features, None, 500.0, true).is_err());
        assert!(w
            .context(&features.narrow(0, 0, 1).unwrap(), None, 500.0, false)
            .is_ok());
    }

    #[test]
    fn flexible_rows_see_only_their_tokens() {
        let w = wrapper(None, Length::Flexible);
        let features = randn(&[2, 7, 32], 4);
        let mask = CTensor::new(
            &[[1f32, 1., 1., 0., 0., 0., 0.], [1., 1., 1., 1., 1., 1., 1.]],
            &Device::Cpu,
        )
        .unwrap();
        let out = w.context(&features, Some(&mask), 999.0, true).unwrap();
        let short = w
            .ella
            .forward(
                &features.narrow(0, 0, 1).unwrap().narrow(1, 0, 3).unwrap(),
                999.0,
            )
            .unwrap();
        assert!(max_diff(&out.narrow(0, 0, 1).unwrap(), &short) < 1e-6);
        // Fixed length sees the padding: another answer for the short row.
        let fixed = wrapper(None, Length::Fixed)
            .context(&features, Some(&mask), 999.0, true)
            .unwrap();
        assert!(max_diff(&fixed.narrow(0, 0, 1).unwrap(), &short) > 1e-4);
    }
}
