//! The core LatentFlow plugin: images, masks, latents, tensor files and scalars.

mod image;
mod latent;
mod mask;
mod scalar;
mod tensor_io;
mod util;

use latentflow_plugin_api::sdk::PluginDef;

pub use latent::normal_noise;

/// Every node of the plugin.
pub fn plugin() -> PluginDef {
    [
        image::nodes(),
        latent::nodes(),
        mask::nodes(),
        tensor_io::nodes(),
        scalar::nodes(),
    ]
    .into_iter()
    .flatten()
    .fold(
        PluginDef::new("core", env!("CARGO_PKG_VERSION")),
        PluginDef::node,
    )
}

latentflow_plugin_api::export_plugin!(plugin());
