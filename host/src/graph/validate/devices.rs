//! Devices, checked before anything runs: a node that runs only on the GPU device service needs
//! an adapter, and a loader's `device` (its own, or the graph's `device:`) must parse, be one the
//! node runs on, and exist on this machine. Errors list the devices found.

use latentflow_plugin_api::device::DEVICE_PARAM;
use latentflow_plugin_api::{Capabilities, DeviceSpec};
use serde_json::Value as Json;

use super::{Draft, Validator};
use crate::graph::diag::Pos;
use crate::graph::file::Loc;

impl Validator<'_> {
    /// The graph's `device:`, when it names a device (reported once here when it does not).
    pub(super) fn graph_device(&mut self, device: Option<&Loc<String>>) -> Option<(String, Pos)> {
        let d = device?;
        match d.value.parse::<DeviceSpec>() {
            Ok(spec) => Some((spec.to_string(), d.pos)),
            Err(e) => {
                self.err("param-value", d.pos, e).hint = Some(
                    "the graph's `device:` is the default of every model loader's `device`".into(),
                );
                None
            }
        }
    }

    pub(super) fn devices(&mut self, draft: &Draft<'_>) {
        let Some(ty) = &draft.ty else { return };
        let devices = ty.desc.caps.devices;
        if devices & Capabilities::WGPU != 0 && devices & Capabilities::CPU == 0 {
            self.gpu_only(draft, &ty.desc.type_id);
        }
        let declares = ty
            .desc
            .params
            .iter()
            .any(|p| p.name.as_str() == DEVICE_PARAM);
        let Some(Json::String(name)) = draft.params.get(DEVICE_PARAM).filter(|_| declares) else {
            return;
        };
        let pos = self.device_pos(draft);
        let type_id = ty.desc.type_id.to_string();
        let spec: DeviceSpec = match name.parse() {
            Ok(s) => s,
            Err(e) => {
                let d = self.err("param-value", pos, e);
                d.node = Some(draft.id.clone());
                return;
            }
        };
        if devices & spec.capability() == 0 {
            let d = self.err(
                "unsupported-device",
                pos,
                format!(
                    "`{type_id}` runs on {}, not on {spec}",
                    DeviceSpec::kinds(devices)
                ),
            );
            d.node = Some(draft.id.clone());
            d.hint = Some(match spec {
                DeviceSpec::Cuda(_) => {
                    "set `device: cpu` on this node; CUDA needs the plugin built with its `cuda` feature".into()
                }
                _ => "set `device: cpu` on this node".into(),
            });
            return;
        }
        if let Err(why) = crate::devices::check(spec) {
            let d = self.err(
                "no-device",
                pos,
                format!("device `{spec}` is not available here: {why}"),
            );
            d.node = Some(draft.id.clone());
            d.hint = Some(format!("devices found: {}", crate::devices::found()));
        }
    }

    /// Where the node's device was written: its own parameter, else the graph's `device:`.
    fn device_pos(&self, draft: &Draft<'_>) -> Pos {
        draft
            .def
            .params
            .0
            .iter()
            .find(|(k, _)| k.value == DEVICE_PARAM)
            .map(|(_, v)| v.pos)
            .or(self.default_device.as_ref().map(|(_, p)| *p))
            .unwrap_or(draft.pos)
    }

    fn gpu_only(&mut self, draft: &Draft<'_>, type_id: &str) {
        // One report per graph: every GPU node has the same cause.
        if self
            .diags
            .iter()
            .any(|d| d.code == "no-device" && d.message.contains("needs the GPU device service"))
        {
            return;
        }
        if let Err(reason) = crate::devices::gpu() {
            let d = self.err(
                "no-device",
                draft.pos,
                format!("node type `{type_id}` needs the GPU device service: {reason}"),
            );
            d.node = Some(draft.id.clone());
            d.hint = Some(
                "pick another adapter with LATENTFLOW_WGPU_ADAPTER, or run this graph where a Vulkan driver is installed".into(),
            );
        }
    }
}
