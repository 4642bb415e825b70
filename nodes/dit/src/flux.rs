//! FLUX.1: `dit.load_flux` (the transformer as a flow-matching `Denoiser` of family `flux`,
//! with the guidance scale of guidance-distilled models), `dit.load_flux_text` (CLIP-L and
//! T5) and `dit.flux_encode` (a prompt → T5 tokens and CLIP's pooled embedding, as the
//! pipeline's `encode_prompt`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use latentflow_models::flux::text::FluxText;
use latentflow_models::flux::{Flux, FluxConfig};
use latentflow_models::Checked;
use latentflow_plugin_api::sdk::candle::{
    compute_device, compute_dtype, dtype_param, from_candle, to_candle_f32,
};
use latentflow_plugin_api::sdk::denoiser::{
    denoiser_handle, DenoiseOutput, DenoiseRequest, Denoised, DenoiserImpl, DenoiserInfo,
    PredictionKind,
};
use latentflow_plugin_api::sdk::prelude::*;

use crate::text_object::TextObject;
use crate::{batched, encode_node, fail};

/// The conditioning family of Flux: T5 tokens (with CLIP's pooled embedding beside them).
const FLUX: &str = "flux";

struct FluxDenoiser {
    model: Arc<Flux>,
    guidance: Option<f64>,
    name: String,
}

impl DenoiserImpl for FluxDenoiser {
    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            family: FLUX.into(),
            prediction: PredictionKind::Flow,
            description: format!("Flux {}", self.name),
        }
    }

    fn denoise(&self, _: HostRef, req: DenoiseRequest) -> Denoised {
        let x = to_candle_f32(&req.x)?;
        let n = x.dims().first().copied().unwrap_or(0);
        let text = to_candle_f32(
            req.cond
                .require_context("Flux (dit.flux_encode's conditioning)")?,
        )?;
        let text = batched(text, n, "the T5 tokens")?;
        let pooled = req.cond.pooled.as_ref().ok_or_else(|| {
            NodeError::invalid(
                "Flux needs CLIP's pooled embedding: connect dit.flux_encode's pooled to the sampler's positive_pooled",
            )
        })?;
        let pooled = batched(to_candle_f32(pooled)?, n, "the pooled embedding")?;
        let v = self
            .model
            .forward(&x, req.timestep, &text, &pooled, self.guidance)
            .map_err(|e| NodeError::invalid(e.to_string()))?;
        Ok(DenoiseOutput::new(from_candle(&v)?, PredictionKind::Flow))
    }
}

