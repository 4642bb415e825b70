//! SD3 and SD3.5: `dit.load_sd3` (the MMDiT as a flow-matching `Denoiser` of family `sd3`),
//! `dit.load_sd3_text` (the pipeline's CLIP-L, CLIP-G and T5) and `dit.sd3_encode` (a prompt →
//! the joint text tokens and the pooled embedding, as the pipeline's `encode_prompt`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use latentflow_models::sd3::text::Sd3Text;
use latentflow_models::sd3::{Sd3, Sd3Config};
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
use crate::{batched, encode_node, fail, t5_dtype_param};

/// The conditioning family of SD3: joint CLIP+T5 tokens.
const SD3: &str = "sd3";

struct Sd3Denoiser {
    model: Arc<Sd3>,
    name: String,
}

impl DenoiserImpl for Sd3Denoiser {
    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            family: SD3.into(),
            prediction: PredictionKind::Flow,
            description: format!("SD3 {}", self.name),
        }
    }

    fn denoise(&self, _: HostRef, req: DenoiseRequest) -> Denoised {
        let x = to_candle_f32(&req.x)?;
        let n = x.dims().first().copied().unwrap_or(0);
        let text = to_candle_f32(
            req.cond
                .require_context("SD3 (dit.sd3_encode's conditioning)")?,
        )?;
        let text = batched(text, n, "the text tokens")?;
        let pooled = req.cond.pooled.as_ref().ok_or_else(|| {
            NodeError::invalid(
                "SD3 needs the pooled text embedding: connect dit.sd3_encode's pooled to the sampler's positive_pooled (and negative_pooled)",
            )
        })?;
        let pooled = batched(to_candle_f32(pooled)?, n, "the pooled embedding")?;
        let v = self
            .model
            .forward(&x, req.timestep, &text, &pooled)
            .map_err(|e| NodeError::invalid(e.to_string()))?;
        Ok(DenoiseOutput::new(from_candle(&v)?, PredictionKind::Flow))
    }
}

