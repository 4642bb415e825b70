//! The canonical graph: variables and defaults resolved, embedded in outputs as provenance.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use crate::graph::plan::{PlanNode, Source};

/// The graph with variables and defaults resolved: valid graph YAML (JSON is YAML), used as
/// provenance in outputs so that `latentflow run image.png` re-runs it.
pub(super) fn canonical_json(nodes: &[PlanNode], seed: u64) -> Json {
    let mut sorted: Vec<&PlanNode> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out_nodes = Map::new();
    for n in sorted {
        let mut inputs = Map::new();
        for (k, s) in n.inputs.iter().enumerate() {
            let port = n.ty.desc.inputs[k].name.to_string();
            match s {
                Source::Node { node, port: p } => {
                    let src = &nodes[*node];
                    inputs.insert(
                        port,
                        Json::from(format!("{}.{}", src.id, src.ty.desc.outputs[*p].name)),
                    );
                }
                Source::Const(_) => {
                    // Constants are stored as graph inputs named after the consumer.
                    inputs.insert(port.clone(), Json::from(format!("${}__{}", n.id, port)));
                }
                Source::None => {}
            }
        }
        let mut node = Map::new();
        node.insert("type".into(), Json::from(n.ty.desc.type_id.to_string()));
        if !inputs.is_empty() {
            node.insert("inputs".into(), Json::Object(inputs));
        }
        if !n.params.is_empty() {
            let params: BTreeMap<&String, &Json> = n.params.iter().collect();
            node.insert(
                "params".into(),
                serde_json::to_value(params).unwrap_or_default(),
            );
        }
        out_nodes.insert(n.id.clone(), Json::Object(node));
    }
    let mut consts = Map::new();
    for n in nodes {
        for (k, s) in n.inputs.iter().enumerate() {
            if let Source::Const(v) = s {
                consts.insert(format!("{}__{}", n.id, n.ty.desc.inputs[k].name), v.clone());
            }
        }
    }
    let mut g = Map::new();
    g.insert("version".into(), Json::from(1));
    g.insert("seed".into(), Json::from(seed));
    if !consts.is_empty() {
        g.insert("inputs".into(), Json::Object(consts));
    }
    g.insert("nodes".into(), Json::Object(out_nodes));
    Json::Object(g)
}
