//! The LatentFlow LLM-connector plugin: thin glue between graph nodes and the text encoders
//! and adapters of `latentflow-models`.
//!
//! - `llm.load_t5` / `llm.t5_encode`: transformers' `T5EncoderModel` with its padding mask,
//!   fixed-length or flexible (unpadded) prompts; features and mask.
//! - `llm.load_llm` / `llm.llm_encode`: a layer's hidden states of a Llama, Mistral, Qwen2 or
//!   Qwen3 model, with the mask.
//! - `llm.ella`: ELLA's timestep-aware connector as a denoiser wrapper around an SD 1.x UNet:
//!   at every step it turns the T5 features of both guidance rows into the UNet's context.
//! - `llm.sur_adapter`: SUR-adapter on a CLIP conditioning.

mod convert;
mod ella_node;
mod encoders;
mod sur_node;

use latentflow_plugin_api::sdk::prelude::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    encoders::nodes()
        .into_iter()
        .chain([ella_node::node(), sur_node::node()])
        .fold(
            PluginDef::new("llm", env!("CARGO_PKG_VERSION")),
            PluginDef::node,
        )
}

latentflow_plugin_api::export_plugin!(plugin());
