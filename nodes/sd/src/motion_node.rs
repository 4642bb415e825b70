//! `sd.animatediff`: AnimateDiff's motion modules applied to an SD UNet denoiser (through any
//! wrappers around it), making a video denoiser.

use latentflow_models::animatediff::Weighting;
use latentflow_plugin_api::sdk::prelude::*;

fn animatediff(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = p.str("path")?;
    let args = vec![
        Value::Str(path.into()),
        Value::Int(p.int("context_length")?),
        Value::Int(p.int("context_stride")?),
        Value::Str(p.str("context_weighting")?.into()),
    ];
    let out = inputs
        .object("model")?
        .call(ctx.host(), "with_motion", args)?;
    match out.into_iter().next() {
        Some(v @ Value::Object(_)) => Ok(vec![v]),
        _ => Err(NodeError::failed("with_motion returned no model")),
    }
}

/// The node.
pub fn node() -> NodeDef {
    NodeDef::new("sd.animatediff", animatediff)
        .doc("AnimateDiff: a motion adapter's temporal transformers after every layer of the SD 1.x UNet's down and up blocks (and the mid block's, when the adapter has one), as diffusers' UNetMotionModel.from_unet2d; the model then denoises video latents N×C×F×H×W with samplers.sample_video, the text repeated per frame. Adapters: a diffusers MotionAdapter folder, or one .safetensors file in diffusers' names or the original checkpoints' (mm_sd_v15*: temporal_transformer, attention_blocks, pos_encoder.pe). At most motion_max_seq_length frames (24 for v1 adapters, 32 for v2/v3) unless context_length is set: then FreeNoise's windows (diffusers' enable_free_noise) — the motion modules' attentions run over windows of context_length frames every context_stride frames, the results blended per frame with the window weighting, so videos of any length sample (pair with video.free_noise for the noise). Composes with LoRA (before or after), ControlNet (sd.apply_controlnet with one control image per frame, as AnimateDiffControlNetPipeline) and DeepCache; sample with linear betas.")
        .input("model", PortType::handle_of("Denoiser", Family::named("sd1")), "an SD 1.x UNet denoiser")
        .output("model", PortType::handle_of("Denoiser", Family::named("sd1")), "the video denoiser")
        .param(Param::path("path").doc("motion adapter folder or .safetensors file"))
        .param(Param::int("context_length").default(0).range(0.0, 4096.0).doc("FreeNoise's frames per window (at most the adapter's motion_max_seq_length; 16 is usual); 0: no windows"))
        .param(Param::int("context_stride").default(4).range(1.0, 4096.0).doc("frames between the starts of windows (at most context_length)"))
        .param(Param::choice("context_weighting", &Weighting::NAMES).default("pyramid").doc("how overlapping windows blend: flat, pyramid (1 2 3 2 1) or delayed_reverse_sawtooth"))
}
