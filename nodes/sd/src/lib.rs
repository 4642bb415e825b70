//! The LatentFlow Stable Diffusion plugin: thin glue between graph nodes and the models of
//! `latentflow-models` (CLIP tokenizer and text encoder, UNet, AutoencoderKL, ControlNet),
//! loaded from diffusers folders or single-file LDM checkpoints.
//!
//! Models cross the plugin boundary as object handles: the UNet as a `Denoiser` (driven by the
//! samplers plugin through the typed protocol), the text encoder as `Clip`, the VAE as `Vae`.
//! Wrappers (ControlNet, DeepCache, inpainting input, attention capture) are denoisers around
//! denoisers and compose in any order.

mod attention_nodes;
mod clip_object;
mod convert;
mod loaders;
mod motion_node;
mod sdxl_nodes;
mod seghead_node;
mod text_nodes;
mod unet2d_node;
mod unet_denoiser;
mod vae_nodes;
mod vae_object;
mod wrappers;

use latentflow_plugin_api::sdk::prelude::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls `method` on the object at input `object` and keeps its first `outputs` values.
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

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    loaders::nodes()
        .into_iter()
        .chain(text_nodes::nodes())
        .chain(sdxl_nodes::nodes())
        .chain(vae_nodes::nodes())
        .chain(wrappers::nodes())
        .chain(attention_nodes::nodes())
        .chain([
            seghead_node::node(),
            unet2d_node::node(),
            motion_node::node(),
        ])
        .fold(
            PluginDef::new("sd", env!("CARGO_PKG_VERSION")),
            PluginDef::node,
        )
}

latentflow_plugin_api::export_plugin!(plugin());
