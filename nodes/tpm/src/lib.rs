//! The LatentFlow tractable-probabilistic-model plugin: thin glue over `latentflow-pc` (circuits)
//! and `latentflow-models::vq` (VQ models).
//!
//! - `tpm.load_vq`, `tpm.vq_encode` (codes and soft codes), `tpm.vq_decode`;
//! - `tpm.load_circuit`, `tpm.learn_circuit` (structure + EM on VQ codes), `tpm.save_circuit`,
//!   `tpm.circuit_marginals`;
//! - `tpm.circuit_inpaint`: the masked patches' codes from the circuit's conditionals given the
//!   known patches' soft codes, decoded;
//! - `tpm.tiramisu`: Tiramisu's steered x̂0 as a sampler hook (for samplers.copaint).

mod circuit_nodes;
mod convert;
mod objects;
mod tiramisu_node;
mod vq_nodes;

use latentflow_plugin_api::sdk::prelude::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    vq_nodes::nodes()
        .into_iter()
        .chain(circuit_nodes::nodes())
        .chain([tiramisu_node::node()])
        .fold(
            PluginDef::new("tpm", env!("CARGO_PKG_VERSION")),
            PluginDef::node,
        )
}

latentflow_plugin_api::export_plugin!(plugin());
