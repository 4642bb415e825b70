//! `sd.animatediff`: AnimateDiff's motion modules applied to an SD UNet denoiser (through any
//! wrappers around it), making a video denoiser.

use latentflow_plugin_api::sdk::prelude::*;

fn animatediff(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = p.str("path")?;
    let out =
        inputs
            .object("model")?
            .call(ctx.host(), "with_motion", vec![Value::Str(path.into())])?;
    match out.into_iter().next() {
        Some(v @ Value::Object(_)) => Ok(vec![v]),
        _ => Err(NodeError::failed("with_motion returned no model")),
    }
}

/// The node.
pub fn node() -> NodeDef {
    NodeDef::new("sd.animatediff", animatediff)
        .doc("AnimateDiff: a motion adapter's temporal transformers after every layer of the SD 1.x UNet's down and up blocks (and the mid block's, when the adapter has one), as diffusers' UNetMotionModel.from_unet2d; the model then denoises video latents N×C×F×H×W with samplers.sample_video, the text repeated per frame. Adapters: a diffusers MotionAdapter folder, or one .safetensors file in diffusers' names or the original checkpoints' (mm_sd_v15*: temporal_transformer, attention_blocks, pos_encoder.pe). At most motion_max_seq_length frames (24 for v1 adapters, 32 for v2/v3). Composes with LoRA (before or after), ControlNet (sd.apply_controlnet with one control image per frame, as AnimateDiffControlNetPipeline) and DeepCache; sample with linear betas.")
        .input("model", PortType::handle_of("Denoiser", Family::named("sd1")), "an SD 1.x UNet denoiser")
        .output("model", PortType::handle_of("Denoiser", Family::named("sd1")), "the video denoiser")
        .param(Param::path("path").doc("motion adapter folder or .safetensors file"))
}
