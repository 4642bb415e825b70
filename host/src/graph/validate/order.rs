//! Order: cycles reported, a topological order, and the nodes whose results are wanted.

use petgraph::algo::kosaraju_scc;
use petgraph::graph::DiGraph;

use super::{Draft, Validator};
use crate::graph::diag::did_you_mean;
use crate::graph::file::GraphFile;
use crate::graph::plan::Source;

impl Validator<'_> {
    /// A topological order, or `None` after reporting every cycle.
    pub(super) fn order(&mut self, drafts: &[Draft<'_>]) -> Option<Vec<usize>> {
        let mut g: DiGraph<usize, ()> = DiGraph::new();
        let idx: Vec<_> = (0..drafts.len()).map(|i| g.add_node(i)).collect();
        for (i, d) in drafts.iter().enumerate() {
            for (src, _) in &d.inputs {
                if let Source::Node { node, .. } = src {
                    g.add_edge(idx[*node], idx[i], ());
                }
            }
        }
        let mut cyclic = false;
        for scc in kosaraju_scc(&g) {
            if scc.len() > 1 {
                cyclic = true;
                let mut members: Vec<usize> = scc.iter().map(|n| g[*n]).collect();
                members.sort();
                let names: Vec<String> = members
                    .iter()
                    .map(|&m| format!("`{}`", drafts[m].id))
                    .collect();
                let first = &drafts[members[0]];
                let d = self.err(
                    "cycle",
                    first.pos,
                    format!("the graph has a cycle through {}", names.join(" → ")),
                );
                d.node = Some(first.id.clone());
                d.hint = Some(
                    "graphs must be acyclic; break the loop by removing one of these edges".into(),
                );
            }
        }
        if cyclic {
            return None;
        }
        petgraph::algo::toposort(&g, None)
            .ok()
            .map(|o| o.into_iter().map(|n| g[n]).collect())
    }

    pub(super) fn outputs(&mut self, g: &GraphFile, drafts: &[Draft<'_>]) -> Vec<usize> {
        if let Some(list) = &g.outputs {
            let mut out = Vec::new();
            for crate::graph::file::Loc {
                value,
                pos: referenced,
                ..
            } in list
            {
                match drafts.iter().position(|d| &d.id == value) {
                    Some(i) => out.push(i),
                    None => {
                        let hint = did_you_mean(value, drafts.iter().map(|d| d.id.as_str()));
                        self.err(
                            "unknown-node",
                            *referenced,
                            format!("`outputs` names unknown node `{value}`"),
                        )
                        .hint = hint;
                    }
                }
            }
            return out;
        }
        let mut consumed = vec![false; drafts.len()];
        for d in drafts {
            for (src, _) in &d.inputs {
                if let Source::Node { node, .. } = src {
                    consumed[*node] = true;
                }
            }
        }
        (0..drafts.len())
            .filter(|&i| {
                !consumed[i]
                    || drafts[i]
                        .ty
                        .as_ref()
                        .is_some_and(|t| t.desc.caps.side_effects)
            })
            .collect()
    }
}
