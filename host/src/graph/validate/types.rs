//! Types: every edge unified against its input port (type variables, families), plugins'
//! refinements of output types, and the plan in topological order.

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use super::canonical::canonical_json;
use super::{Draft, Validator};
use crate::graph::diag::Diagnostic;
use crate::graph::plan::{Plan, PlanNode, Source};
use crate::graph::typecheck::{self, Bindings};
use crate::plugins::NodeType;

impl Validator<'_> {
    /// The plugin's refined output types for a node (a loader names the model's family), or
    /// the declared ones after reporting why the plugin could not refine them.
    pub(super) fn inferred(
        &mut self,
        d: &Draft<'_>,
        ty: &NodeType,
        declared: Vec<latentflow_plugin_api::PortType>,
    ) -> Vec<latentflow_plugin_api::PortType> {
        // A node whose parameters were already refused would only report them missing.
        if self
            .diags
            .iter()
            .any(|x| x.is_error() && x.node.as_deref() == Some(d.id.as_str()))
        {
            return declared;
        }
        let params = Json::Object(d.params.clone()).to_string();
        match ty.plugin.infer(&ty.desc.type_id, &params) {
            Ok(refined) if refined.len() == declared.len() => {
                let mut out = Vec::with_capacity(declared.len());
                for (k, (r, decl)) in refined.into_iter().zip(declared).enumerate() {
                    if typecheck::narrows(&r, &decl) {
                        out.push(r);
                    } else {
                        let e = self.err(
                            "plugin-types",
                            d.pos,
                            format!(
                                "plugin `{}` says output `{}` is {r}, which is not a {decl}",
                                ty.plugin.name, ty.desc.outputs[k].name
                            ),
                        );
                        e.node = Some(d.id.clone());
                        out.push(decl);
                    }
                }
                out
            }
            Ok(_) => {
                let e = self.err(
                    "plugin-types",
                    d.pos,
                    format!(
                        "plugin `{}` gave the wrong number of output types for `{}`",
                        ty.plugin.name, ty.desc.type_id
                    ),
                );
                e.node = Some(d.id.clone());
                declared
            }
            Err(message) => {
                let e = self.err("node-params", d.pos, message);
                e.node = Some(d.id.clone());
                e.hint = Some(format!(
                    "`{}` checks its parameters before anything runs",
                    ty.desc.type_id
                ));
                declared
            }
        }
    }

    pub(super) fn typecheck_and_build(
        &mut self,
        drafts: Vec<Draft<'_>>,
        order: Vec<usize>,
        outputs: Vec<usize>,
        seed: u64,
    ) -> Option<Plan> {
        let mut out_types: Vec<Vec<latentflow_plugin_api::PortType>> =
            vec![Vec::new(); drafts.len()];
        for &i in &order {
            let d = &drafts[i];
            let Some(ty) = &d.ty else { continue };
            let mut bindings = Bindings::new();
            for (k, (src, pos)) in d.inputs.iter().enumerate() {
                let Source::Node { node, port } = src else {
                    continue;
                };
                let Some(produced) = out_types[*node].get(*port).cloned() else {
                    continue;
                };
                let want = &ty.desc.inputs[k].ty;
                if !typecheck::unify(&produced, want, &d.params, &mut bindings) {
                    let src_name = format!(
                        "{}.{}",
                        drafts[*node].id,
                        drafts[*node]
                            .ty
                            .as_ref()
                            .map(|t| t.desc.outputs[*port].name.to_string())
                            .unwrap_or_default()
                    );
                    let shown_want = typecheck::substitute(want, &d.params, &bindings);
                    let d2 = self.err(
                        "type-mismatch",
                        *pos,
                        format!(
                            "input `{}` expects {shown_want}, but `{src_name}` is {produced}",
                            ty.desc.inputs[k].name
                        ),
                    );
                    d2.node = Some(d.id.clone());
                    d2.hint = Some(
                        typecheck::conversion_hint(&produced, want)
                            .unwrap_or(
                                "connect an output of the expected type, or insert a conversion node",
                            )
                            .into(),
                    );
                }
            }
            let declared: Vec<latentflow_plugin_api::PortType> = ty
                .desc
                .outputs
                .iter()
                .map(|o| typecheck::substitute(&o.ty, &d.params, &bindings))
                .collect();
            out_types[i] = if ty.desc.caps.infers_types {
                self.inferred(d, ty, declared)
            } else {
                declared
            };
        }
        if self.diags.iter().any(Diagnostic::is_error) {
            return None;
        }
        // Re-index in topological order.
        let mut new_index = vec![0usize; drafts.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut nodes = Vec::with_capacity(drafts.len());
        // Node ids and output names by draft index, for input labels.
        let drafts_ids: Vec<(String, Vec<String>)> = drafts
            .iter()
            .map(|d| {
                let outs =
                    d.ty.as_ref()
                        .map(|t| t.desc.outputs.iter().map(|o| o.name.to_string()).collect())
                        .unwrap_or_default();
                (d.id.clone(), outs)
            })
            .collect();
        let mut drafts: Vec<Option<Draft<'_>>> = drafts.into_iter().map(Some).collect();
        for &old in &order {
            let d = drafts[old].take()?;
            let ty = d.ty?;
            let labels = d
                .inputs
                .iter()
                .zip(ty.desc.inputs.iter())
                .map(|((s, _), port)| match s {
                    Source::Node { node, port: p } => {
                        let src = &drafts_ids[*node];
                        format!("{}.{}", src.0, src.1[*p])
                    }
                    Source::Const(_) => format!("${}", port.name),
                    Source::None => port.name.to_string(),
                })
                .collect();
            let inputs = d
                .inputs
                .into_iter()
                .map(|(s, _)| match s {
                    Source::Node { node, port } => Source::Node {
                        node: new_index[node],
                        port,
                    },
                    other => other,
                })
                .collect();
            // Canonical parameter order: the schema's.
            let mut params = Map::with_capacity(d.params.len());
            let mut given = d.params;
            for spec in ty.desc.params.iter() {
                if let Some(v) = given.remove(spec.name.as_str()) {
                    params.insert(spec.name.to_string(), v);
                }
            }
            nodes.push(PlanNode {
                id: d.id,
                output_types: std::mem::take(&mut out_types[old]),
                ty,
                params: Arc::new(params),
                inputs,
                labels,
                pos: d.pos,
            });
        }
        let canonical = canonical_json(&nodes, seed);
        Some(Plan {
            file: self.file.to_path_buf(),
            outputs: outputs.into_iter().map(|o| new_index[o]).collect(),
            nodes,
            seed,
            canonical,
        })
    }
}
