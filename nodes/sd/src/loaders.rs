//! The loader nodes: a whole model (`sd.load_checkpoint`) or one component (`sd.load_unet`,
//! `sd.load_clip`, `sd.load_vae`). Each tells the host, before anything runs, which family the
//! file holds, so a graph that feeds one family's conditioning to another's model is refused at
//! validation.

use std::path::{Path, PathBuf};

use latentflow_models::sd::loader::{self, Source};
use latentflow_models::sd::vae::Vae;
use latentflow_models::sd::Family as SdFamily;
use latentflow_models::Checked;
use latentflow_plugin_api::sdk::candle::{compute_device, compute_dtype, dtype_param};
use latentflow_plugin_api::sdk::denoiser::PredictionKind;
use latentflow_plugin_api::sdk::prelude::*;

use crate::clip_object::ClipObject;
use crate::convert::fail;
use crate::unet_denoiser::UNetDenoiser;
use crate::vae_object::VaeObject;

fn opt_path(p: &Params, name: &str) -> Result<Option<PathBuf>, NodeError> {
    let s = p.str(name)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn source(p: &Params) -> Result<Source, NodeError> {
    let path = PathBuf::from(p.str("path")?);
    let config = opt_path(p, "config")?;
    Source::detect(&path, config.as_deref()).map_err(fail)
}

/// The family of the model at the node's `path` (and `config`), from configs and headers only.
fn family(p: &Params) -> Result<SdFamily, NodeError> {
    let path = PathBuf::from(p.str("path")?);
    if !path.exists() {
        return Err(NodeError::invalid(format!(
            "{}: no such file or folder",
            path.display()
        )));
    }
    // A single file's family is in its key names (a config folder only sizes it).
    SdFamily::detect(&path).map_err(fail)
}

fn denoiser(f: SdFamily) -> PortType {
    PortType::handle_of("Denoiser", Family::named(f.name()))
}

fn clip(f: SdFamily) -> PortType {
    PortType::handle_of("Clip", Family::named(f.name()))
}

fn load_checkpoint(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    // Where the model computes; this build's models run on the CPU only.
    compute_device(p)?;
    let src = source(p)?;
    let unet = loader::unet(&src, compute_dtype(p)?).map_err(fail)?;
    let fam = unet.family;
    let text = loader::text_encoder(&src).map_err(fail)?;
    let vae = loader::vae(&src).map_err(fail)?;
    let name = src.describe();
    Ok(vec![
        Value::Object(UNetDenoiser::new(unet, name.clone(), prediction(p)?).handle()),
        Value::Object(ObjectHandle::new(ClipObject::new(text, name.clone(), fam))),
        Value::Object(ObjectHandle::new(VaeObject::new(vae, name))),
    ])
}

fn prediction(p: &Params) -> Result<Option<PredictionKind>, NodeError> {
    match p.str("prediction")? {
        "auto" => Ok(None),
        other => PredictionKind::parse(other).map(Some),
    }
}

fn load_unet(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    // Where the model computes; this build's models run on the CPU only.
    compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let over = prediction(p)?;
    let dtype = compute_dtype(p)?;
    let d = if path.is_dir() && !path.join("config.json").exists() {
        // A pipeline folder: its unet/ and scheduler config.
        loader::unet(&Source::detect(&path, None).map_err(fail)?, dtype).map_err(fail)?
    } else if path.is_dir() {
        let key = loader::unet_key(dtype).map_err(fail)?;
        loader::component(&path, key, |dir| {
            loader::unet_folder(dir, loader::PredictionType::Epsilon, dtype)
        })
        .map_err(fail)?
    } else {
        loader::unet(&source(p)?, dtype).map_err(fail)?
    };
    let obj = UNetDenoiser::new(d, path.display().to_string(), over);
    Ok(vec![Value::Object(obj.handle())])
}

fn load_clip(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    // Where the model computes; this build's models run on the CPU only.
    compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let text = if path.is_dir() && path.join("text_encoder").is_dir() {
        loader::text_encoder(&Source::detect(&path, None).map_err(fail)?).map_err(fail)?
    } else if path.is_dir() {
        let tok = opt_path(p, "tokenizer")?
            .unwrap_or_else(|| path.parent().unwrap_or(&path).join("tokenizer"));
        loader::component(&path, "text_encoder", |dir| {
            loader::load_text_encoder(dir, &tok)
        })
        .map_err(fail)?
    } else {
        loader::text_encoder(&source(p)?).map_err(fail)?
    };
    let fam = if path.is_file() {
        SdFamily::detect(&path).map_err(fail)?
    } else {
        clip_family(&text)
    };
    Ok(vec![Value::Object(ObjectHandle::new(ClipObject::new(
        text,
        path.display().to_string(),
        fam,
    )))])
}

/// A text encoder's family from its width: CLIP ViT-L (768) and small test models are SD 1.x,
/// OpenCLIP ViT-H (1024) SD 2.x.
fn clip_family(text: &latentflow_models::sd::TextEncoder) -> SdFamily {
    if text.model.config.hidden_size == 1024 {
        SdFamily::Sd2
    } else {
        SdFamily::Sd1
    }
}

fn clip_family_of(path: &Path) -> Result<SdFamily, NodeError> {
    let config = if path.join("text_encoder/config.json").is_file() {
        path.join("text_encoder/config.json")
    } else if path.join("config.json").is_file() {
        path.join("config.json")
    } else {
        return SdFamily::detect(path).map_err(fail);
    };
    let cfg = latentflow_models::sd::clip::ClipConfig::from_file(&config).map_err(fail)?;
    Ok(if cfg.hidden_size == 1024 {
        SdFamily::Sd2
    } else {
        SdFamily::Sd1
    })
}

fn load_vae(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    // Where the model computes; this build's models run on the CPU only.
    compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let vae = if path.is_dir() && path.join("unet/config.json").exists() {
        loader::vae(&Source::detect(&path, None).map_err(fail)?).map_err(fail)?
    } else if path.is_dir() && path.join("vae/config.json").exists() {
        // A pipeline without a UNet (DiT, PixArt): its vae/ alone.
        loader::component(&path.join("vae"), "vae", Vae::load).map_err(fail)?
    } else if path.is_dir() {
        loader::component(&path, "vae", Vae::load).map_err(fail)?
    } else {
        loader::vae(&source(p)?).map_err(fail)?
    };
    Ok(vec![Value::Object(ObjectHandle::new(VaeObject::new(
        vae,
        path.display().to_string(),
    )))])
}

fn model_path(d: NodeDef, what: &str) -> NodeDef {
    d.param(Param::path("path").doc(what)).param(
        Param::path("config")
            .default("")
            .doc("single-file checkpoints: a diffusers folder whose unet/, vae/, text_encoder/, text_encoder_2/ (and tokenizer/, tokenizer_2/, scheduler/) give the configs; empty: the built-in configs of the file's family (SD 1.5, SD 2.1 768 v-prediction, SDXL base 1.0 or refiner 1.0)"),
    )
}

/// The loader nodes.
pub fn nodes() -> Vec<NodeDef> {
    let f = || Family::var("F");
    vec![
        model_path(
            NodeDef::new("sd.load_checkpoint", load_checkpoint).param(Param::device())
                .doc("Loads a Stable Diffusion 1.x/2.x model: a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a single-file .safetensors checkpoint with the original key names (SD 1.x's CLIP, SD 2.x's OpenCLIP). Every architecture parameter comes from the config files; weights are read once, tensor by tensor, f32/f16/bf16 load; the UNet computes in `dtype` (text encoder and VAE in f32); a model used by several nodes is loaded once. The model's family (sd1, sd2) is read from its config or its keys before anything runs.")
                .param(Param::choice("prediction", &["auto", "epsilon", "v_prediction", "sample"]).default("auto").doc("auto: the pipeline's scheduler config; single files without one: v_prediction for SD 2.x (SD 2.1 768; use epsilon for the 512 base models), else epsilon"))
                .param(dtype_param())
                .output("model", PortType::handle_of("Denoiser", f()), "the UNet, as a denoiser for samplers")
                .output("clip", PortType::handle_of("Clip", f()), "tokenizer and text encoder")
                .output("vae", PortType::handle("Vae"), "the VAE")
                .infer(|p| {
                    let fam = family(p)?;
                    if fam == SdFamily::Sdxl {
                        return Err(NodeError::invalid(
                            "an SDXL model: its two text encoders and added conditioning need sd.load_unet, sd.load_vae and sd.load_sdxl_text, each given this path (see graphs/sdxl.yaml)",
                        ));
                    }
                    Ok(vec![denoiser(fam), clip(fam), PortType::handle("Vae")])
                }),
            "diffusers folder or single-file .safetensors checkpoint",
        ),
        model_path(
            NodeDef::new("sd.load_unet", load_unet).param(Param::device())
                .doc("Loads only a UNet: a diffusers unet/ folder, a pipeline folder, or a single-file checkpoint.")
                .output("model", PortType::handle_of("Denoiser", f()), "the UNet, as a denoiser")
                .param(Param::choice("prediction", &["auto", "epsilon", "v_prediction", "sample"]).default("auto").doc("auto: the pipeline's scheduler config; single files without one: v_prediction for SD 2.x, else epsilon"))
                .param(dtype_param())
                .infer(|p| Ok(vec![denoiser(family(p)?)])),
            "unet/ folder, pipeline folder or checkpoint",
        ),
        model_path(
            NodeDef::new("sd.load_clip", load_clip).param(Param::device())
                .doc("Loads only a CLIP text encoder and its tokenizer: a transformers text_encoder/ folder (tokenizer from ../tokenizer or `tokenizer`, else the built-in CLIP vocabulary), a pipeline folder, or a single-file checkpoint.")
                .output("clip", PortType::handle_of("Clip", f()), "tokenizer and text encoder")
                .param(Param::path("tokenizer").default("").doc("tokenizer/ folder (vocab.json + merges.txt, or tokenizer.json) or bpe_simple_vocab_16e6.txt.gz"))
                .infer(|p| {
                    let path = PathBuf::from(p.str("path")?);
                    Ok(vec![clip(clip_family_of(&path)?)])
                }),
            "text_encoder/ folder, pipeline folder or checkpoint",
        ),
        model_path(
            NodeDef::new("sd.load_vae", load_vae).param(Param::device())
                .doc("Loads only an AutoencoderKL: a diffusers vae/ folder, a pipeline folder (an SD one, or any with a vae/: DiT's), or a single-file checkpoint.")
                .output("vae", PortType::handle("Vae"), "the VAE"),
            "vae/ folder, pipeline folder or checkpoint",
        ),
    ]
}
