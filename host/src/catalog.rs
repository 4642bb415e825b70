//! The node catalog as JSON: what `latentflow nodes --json` prints and the server serves.

use serde_json::Value as Json;

use crate::plugins::Registry;

/// Every node type of the loaded plugins, with ports, params and docs.
pub fn nodes_json(registry: &Registry) -> Vec<Json> {
    registry
            .types()
            .map(|t| {
                let d = &t.desc;
                serde_json::json!({
                    "type": d.type_id.as_str(),
                    "version": d.version.as_str(),
                    "display_name": d.display_name.as_str(),
                    "doc": d.doc.as_str(),
                    "plugin": {"name": t.plugin.name, "version": t.plugin.version, "path": t.plugin.path},
                    "inputs": d.inputs.iter().map(|p| serde_json::json!({"name": p.name.as_str(), "type": p.ty.to_string(), "optional": p.optional, "doc": p.doc.as_str()})).collect::<Vec<_>>(),
                    "outputs": d.outputs.iter().map(|p| serde_json::json!({"name": p.name.as_str(), "type": p.ty.to_string(), "doc": p.doc.as_str()})).collect::<Vec<_>>(),
                    "params": d.params.iter().map(|p| serde_json::json!({
                        "name": p.name.as_str(), "kind": p.kind.name(),
                        "default": p.default.clone().and_then(|s| serde_json::from_str::<Json>(s.as_str()).ok()),
                        "min": p.min, "max": p.max,
                        "choices": p.choices.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                        "doc": p.doc.as_str(),
                    })).collect::<Vec<_>>(),
                    "deterministic": d.caps.deterministic,
                    "stateful": d.caps.stateful,
                    "side_effects": d.caps.side_effects,
                })
            })
            .collect()
}
