//! `dit.load_pixart`: PixArt-α/Σ as a `Denoiser` of family `t5`: it takes T5 features and
//! their token mask (llm.t5_encode's outputs, through samplers.sample's positive/negative and
//! their masks). Learned sigma comes back as `learned_range`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use latentflow_models::pixart::{PixArt, PixArtConfig, SizeCondition};
use latentflow_models::Checked;
use latentflow_plugin_api::sdk::candle::{
    compute_device, compute_dtype, dtype_param, from_candle, to_candle_f32,
};
use latentflow_plugin_api::sdk::denoiser::{
    denoiser_handle, DenoiseOutput, DenoiseRequest, Denoised, DenoiserImpl, DenoiserInfo,
    PredictionKind,
};
use latentflow_plugin_api::sdk::prelude::*;

use crate::{batched, fail};

/// The conditioning family PixArt takes: T5 features.
const T5: &str = "t5";

struct PixArtDenoiser {
    model: Arc<PixArt>,
    vae_scale: usize,
    name: String,
}

impl DenoiserImpl for PixArtDenoiser {
    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            family: T5.into(),
            prediction: PredictionKind::Epsilon,
            description: format!("PixArt {}", self.name),
        }
    }

    fn denoise(&self, _: HostRef, req: DenoiseRequest) -> Denoised {
        let x = to_candle_f32(&req.x)?;
        let n = x.dims().first().copied().unwrap_or(0);
        let text = to_candle_f32(req.cond.require_context("PixArt (T5 features)")?)?;
        let text = batched(text, n, "T5 features")?;
        let mask = match &req.cond.mask {
            Some(m) => Some(batched(to_candle_f32(m)?, n, "the token mask")?),
            None => None,
        };
        let size = if self.model.config.additional_conditions() {
            let (h, w) = match x.dims() {
                [_, _, h, w] => ((h * self.vae_scale) as f64, (w * self.vae_scale) as f64),
                d => {
                    return Err(NodeError::invalid(format!(
                        "PixArt takes N×C×H×W latents, got {d:?}"
                    )))
                }
            };
            Some(SizeCondition {
                height: h,
                width: w,
                aspect_ratio: h / w,
            })
        } else {
            None
        };
        let out = self
            .model
            .forward(&x, req.timestep, &text, mask.as_ref(), size)
            .map_err(|e| NodeError::invalid(e.to_string()))?;
        let c = self.model.config.in_channels;
        let eps = out.narrow(1, 0, c).map_err(fail)?;
        let mut o = DenoiseOutput::new(from_candle(&eps)?, PredictionKind::Epsilon);
        if self.model.config.learns_sigma() {
            o.learned_range = Some(from_candle(&out.narrow(1, c, c).map_err(fail)?)?);
        }
        Ok(o)
    }
}

fn load(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let model = PixArt::load(&path, compute_dtype(p)?, &device).map_err(fail)?;
    let d = PixArtDenoiser {
        model: Arc::new(model),
        vae_scale: p.usize("vae_scale")?,
        name: path.display().to_string(),
    };
    Ok(vec![Value::Object(denoiser_handle(d))])
}

fn check(p: &Params) -> Result<Vec<PortType>, NodeError> {
    let dir = PixArt::folder(Path::new(p.str("path")?)).map_err(fail)?;
    PixArtConfig::from_file(&dir.join("config.json")).map_err(fail)?;
    Ok(vec![PortType::handle_of("Denoiser", Family::named(T5))])
}

/// The node.
pub fn node() -> NodeDef {
    NodeDef::new("dit.load_pixart", load).param(Param::device())
        .doc("Loads a PixArt-α or PixArt-Σ transformer (diffusers' PixArtTransformer2DModel, or Transformer2DModel with norm_type ada_norm_single): a pipeline folder (transformer/, vae/, scheduler/) or a transformer folder. A Denoiser of family t5: condition it with llm.t5_encode's features and mask (max_length 120 for PixArt-α, 300 for Σ; an empty negative prompt, as diffusers encodes it), any latent size that splits into patches, the resolution and aspect-ratio conditions of PixArt-α 1024 from the latent's size × vae_scale, learned sigma returned as the learned-range variance. Load the VAE with sd.load_vae on the same folder (SD's for α, SDXL's for Σ). The config is checked before anything runs.")
        .param(Param::path("path").doc("PixArt pipeline folder, or a transformer folder"))
        .param(dtype_param())
        .param(Param::int("vae_scale").default(8).range(1.0, 64.0).doc("pixels per latent cell, for the size conditions"))
        .output("model", PortType::handle_of("Denoiser", Family::named(T5)), "PixArt, as a denoiser")
        .infer(check)
}
