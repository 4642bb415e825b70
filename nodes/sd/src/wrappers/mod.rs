//! Denoiser wrappers: each changes what it is for (residuals, input channels, model options)
//! and forwards the rest, so they compose in any order.

mod controlnet;
mod deepcache;
mod inpaint;

use latentflow_plugin_api::sdk::prelude::*;

/// The wrapper nodes.
pub fn nodes() -> Vec<NodeDef> {
    let mut v = controlnet::nodes();
    v.push(deepcache::node());
    v.push(inpaint::node());
    v
}
