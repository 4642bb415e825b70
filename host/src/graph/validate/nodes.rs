//! Nodes: ids, types from the registry, and parameters checked against their schema.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use latentflow_plugin_api::device::DEVICE_PARAM;
use latentflow_plugin_api::ParamKind;
use serde_json::{Map, Value as Json};

use super::{doc_suffix, typecheck_seed, Draft, GraphInput, Validator};
use crate::graph::diag::{did_you_mean, Pos};
use crate::graph::file::GraphFile;
use crate::graph::params;

impl Validator<'_> {
    pub(super) fn nodes<'g>(
        &mut self,
        g: &'g GraphFile,
        vars: &mut BTreeMap<String, GraphInput>,
        seed: u64,
    ) -> Vec<Draft<'g>> {
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        let mut drafts = Vec::new();
        if g.nodes.value.0.is_empty() {
            self.err("empty-graph", g.nodes.pos, "the graph has no nodes")
                .hint = Some("add nodes under `nodes:`".into());
        }
        for (id, def) in &g.nodes.value.0 {
            let pos: Pos = id.pos;
            if let Some(first) = seen.get(id.value.as_str()) {
                let d = self.err(
                    "duplicate-id",
                    pos,
                    format!("node id `{}` is used twice", id.value),
                );
                d.node = Some(id.value.clone());
                d.hint = Some(format!(
                    "the first `{}` is at line {}; rename one of them",
                    id.value, first.line
                ));
                continue;
            }
            seen.insert(&id.value, pos);
            if id.value.is_empty()
                || !id
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                let d = self.err(
                    "bad-id",
                    pos,
                    format!(
                        "node id `{}` may only contain letters, digits, `_` and `-`",
                        id.value
                    ),
                );
                d.node = Some(id.value.clone());
            }
            let ty = self.registry.get(&def.value.type_id.value).cloned();
            if ty.is_none() {
                let t = &def.value.type_id;
                let hint =
                    crate::graph::diag::did_you_mean_type(&t.value, self.registry.type_ids())
                        .or_else(|| {
                            Some(
                            "run `latentflow nodes` to list the node types of the loaded plugins"
                                .into(),
                        )
                        });
                let d = self.err(
                    "unknown-node-type",
                    t.pos,
                    format!("unknown node type `{}`", t.value),
                );
                d.node = Some(id.value.clone());
                d.hint = hint;
            }
            drafts.push(Draft {
                id: id.value.clone(),
                def: &def.value,
                pos,
                ty,
                params: Map::new(),
                inputs: Vec::new(),
            });
        }
        for draft in drafts.iter_mut().filter(|d| d.ty.is_some()) {
            self.params(draft, vars, seed);
            self.sizes(draft);
            self.devices(draft);
        }
        let ids: Vec<String> = drafts.iter().map(|d| d.id.clone()).collect();
        let index: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        for i in 0..drafts.len() {
            if drafts[i].ty.is_some() {
                let inputs = self.inputs(&drafts[i], &drafts, &ids, &index, vars);
                drafts[i].inputs = inputs;
            }
        }
        drafts
    }

    pub(super) fn params(
        &mut self,
        draft: &mut Draft<'_>,
        vars: &mut BTreeMap<String, GraphInput>,
        seed: u64,
    ) {
        let Some(ty) = draft.ty.clone() else { return };
        // Absolute, so that the provenance embedded in outputs re-runs from any folder.
        let base_dir = std::path::absolute(self.file.parent().unwrap_or(Path::new(".")))
            .unwrap_or_else(|_| self.file.parent().unwrap_or(Path::new(".")).to_path_buf());
        let specs = &ty.desc.params;
        let mut given: HashSet<&str> = HashSet::new();
        for (name, value) in &draft.def.params.0 {
            let pos: Pos = value.pos;
            let Some(spec) = specs.iter().find(|s| s.name.as_str() == name.value) else {
                let hint = did_you_mean(&name.value, specs.iter().map(|s| s.name.as_str()))
                    .or_else(|| {
                        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                        Some(if names.is_empty() {
                            format!("`{}` takes no parameters", ty.desc.type_id)
                        } else {
                            format!("parameters of `{}`: {}", ty.desc.type_id, names.join(", "))
                        })
                    });
                let d = self.err(
                    "unknown-param",
                    name.pos,
                    format!("unknown parameter `{}`", name.value),
                );
                d.node = Some(draft.id.clone());
                d.hint = hint;
                continue;
            };
            if !given.insert(spec.name.as_str()) {
                let d = self.err(
                    "duplicate-param",
                    name.pos,
                    format!("parameter `{}` is set twice", name.value),
                );
                d.node = Some(draft.id.clone());
                continue;
            }
            let raw = match &value.value {
                Json::String(s) if s.starts_with('$') => {
                    match self.var_ref(s, pos, &draft.id, vars) {
                        Some(v) => v,
                        None => continue,
                    }
                }
                other => other.clone(),
            };
            match params::check(
                spec,
                &raw,
                &base_dir,
                typecheck_seed(seed, &draft.id, spec.name.as_str()),
            ) {
                Ok(v) => {
                    draft.params.insert(spec.name.to_string(), v);
                }
                Err(p) => {
                    let d = self.err("param-value", pos, p.message);
                    d.node = Some(draft.id.clone());
                    d.hint = p.hint;
                }
            }
        }
        for spec in specs.iter() {
            if given.contains(spec.name.as_str()) {
                continue;
            }
            if spec.name.as_str() == DEVICE_PARAM && spec.kind == ParamKind::String {
                if let Some((device, _)) = &self.default_device {
                    draft
                        .params
                        .insert(spec.name.to_string(), Json::from(device.clone()));
                    continue;
                }
            }
            match params::default_of(spec) {
                Some(Json::String(s)) if spec.kind == ParamKind::Seed && s == "random" => {
                    draft.params.insert(
                        spec.name.to_string(),
                        Json::from(typecheck_seed(seed, &draft.id, spec.name.as_str())),
                    );
                }
                Some(v) => {
                    draft.params.insert(spec.name.to_string(), v);
                }
                None => {
                    let d = self.err(
                        "missing-param",
                        draft.pos,
                        format!(
                            "required parameter `{}` ({}) is not set",
                            spec.name,
                            spec.kind.name()
                        ),
                    );
                    d.node = Some(draft.id.clone());
                    d.hint = Some(format!(
                        "add `{}: ...` under `params:`{}",
                        spec.name,
                        doc_suffix(&spec.doc)
                    ));
                }
            }
        }
    }
}
