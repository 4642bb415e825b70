//! Edges: each input's `node.output` or `$variable`, resolved to a source.

use std::collections::{BTreeMap, HashMap};

use super::{doc_suffix, Draft, GraphInput, Validator};
use crate::graph::diag::{did_you_mean, Pos};
use crate::graph::plan::Source;
use crate::graph::typecheck;

impl Validator<'_> {
    pub(super) fn inputs(
        &mut self,
        draft: &Draft<'_>,
        all: &[Draft<'_>],
        ids: &[String],
        index: &HashMap<&str, usize>,
        vars: &mut BTreeMap<String, GraphInput>,
    ) -> Vec<(Source, Pos)> {
        let Some(ty) = &draft.ty else {
            return Vec::new();
        };
        let ports = &ty.desc.inputs;
        let mut out: Vec<(Source, Pos)> = vec![(Source::None, draft.pos); ports.len()];
        let mut given = vec![false; ports.len()];
        for (name, value) in &draft.def.inputs.0 {
            let pos: Pos = value.pos;
            let Some(idx) = ports.iter().position(|p| p.name.as_str() == name.value) else {
                let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
                let hint = did_you_mean(&name.value, names.iter().copied()).or_else(|| {
                    Some(if names.is_empty() {
                        format!("`{}` has no inputs", ty.desc.type_id)
                    } else {
                        format!("inputs of `{}`: {}", ty.desc.type_id, names.join(", "))
                    })
                });
                let d = self.err(
                    "unknown-port",
                    name.pos,
                    format!("unknown input port `{}`", name.value),
                );
                d.node = Some(draft.id.clone());
                d.hint = hint;
                continue;
            };
            if given[idx] {
                let d = self.err(
                    "duplicate-input",
                    name.pos,
                    format!("input `{}` is connected twice", name.value),
                );
                d.node = Some(draft.id.clone());
                continue;
            }
            given[idx] = true;
            let Some(text) = value.value.as_str() else {
                let d = self.err(
                    "bad-edge",
                    pos,
                    format!(
                        "input `{}` must be written `node.output` or `$variable`, got {}",
                        name.value, value.value
                    ),
                );
                d.node = Some(draft.id.clone());
                d.hint = Some(
                    "constants go in `params:`, or in a graph input referenced as `$name`".into(),
                );
                continue;
            };
            if text.starts_with('$') {
                if let Some(v) = self.var_ref(text, pos, &draft.id, vars) {
                    let port = &ports[idx];
                    if typecheck::const_fits(&v, &port.ty) {
                        out[idx] = (Source::Const(v), pos);
                    } else {
                        let d = self.err(
                            "type-mismatch",
                            pos,
                            format!(
                                "input `{}` expects {}, but `{text}` is {v}",
                                port.name, port.ty
                            ),
                        );
                        d.node = Some(draft.id.clone());
                    }
                }
                continue;
            }
            let (src_id, port_name) = match text.split_once('.') {
                Some((n, p)) => (n, Some(p)),
                None => (text, None),
            };
            let Some(&src) = index.get(src_id) else {
                let hint = did_you_mean(src_id, ids.iter().map(String::as_str));
                let d = self.err(
                    "unknown-node",
                    pos,
                    format!("input `{}` refers to unknown node `{src_id}`", name.value),
                );
                d.node = Some(draft.id.clone());
                d.hint = hint;
                continue;
            };
            let Some(src_ty) = &all[src].ty else {
                continue; // Its unknown type is already reported.
            };
            let outs = &src_ty.desc.outputs;
            let port = match port_name {
                Some(p) => match outs.iter().position(|o| o.name.as_str() == p) {
                    Some(i) => i,
                    None => {
                        let names: Vec<&str> = outs.iter().map(|o| o.name.as_str()).collect();
                        let hint = did_you_mean(p, names.iter().copied()).or_else(|| {
                            Some(format!(
                                "outputs of `{src_id}` ({}): {}",
                                src_ty.desc.type_id,
                                names.join(", ")
                            ))
                        });
                        let d = self.err(
                            "unknown-port",
                            pos,
                            format!("node `{src_id}` has no output `{p}`"),
                        );
                        d.node = Some(draft.id.clone());
                        d.hint = hint;
                        continue;
                    }
                },
                None if outs.len() == 1 => 0,
                None => {
                    let names: Vec<String> = outs
                        .iter()
                        .map(|o| format!("{src_id}.{}", o.name))
                        .collect();
                    let d = self.err(
                        "ambiguous-edge",
                        pos,
                        format!("node `{src_id}` has {} outputs; name one", outs.len()),
                    );
                    d.node = Some(draft.id.clone());
                    d.hint = Some(format!("write one of: {}", names.join(", ")));
                    continue;
                }
            };
            if src_id == draft.id {
                let d = self.err("cycle", pos, format!("node `{}` feeds itself", draft.id));
                d.node = Some(draft.id.clone());
                continue;
            }
            out[idx] = (Source::Node { node: src, port }, pos);
        }
        for (i, port) in ports.iter().enumerate() {
            if !given[i] && !port.optional {
                let d = self.err(
                    "missing-input",
                    draft.pos,
                    format!(
                        "required input `{}` ({}) is not connected",
                        port.name, port.ty
                    ),
                );
                d.node = Some(draft.id.clone());
                d.hint = Some(format!(
                    "add `{}: other_node.output` under `inputs:`{}",
                    port.name,
                    doc_suffix(&port.doc)
                ));
            }
        }
        out
    }
}
