//! The LatentFlow diffusion-transformer plugin: thin glue over `latentflow-models::dit`.
//!
//! - `dit.load`: a DiT pipeline or transformer folder as a `Denoiser` of family `dit`;
//! - `dit.class_labels`: class ids or names as the conditioning a DiT takes (and the "no
//!   class" conditioning for classifier-free guidance);
//! - `dit.load_pixart`: PixArt-α/Σ as a `Denoiser` of family `t5` (T5 features and their mask);
//! - `dit.load_sd3`, `dit.load_sd3_text`, `dit.sd3_encode`: SD3/SD3.5 as a flow-matching
//!   `Denoiser` of family `sd3`, and its text conditioning;
//! - `dit.load_flux`, `dit.load_flux_text`, `dit.flux_encode`: FLUX.1 likewise (family `flux`).

mod denoiser;
mod flux;
mod labels;
mod pixart;
mod sd3;

use latentflow_plugin_api::sdk::prelude::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The family name of DiT denoisers and their conditioning.
pub(crate) const FAMILY: &str = "dit";

/// Any error as a node failure.
pub(crate) fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    let p = PluginDef::new("dit", env!("CARGO_PKG_VERSION"))
        .node(denoiser::node())
        .node(labels::node())
        .node(pixart::node());
    sd3::nodes()
        .into_iter()
        .chain(flux::nodes())
        .fold(p, PluginDef::node)
}

latentflow_plugin_api::export_plugin!(plugin());
