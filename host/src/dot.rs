//! Graphviz export of a plan.

use std::fmt::Write;

use crate::graph::{Plan, Source};

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The plan as a Graphviz `digraph`: one box per node, edges labelled with ports and types.
pub fn to_dot(plan: &Plan) -> String {
    let mut out = String::from("digraph latentflow {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n");
    for (i, n) in plan.nodes.iter().enumerate() {
        let shape = if plan.outputs.contains(&i) {
            ", penwidth=2"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\\n{}\"{shape}];",
            esc(&n.id),
            esc(&n.id),
            esc(&n.ty.desc.type_id)
        );
    }
    for n in &plan.nodes {
        for (k, s) in n.inputs.iter().enumerate() {
            if let Source::Node { node, port } = s {
                let src = &plan.nodes[*node];
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\" [label=\"{} → {}\\n{}\"];",
                    esc(&src.id),
                    esc(&n.id),
                    esc(&src.ty.desc.outputs[*port].name),
                    esc(&n.ty.desc.inputs[k].name),
                    esc(&src.output_types[*port].to_string())
                );
            }
        }
    }
    out.push_str("}\n");
    out
}
