//! Devices: a node that runs only on the GPU device service is refused before anything runs when
//! this machine has no adapter, with what was found.

use latentflow_plugin_api::Capabilities;

use super::{Draft, Validator};

impl Validator<'_> {
    pub(super) fn devices(&mut self, draft: &Draft<'_>) {
        let Some(ty) = &draft.ty else { return };
        let devices = ty.desc.caps.devices;
        if devices & Capabilities::WGPU == 0 || devices & Capabilities::CPU != 0 {
            return;
        }
        // One report per graph: every GPU node has the same cause.
        if self.diags.iter().any(|d| d.code == "no-device") {
            return;
        }
        if let Err(reason) = crate::devices::gpu() {
            let d = self.err(
                "no-device",
                draft.pos,
                format!(
                    "node type `{}` needs the GPU device service: {reason}",
                    ty.desc.type_id
                ),
            );
            d.node = Some(draft.id.clone());
            d.hint = Some(
                "pick another adapter with LATENTFLOW_WGPU_ADAPTER, or run this graph where a Vulkan driver is installed".into(),
            );
        }
    }
}