/// The `config` parameter: a diffusers transformer folder or config.json for single files.
fn config_param(p: &Params) -> Result<Option<PathBuf>, NodeError> {
    let s = p.str("config")?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn config(path: &Path, given: Option<&Path>) -> Result<FluxConfig, NodeError> {
    if path.is_file() {
        let file = [path.to_path_buf()];
        let files = latentflow_weights::TensorFiles::open(&file).map_err(fail)?;
        if !latentflow_models::flux::bfl::is_bfl(&files) {
            return Err(NodeError::invalid(format!(
                "{}: not a FLUX.1 file in Black Forest Labs' layout (no img_in.weight)",
                path.display()
            )));
        }
        return match given {
            Some(c) if c.is_dir() => FluxConfig::from_file(&c.join("config.json")).map_err(fail),
            Some(c) => FluxConfig::from_file(c).map_err(fail),
            None => {
                let c = latentflow_models::flux::bfl::config(&files, path).map_err(fail)?;
                c.check().map_err(fail)?;
                Ok(c)
            }
        };
    }
    let dir = Flux::folder(path).map_err(fail)?;
    FluxConfig::from_file(&dir.join("config.json")).map_err(fail)
}

fn load(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let dtype = compute_dtype(p)?;
    let model = if path.is_file() {
        Flux::load_file(&path, config_param(p)?.as_deref(), dtype, &device)
    } else {
        Flux::load(&path, dtype, &device)
    }
    .map_err(fail)?;
    let guidance = model.config.guidance_embeds.then_some(p.f64("guidance")?);
    let d = FluxDenoiser {
        model: Arc::new(model),
        guidance,
        name: path.display().to_string(),
    };
    Ok(vec![Value::Object(denoiser_handle(d))])
}

fn load_text(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let text = FluxText::load(&path, compute_dtype(p)?, &device).map_err(fail)?;
    Ok(vec![Value::Object(ObjectHandle::new(TextObject(text)))])
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("dit.load_flux", load).param(Param::device())
            .doc("Loads a FLUX.1 transformer (diffusers' FluxTransformer2DModel: double- and single-stream blocks, 3-axis RoPE, the guidance embedding of dev): a pipeline folder (transformer/), a transformer folder, or BFL's original single file (fused q/k/v; mapped onto diffusers' names, fused matrices split without copying). A flow-matching Denoiser of family flux over the latent (N×C×H×W, H and W even: it packs 2×2 cells per token itself). Sample it with flow_euler, dynamic_shift and flow_grid flux, as FluxPipeline does, cfg 1 (dev takes `guidance` instead). Load the VAE with sd.load_vae on the same folder. The config is checked before anything runs.")
            .param(Param::path("path").doc("Flux pipeline folder, a transformer folder, or a single file in Black Forest Labs' layout (flux1-dev.safetensors)"))
            .param(Param::path("config").default("").doc("single files: a diffusers transformer folder (or its config.json) with the architecture; empty: read off the file (FLUX.1's rotary axes)"))
            .param(dtype_param())
            .param(Param::float("guidance").default(3.5).range(0.0, 100.0).doc("the embedded guidance scale (FLUX.1 dev; schnell has none and ignores it)"))
            .output("model", PortType::handle_of("Denoiser", Family::named(FLUX)), "Flux, as a flow-matching denoiser")
            .infer(|p| {
                config(Path::new(p.str("path")?), config_param(p)?.as_deref())?;
                Ok(vec![PortType::handle_of("Denoiser", Family::named(FLUX))])
            }),
        NodeDef::new("dit.load_flux_text", load_text).param(Param::device())
            .doc("Loads a Flux pipeline's text encoders: CLIP-L (text_encoder/, tokenizer/) for the pooled embedding and T5-XXL (text_encoder_2/, tokenizer_2/) for the tokens.")
            .param(Param::path("path").doc("Flux pipeline folder"))
            .param(crate::t5_dtype_param())
            .output("text", PortType::handle("FluxText"), "the text encoders")
            .infer(|p| {
                let path = PathBuf::from(p.str("path")?);
                for sub in ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"] {
                    if !path.join(sub).is_dir() {
                        return Err(NodeError::invalid(format!(
                            "{}: no {sub}/ (a Flux pipeline folder has text_encoder/, tokenizer/, text_encoder_2/ and tokenizer_2/)",
                            path.display()
                        )));
                    }
                }
                Ok(vec![PortType::handle("FluxText")])
            }),
        NodeDef::new("dit.flux_encode", encode_node)
            .doc("Prompt → Flux's conditioning, as FluxPipeline.encode_prompt builds it: T5's final hidden states padded to max_length tokens (unmasked) and CLIP-L's pooled output.")
            .input("text", PortType::handle("FluxText"), "from dit.load_flux_text")
            .param(Param::string("text").default("").doc("the prompt"))
            .param(Param::int("max_length").default(512).range(1.0, 4096.0).doc("T5 tokens (diffusers' max_sequence_length: 512 for dev, 256 for schnell)"))
            .output("conditioning", PortType::conditioning_of(Dim::Any, Family::named(FLUX)), "1×max_length×D T5 tokens")
            .output("pooled", PortType::tensor(Some(DType::F32), Dim::Fixed(2)), "1×P CLIP pooled embedding (to the sampler's positive_pooled)"),
    ]
}
