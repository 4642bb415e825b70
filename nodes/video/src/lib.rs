//! The LatentFlow video plugin: thin glue over `latentflow-media` (video files) and
//! `latentflow-sampling` (the DCT, FreeInit's filters, the temporal low-pass).
//!
//! - `video.load`, `video.save`: GIF, APNG and animated WebP (and frame folders, read), written
//!   atomically with the graph embedded;
//! - `video.from_frames`, `video.to_frames`: a `Video` ⇄ an image batch and its frame rate;
//! - `video.latent_from_batch`, `video.latent_to_batch`, `video.noise`: `VideoLatent`s
//!   (N×C×F×H×W) from and to frame-wise latents, and seeded noise;
//! - `video.dct_init` (Cinemo), `video.free_init_mix` (FreeInit's re-initialisation),
//!   `video.temporal_lowpass`.

mod files;
mod frames;
mod latents;
mod smoothing;

use latentflow_plugin_api::sdk::prelude::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Any error as a node failure.
pub(crate) fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    files::nodes()
        .into_iter()
        .chain(frames::nodes())
        .chain(latents::nodes())
        .chain(smoothing::nodes())
        .fold(
            PluginDef::new("video", env!("CARGO_PKG_VERSION")),
            PluginDef::node,
        )
}

latentflow_plugin_api::export_plugin!(plugin());