/// The `config` parameter: a diffusers transformer folder or config.json for single files.
fn config_param(p: &Params) -> Result<Option<PathBuf>, NodeError> {
    let s = p.str("config")?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn load(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let dtype = compute_dtype(p)?;
    let model = if path.is_file() {
        Sd3::load_file(&path, config_param(p)?.as_deref(), dtype, &device)
    } else {
        Sd3::load(&path, dtype, &device)
    }
    .map_err(fail)?;
    let d = Sd3Denoiser {
        model: Arc::new(model),
        name: path.display().to_string(),
    };
    Ok(vec![Value::Object(denoiser_handle(d))])
}

/// The transformer's config: a folder's, or a single file's from `given` (a transformer or
/// pipeline folder, or a config.json) or off its shapes.
fn config(path: &Path, given: Option<&Path>) -> Result<Sd3Config, NodeError> {
    if let (true, Some(c)) = (path.is_file(), given) {
        let file = match c.is_dir() {
            true if c.join("config.json").is_file() => c.join("config.json"),
            true => c.join("transformer/config.json"),
            false => c.to_path_buf(),
        };
        return Sd3Config::from_file(&file).map_err(fail);
    }
    if path.is_file() {
        let files = latentflow_weights::TensorFiles::open(&[path.to_path_buf()]).map_err(fail)?;
        let c = latentflow_models::sd3::sai::config(&files, path).map_err(fail)?;
        c.check().map_err(fail)?;
        return Ok(c);
    }
    let dir = Sd3::folder(path).map_err(fail)?;
    Sd3Config::from_file(&dir.join("config.json")).map_err(fail)
}

fn load_text(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let joint = config(&path, config_param(p)?.as_deref())?.joint_attention_dim;
    let t5 = match p.bool("t5")? {
        true => Some(compute_dtype(p)?),
        false => None,
    };
    let text = if path.is_file() {
        Sd3Text::load_file(&path, config_param(p)?.as_deref(), joint, t5, &device)
    } else {
        Sd3Text::load(&path, joint, t5, &device)
    }
    .map_err(fail)?;
    Ok(vec![Value::Object(ObjectHandle::new(TextObject(text)))])
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    let model = || PortType::handle_of("Denoiser", Family::named(SD3));
    vec![
        NodeDef::new("dit.load_sd3", load).param(Param::device())
            .doc("Loads an SD3 or SD3.5 transformer (diffusers' SD3Transformer2DModel: MMDiT, SD3.5's qk RMS norm and MMDiT-X dual attention): a pipeline folder (transformer/), a transformer folder, or Stability AI's original single file (fused q/k/v; mapped onto diffusers' names, fused matrices split without copying; dit.load_sd3_text and sd.load_vae read the text encoders and VAE a bundled file holds). A flow-matching Denoiser of family sd3: sample it with flow_euler (shift 3 for SD3), or dpmpp_2m / unipc, with dit.sd3_encode's conditioning and pooled embedding; any latent whose patch grid fits pos_embed_max_size. Load the VAE with sd.load_vae on the same folder. The config is checked before anything runs.")
            .param(Param::path("path").doc("SD3 pipeline folder, a transformer folder, or a single file in Stability AI's layout (sd3_medium.safetensors)"))
            .param(Param::path("config").default("").doc("single files: a diffusers transformer or pipeline folder (or a config.json) with the architecture; empty: read off the file"))
            .param(dtype_param())
            .output("model", model(), "SD3, as a flow-matching denoiser")
            .infer(|p| {
                let path = PathBuf::from(p.str("path")?);
                config(&path, config_param(p)?.as_deref())?;
                Ok(vec![PortType::handle_of("Denoiser", Family::named(SD3))])
            }),
        NodeDef::new("dit.load_sd3_text", load_text).param(Param::device())
            .doc("Loads an SD3 pipeline's text encoders: CLIP-L (text_encoder/, tokenizer/) and OpenCLIP bigG (text_encoder_2/, tokenizer_2/), both with projection, and T5-XXL (text_encoder_3/, tokenizer_3/) when present and `t5` is on; without T5 its tokens are zeros, as diffusers does. The transformer's config (transformer/) gives the joint width. Stability AI's bundled single files (sd3_medium_incl_clips_t5xxlfp8.safetensors: text_encoders.clip_l/clip_g/t5xxl.*) load too; CLIP-L's projection is then the identity, as in diffusers.")
            .param(Param::path("path").doc("SD3 pipeline folder, or a single file bundling the text encoders"))
            .param(Param::path("config").default("").doc("single files: a diffusers SD3 folder whose text_encoder*/ and tokenizer*/ size the encoders (T5's tokenizer comes only from there); empty: the published CLIP-L, bigG and T5-XXL configs and the built-in CLIP vocabulary"))
            .param(Param::bool("t5").default(true).doc("use T5 (off: 77 zero tokens in its place, and T5 is not loaded)"))
            .param(t5_dtype_param())
            .output("text", PortType::handle("Sd3Text"), "the text encoders")
            .infer(|p| {
                let path = PathBuf::from(p.str("path")?);
                config(&path, config_param(p)?.as_deref())?;
                if path.is_file() {
                    let header = latentflow_weights::Header::read(&path).map_err(fail)?;
                    if !header.has_prefix(latentflow_models::sd3::sai::CLIP_L_PREFIX) {
                        return Err(NodeError::invalid(format!(
                            "{}: this SD3 file holds no text encoders (text_encoders.clip_l.*); load them from a diffusers folder",
                            path.display()
                        )));
                    }
                    return Ok(vec![PortType::handle("Sd3Text")]);
                }
                for sub in ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"] {
                    if !path.join(sub).is_dir() {
                        return Err(NodeError::invalid(format!(
                            "{}: no {sub}/ (an SD3 pipeline folder has text_encoder/, tokenizer/, text_encoder_2/ and tokenizer_2/)",
                            path.display()
                        )));
                    }
                }
                Ok(vec![PortType::handle("Sd3Text")])
            }),
        NodeDef::new("dit.sd3_encode", encode_node)
            .doc("Prompt → SD3's conditioning, as StableDiffusion3Pipeline.encode_prompt builds it: CLIP-L's and CLIP-G's penultimate states (77 tokens) side by side, zero-padded to T5's width, then T5's max_length tokens; and the two projected pooled embeddings side by side. Encode the negative the same way (an empty prompt, as diffusers does).")
            .input("text", PortType::handle("Sd3Text"), "from dit.load_sd3_text")
            .param(Param::string("text").default("").doc("the prompt"))
            .param(Param::int("max_length").default(256).range(1.0, 4096.0).doc("T5 tokens (diffusers' max_sequence_length)"))
            .output("conditioning", PortType::conditioning_of(Dim::Any, Family::named(SD3)), "1×(77+max_length)×joint text tokens")
            .output("pooled", PortType::tensor(Some(DType::F32), Dim::Fixed(2)), "1×P pooled embedding (to the sampler's positive_pooled / negative_pooled)"),
    ]
}
