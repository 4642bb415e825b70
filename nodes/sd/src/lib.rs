//! The LatentFlow Stable Diffusion plugin (candle): CLIP tokenizer and text encoder, UNet and
//! AutoencoderKL, loaded from diffusers folders or single-file LDM checkpoints, as graph nodes.
//!
//! Models cross the plugin boundary as object handles: the UNet as a `Denoiser` (driven by the
//! samplers plugin), the text encoder as `Clip`, the VAE as `Vae`.

pub mod attention;
mod attention_nodes;
pub mod checkpoint;
pub mod clip;
mod control;
pub mod controlnet;
pub mod conv;
pub mod daam;
pub mod deepcache;
mod error;
mod inpaint;
pub mod lora;
pub mod models;
pub mod objects;
pub mod prompt;
pub mod resnet;
pub mod seghead;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

use std::path::{Path, PathBuf};

pub use error::SdError;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use latentflow_plugin_api::sdk::denoiser::denoiser_handle;
use latentflow_plugin_api::sdk::prelude::*;
use models::Source;
use objects::{ClipObject, UNetDenoiser, VaeObject};

fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

fn opt_path(p: &Params, name: &str) -> Result<Option<PathBuf>, NodeError> {
    let s = p.str(name)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn source(p: &Params) -> Result<Source, NodeError> {
    let path = PathBuf::from(p.str("path")?);
    let config = opt_path(p, "config")?;
    Source::detect(&path, config.as_deref()).map_err(fail)
}

fn load_checkpoint(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let src = source(p)?;
    let unet = models::unet(&src).map_err(fail)?;
    let text = models::text_encoder(&src).map_err(fail)?;
    let vae = models::vae(&src).map_err(fail)?;
    let name = models::describe(&src);
    Ok(vec![
        Value::Object(denoiser_handle(UNetDenoiser::new(unet, name.clone()))),
        Value::Object(ObjectHandle::new(ClipObject::new(text, name.clone()))),
        Value::Object(ObjectHandle::new(VaeObject::new(vae, name))),
    ])
}

fn is_dir_with(dir: &Path, file: &str) -> bool {
    dir.join(file).exists()
}

fn load_unet(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = PathBuf::from(p.str("path")?);
    let prediction = p.str("prediction")?.to_owned();
    let d = if path.is_dir() && !is_dir_with(&path, "config.json") {
        // A pipeline folder: its unet/ and scheduler config.
        models::unet(&Source::detect(&path, None).map_err(fail)?).map_err(fail)?
    } else if path.is_dir() {
        let pred = if prediction == "auto" {
            "epsilon".to_owned()
        } else {
            prediction.clone()
        };
        models::component(&path, "unet", |dir| models::unet_folder(dir, pred)).map_err(fail)?
    } else {
        models::unet(&source(p)?).map_err(fail)?
    };
    let mut obj = UNetDenoiser::new(d, path.display().to_string());
    if prediction != "auto" {
        obj.prediction_override = Some(prediction);
    }
    Ok(vec![Value::Object(denoiser_handle(obj))])
}

fn load_clip(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = PathBuf::from(p.str("path")?);
    let text = if path.is_dir() && path.join("text_encoder").is_dir() {
        models::text_encoder(&Source::detect(&path, None).map_err(fail)?).map_err(fail)?
    } else if path.is_dir() {
        let tok = opt_path(p, "tokenizer")?
            .unwrap_or_else(|| path.parent().unwrap_or(&path).join("tokenizer"));
        models::component(&path, "text_encoder", |dir| {
            models::load_text_encoder(dir, &tok)
        })
        .map_err(fail)?
    } else {
        models::text_encoder(&source(p)?).map_err(fail)?
    };
    Ok(vec![Value::Object(ObjectHandle::new(ClipObject::new(
        text,
        path.display().to_string(),
    )))])
}

fn load_vae(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = PathBuf::from(p.str("path")?);
    let vae = if path.is_dir() && path.join("vae/config.json").exists() {
        models::vae(&Source::detect(&path, None).map_err(fail)?).map_err(fail)?
    } else if path.is_dir() {
        models::component(&path, "vae", vae::Vae::load).map_err(fail)?
    } else {
        models::vae(&source(p)?).map_err(fail)?
    };
    Ok(vec![Value::Object(ObjectHandle::new(VaeObject::new(
        vae,
        path.display().to_string(),
    )))])
}

fn call(
    ctx: &Ctx,
    inputs: &Inputs,
    object: &str,
    method: &str,
    args: Vec<Value>,
    outputs: usize,
) -> Result<Vec<Value>, NodeError> {
    let out = inputs.object(object)?.call(ctx.host(), method, args)?;
    if out.len() < outputs {
        return Err(NodeError::failed(format!(
            "{object}.{method} returned {} values, expected {outputs}",
            out.len()
        )));
    }
    Ok(out.into_iter().take(outputs).collect())
}

fn text_encode(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let args = vec![
        Value::Str(p.str("text")?.into()),
        Value::Int(p.int("clip_skip")?),
        Value::Bool(p.bool("weighting")?),
    ];
    call(ctx, inputs, "clip", "encode", args, 2)
}

fn load_lora(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = p.str("path")?.to_owned();
    let mut out = Vec::with_capacity(2);
    let mut patched = 0;
    let mut tried = false;
    for (input, strength) in [
        ("model", p.f64("strength_model")?),
        ("clip", p.f64("strength_clip")?),
    ] {
        let handle = inputs.object(input)?;
        if strength == 0.0 {
            out.push(Value::Object(handle.clone()));
            continue;
        }
        tried = true;
        let res = handle.call(
            ctx.host(),
            "with_lora",
            vec![Value::Str(path.as_str().into()), Value::Float(strength)],
        )?;
        let mut it = res.into_iter();
        match it.next() {
            Some(v @ Value::Object(_)) => out.push(v),
            _ => {
                return Err(NodeError::failed(format!(
                    "{input}.with_lora returned no model"
                )))
            }
        }
        patched += it.next().and_then(|v| v.as_int()).unwrap_or(0);
        if let Some(Value::List(unmatched)) = it.next() {
            if !unmatched.is_empty() {
                let names: Vec<&str> = unmatched.iter().filter_map(Value::as_str).collect();
                ctx.warn(&format!(
                    "{input}: {} LoRA modules match nothing: {}",
                    names.len(),
                    names.join(", ")
                ));
            }
        }
    }
    if tried && patched == 0 {
        return Err(NodeError::invalid(format!(
            "{path}: no module of this LoRA matches the model"
        )));
    }
    Ok(out)
}

fn segment_head(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    use candle_core::Device;
    use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
    let head = seghead::SegHead::load(std::path::Path::new(p.str("head")?)).map_err(fail)?;
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

fn empty_latent(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let args = vec![
        Value::Int(p.int("width")?),
        Value::Int(p.int("height")?),
        Value::Int(p.int("batch")?),
    ];
    call(ctx, inputs, "vae", "empty_latent", args, 1)
}

fn tensor_arg(
    ctx: &Ctx,
    inputs: &Inputs,
    method: &str,
    arg: &str,
    extra: Vec<Value>,
) -> Result<Vec<Value>, NodeError> {
    let mut args = vec![Value::Tensor(inputs.tensor(arg)?.clone())];
    args.extend(extra);
    call(ctx, inputs, "vae", method, args, 1)
}

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    control::nodes()
        .into_iter()
        .chain(attention_nodes::nodes())
        .fold(base_plugin(), PluginDef::node)
}

fn base_plugin() -> PluginDef {
    let model_path = |d: NodeDef, what: &str| {
        d.param(Param::path("path").doc(what)).param(
            Param::path("config")
                .default("")
                .doc("single-file checkpoints: a diffusers folder whose unet/, vae/, text_encoder/ (and tokenizer/, scheduler/) give the configs; empty: SD 1.5's"),
        )
    };
    PluginDef::new("sd", env!("CARGO_PKG_VERSION"))
        .node(model_path(
            NodeDef::new("sd.load_checkpoint", load_checkpoint)
                .doc("Loads a Stable Diffusion 1.x/2.x model: a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a single-file .safetensors checkpoint with the original LDM key names. Every architecture parameter comes from the config files; weights are memory-mapped, f32/f16/bf16 load (computed in f32); a model used by several nodes is loaded once.")
                .output("model", PortType::handle("Denoiser", ""), "the UNet, as a denoiser for samplers")
                .output("clip", PortType::handle("Clip", ""), "tokenizer and text encoder")
                .output("vae", PortType::handle("Vae", ""), "the VAE"),
            "diffusers folder or single-file .safetensors checkpoint",
        ))
        .node(model_path(
            NodeDef::new("sd.load_unet", load_unet)
                .doc("Loads only a UNet: a diffusers unet/ folder, a pipeline folder, or a single-file checkpoint.")
                .output("model", PortType::handle("Denoiser", ""), "the UNet, as a denoiser")
                .param(Param::choice("prediction", &["auto", "epsilon", "v_prediction"]).default("auto").doc("auto: the pipeline's scheduler config, else epsilon")),
            "unet/ folder, pipeline folder or checkpoint",
        ))
        .node(model_path(
            NodeDef::new("sd.load_clip", load_clip)
                .doc("Loads only a CLIP text encoder and its tokenizer: a transformers text_encoder/ folder (tokenizer from ../tokenizer or `tokenizer`, else the built-in CLIP vocabulary), a pipeline folder, or a single-file checkpoint.")
                .output("clip", PortType::handle("Clip", ""), "tokenizer and text encoder")
                .param(Param::path("tokenizer").default("").doc("tokenizer/ folder (vocab.json + merges.txt) or bpe_simple_vocab_16e6.txt.gz")),
            "text_encoder/ folder, pipeline folder or checkpoint",
        ))
        .node(model_path(
            NodeDef::new("sd.load_vae", load_vae)
                .doc("Loads only an AutoencoderKL: a diffusers vae/ folder, a pipeline folder, or a single-file checkpoint.")
                .output("vae", PortType::handle("Vae", ""), "the VAE"),
            "vae/ folder, pipeline folder or checkpoint",
        ))
        .node(
            NodeDef::new("sd.text_encode", text_encode)
                .doc("Prompt → conditioning. Weighting syntax of A1111/ComfyUI: (word) ×1.1, [word] ÷1.1, (word:1.5), nested; \\( \\) are literal. Weighted tokens scale their embeddings and the mean is restored (A1111). Prompts longer than 75 tokens are split into 77-token windows whose encodings are concatenated.")
                .input("clip", PortType::handle("Clip", ""), "tokenizer and text encoder")
                .output("conditioning", PortType::conditioning(Dim::Any), "1×(77·windows)×D")
                .output("pooled", PortType::tensor(Some(DType::F32), Dim::Fixed(2)), "1×D pooled text embedding (of the first window)")
                .param(Param::string("text").default("").doc("the prompt"))
                .param(Param::int("clip_skip").default(0).range(0.0, 24.0).doc("final layers to skip: 0 = last layer, 1 = penultimate (A1111 \"Clip skip 2\", diffusers clip_skip=1)"))
                .param(Param::bool("weighting").default(true).doc("parse (word:1.2) weighting syntax; off: the text is tokenized literally, as diffusers does")),
        )
        .node(deepcache::node())
        .node(
            NodeDef::new("sd.segment_head", segment_head)
                .doc("Dense prediction from UNet features (VPD-style): runs the UNet once at timestep t on a clean latent (no noise), takes its multi-scale features (finest first: the last up block's output, coarser up blocks after their second layer) and applies a head in LatentFlow's `latentflow-seghead-v1` .safetensors format (per level a 1×1 lateral conv, nearest upsampling to the finest level, sum, ReLU, 1×1 classifier; see nodes/sd/src/seghead.rs). Outputs class logits and the argmax label map.")
                .input("model", PortType::handle("Denoiser", ""), "an SD UNet denoiser")
                .input("latent", PortType::latent(Dim::Any), "a clean latent (sd.vae_encode)")
                .input("conditioning", PortType::conditioning(Dim::Any), "text conditioning (e.g. class names or an empty prompt)")
                .output("logits", PortType::tensor(Some(DType::F32), Dim::Fixed(4)), "N×K×h×w class logits at latent resolution")
                .output("labels", PortType::Mask, "N×H×W class index per pixel (as a float), upscaled")
                .param(Param::path("head").doc("latentflow-seghead-v1 .safetensors"))
                .param(Param::float("t").default(1.0).range(0.0, 1000.0).doc("timestep of the feature pass"))
                .param(Param::bool("attention").default(false).doc("append the down/up blocks' cross-attention maps (averaged over layers and heads, one channel per token) to the coarser levels, as VPD does; the head's laterals must expect them"))
                .param(Param::int("upscale").default(8).range(1.0, 64.0).doc("label map size over the latent's (the VAE factor)")),
        )
        .node(
            NodeDef::new("sd.load_lora", load_lora)
                .doc("Applies a LoRA file to a UNet and a text encoder: kohya (lora_unet_*/lora_te_*, diffusers or LDM module names, LoCon convolutions) or diffusers/PEFT (lora_A/lora_B) .safetensors. W' = W + strength·(α/r)·B·A, α from the file (absent: α = r). The touched weights are copied; the rest stay shared with the base model. Chain nodes to stack LoRAs. Modules that match nothing are reported.")
                .input("model", PortType::handle("Denoiser", ""), "an SD UNet denoiser")
                .input("clip", PortType::handle("Clip", ""), "the text encoder")
                .output("model", PortType::handle("Denoiser", ""), "the LoRA'd UNet")
                .output("clip", PortType::handle("Clip", ""), "the LoRA'd text encoder")
                .param(Param::path("path").doc("LoRA .safetensors"))
                .param(Param::float("strength_model").default(1.0).range(-10.0, 10.0))
                .param(Param::float("strength_clip").default(1.0).range(-10.0, 10.0)),
        )
        .node(
            NodeDef::new("sd.inpaint_model", inpaint::inpaint_model)
                .doc("For inpainting models (UNet with 9 input channels, e.g. sd-v1-5-inpainting): wraps the model so every call gets the latent-resolution mask and the VAE latent of the masked image appended to its input, as diffusers does. Sample from an empty latent with the wrapped model and no sampler mask.")
                .input("model", PortType::handle("Denoiser", ""), "a 9-channel inpainting denoiser")
                .input("vae", PortType::handle("Vae", ""), "the VAE")
                .input("image", PortType::Image, "1×H×W×3 image")
                .input("mask", PortType::Mask, "1×H×W mask, 1 = repaint (binarized at 0.5)")
                .output("model", PortType::handle("Denoiser", ""), "the wrapped denoiser"),
        )
        .node(
            NodeDef::new("sd.empty_latent", empty_latent)
                .doc("A zero latent for an image size, with the VAE's latent channels and downscale factor.")
                .input("vae", PortType::handle("Vae", ""), "the VAE")
                .output("latent", PortType::latent(Dim::Any), "batch×C×(height/f)×(width/f)")
                .param(Param::int("width").default(512).range(8.0, 16384.0))
                .param(Param::int("height").default(512).range(8.0, 16384.0))
                .param(Param::int("batch").default(1).range(1.0, 64.0)),
        )
        .node(
            NodeDef::new("sd.vae_decode", |ctx, i, p| {
                tensor_arg(ctx, i, "decode", "latent", vec![Value::Int(p.int("tile")?)])
            })
            .doc("Latent → image: divides by the VAE's scaling factor, decodes, maps [-1, 1] to [0, 1]. Large latents can be decoded in overlapping tiles to bound memory.")
            .input("vae", PortType::handle("Vae", ""), "the VAE")
            .input("latent", PortType::latent(Dim::Any), "N×C×h×w latent")
            .output("image", PortType::Image, "N×H×W×3 image")
            .param(Param::int("tile").default(0).range(0.0, 4096.0).doc("tile size in latent pixels (0: decode whole; tiles overlap by a quarter and are blended)")),
        )
        .node(
            NodeDef::new("sd.vae_encode", |ctx, i, _| tensor_arg(ctx, i, "encode", "image", vec![]))
                .doc("Image → latent: the posterior mean (deterministic), times the scaling factor.")
                .input("vae", PortType::handle("Vae", ""), "the VAE")
                .input("image", PortType::Image, "N×H×W×3 image in [0, 1]")
                .output("latent", PortType::latent(Dim::Any), "N×C×h×w latent"),
        )
}

latentflow_plugin_api::export_plugin!(plugin());
