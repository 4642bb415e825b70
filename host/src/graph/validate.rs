//! Validation: a graph file plus the registry become a [`Plan`], or a list of every problem.
//!
//! Nothing runs before validation has passed. All problems are collected, each with its
//! `file:line:column`, the node and a hint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use petgraph::algo::kosaraju_scc;
use petgraph::graph::DiGraph;
use serde_json::{Map, Value as Json};

use super::diag::{did_you_mean, Diagnostic, Pos};
use super::file::{GraphFile, NodeDef};
use super::params;
use super::plan::{Plan, PlanNode, Source};
use super::typecheck::{self, Bindings};
use crate::plugins::{NodeType, Registry};

/// Inputs to validation besides the file itself.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--set name=value` pairs, values already parsed.
    pub set: Vec<(String, Json)>,
    /// `--seed`.
    pub seed: Option<u64>,
}

/// The result of validation: a plan when there are no errors, and every diagnostic.
pub struct Validated {
    /// The plan, if no errors were found.
    pub plan: Option<Plan>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses a `--set` value: YAML scalars (numbers, booleans), otherwise the raw string.
pub fn parse_set_value(raw: &str) -> Json {
    serde_saphyr::from_str::<Json>(raw)
        .ok()
        .filter(|v| !v.is_null() || raw.trim() == "null")
        .unwrap_or_else(|| Json::from(raw))
}

/// Validates the YAML text of the graph at `file`.
///
/// JSON documents (what tools generate) take a fast path through `serde_json`; when that finds
/// any problem, the text is parsed again as YAML to report positions.
pub fn validate(file: &Path, text: &str, registry: &Registry, overrides: &Overrides) -> Validated {
    if text.trim_start().starts_with('{') {
        if let Ok(parsed) = super::file::plain(|| serde_json::from_str::<GraphFile>(text)) {
            let mut v = Validator {
                file,
                registry,
                diags: Vec::new(),
            };
            let plan = v.check(parsed, overrides);
            if v.diags.is_empty() {
                return Validated {
                    plan,
                    diagnostics: Vec::new(),
                };
            }
        }
    }
    let mut v = Validator {
        file,
        registry,
        diags: Vec::new(),
    };
    let plan = v.run(text, overrides);
    let mut diagnostics = v.diags;
    diagnostics.sort_by_key(|d| (d.pos.line, d.pos.column));
    let plan = if diagnostics.iter().any(Diagnostic::is_error) {
        None
    } else {
        plan
    };
    Validated { plan, diagnostics }
}

struct Validator<'a> {
    file: &'a Path,
    registry: &'a Registry,
    diags: Vec<Diagnostic>,
}

struct GraphInput {
    value: Json,
    kind: Option<String>,
    pos: Pos,
    used: bool,
}

/// A node being checked: what was written, what it resolved to.
struct Draft<'g> {
    id: String,
    def: &'g NodeDef,
    pos: Pos,
    ty: Option<NodeType>,
    params: Map<String, Json>,
    /// Per declared input: the source and the position of the reference.
    inputs: Vec<(Source, Pos)>,
}

/// Derives a stable per-node seed from the run seed.
pub fn node_seed(run_seed: u64, node_id: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&run_seed.to_le_bytes());
    h.update(node_id.as_bytes());
    let bytes = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes.as_bytes()[..8]);
    // Keep seeds within 53 bits so they survive JSON round trips in any language.
    u64::from_le_bytes(b) & ((1 << 53) - 1)
}

impl<'a> Validator<'a> {
    fn err(&mut self, code: &'static str, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags
            .push(Diagnostic::error(code, self.file, pos, msg));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    fn run(&mut self, text: &str, overrides: &Overrides) -> Option<Plan> {
        // Large generated graphs legitimately have many YAML nodes: scale those limits with the
        // input (a node takes at least a byte). Alias and anchor limits keep their defaults.
        let mut budget = serde_saphyr::Budget::default();
        budget.max_nodes = budget.max_nodes.max(text.len());
        budget.max_events = budget.max_events.max(4 * text.len());
        let options = serde_saphyr::options! {
            budget: Some(budget),
            duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
            strict_booleans: true,
        };
        let parsed: GraphFile = match serde_saphyr::from_str_with_options(text, options) {
            Ok(g) => g,
            Err(e) => {
                let pos = e.location().map(Pos::from).unwrap_or_default();
                let message = yaml_message(&e);
                let hint = yaml_hint(&message);
                self.err("yaml", pos, message).hint = hint;
                return None;
            }
        };
        self.check(parsed, overrides)
    }

    fn check(&mut self, parsed: GraphFile, overrides: &Overrides) -> Option<Plan> {
        if let Some(v) = &parsed.version {
            if v.value != 1 {
                self.err(
                    "version",
                    v.pos,
                    format!("unsupported graph version {}", v.value),
                )
                .hint = Some("this LatentFlow reads `version: 1`".into());
            }
        }
        let seed = overrides
            .seed
            .or(parsed.seed.as_ref().map(|s| s.value))
            .unwrap_or(0);

        let mut vars = self.graph_inputs(&parsed, overrides);
        let drafts = self.nodes(&parsed, &mut vars, seed);
        for (name, var) in &vars {
            if !var.used {
                self.diags.push(
                    Diagnostic::warning(
                        "unused-input",
                        self.file,
                        var.pos,
                        format!("graph input `{name}` is never used"),
                    )
                    .hint(
                        "reference it as `$".to_string()
                            + name
                            + "` in a param or input, or remove it",
                    ),
                );
            }
        }
        let order = self.order(&drafts)?;
        let outputs = self.outputs(&parsed, &drafts);
        self.typecheck_and_build(drafts, order, outputs, seed)
    }

    fn graph_inputs(
        &mut self,
        g: &GraphFile,
        overrides: &Overrides,
    ) -> BTreeMap<String, GraphInput> {
        let mut vars = BTreeMap::new();
        for (name, value) in &g.inputs.0 {
            let pos: Pos = name.pos;
            if vars.contains_key(&name.value) {
                self.err(
                    "duplicate-input",
                    pos,
                    format!("graph input `{}` is defined twice", name.value),
                );
                continue;
            }
            let (default, kind) = match &value.value {
                Json::Object(m) if m.contains_key("type") || m.contains_key("default") => (
                    m.get("default").cloned().unwrap_or(Json::Null),
                    m.get("type").and_then(Json::as_str).map(str::to_string),
                ),
                other => (other.clone(), None),
            };
            if let Some(k) = &kind {
                if !["bool", "int", "float", "string", "path", "seed"].contains(&k.as_str()) {
                    self.err(
                        "input-type",
                        value.pos,
                        format!("graph input `{}` has unknown type `{k}`", name.value),
                    )
                    .hint = Some("types are bool, int, float, string, path and seed".into());
                }
            }
            vars.insert(
                name.value.clone(),
                GraphInput {
                    value: default,
                    kind,
                    pos,
                    used: false,
                },
            );
        }
        for (name, value) in &overrides.set {
            match vars.get_mut(name) {
                Some(var) => {
                    var.value = value.clone();
                    // A relative path on the command line means relative to where it was typed.
                    if var.kind.as_deref() == Some("path") {
                        if let Some(s) = value.as_str().filter(|s| !s.is_empty()) {
                            if std::path::Path::new(s).is_relative() {
                                if let Ok(cwd) = std::env::current_dir() {
                                    var.value =
                                        Json::from(cwd.join(s).to_string_lossy().into_owned());
                                }
                            }
                        }
                    }
                }
                None => {
                    let hint = did_you_mean(name, vars.keys().map(String::as_str))
                        .or_else(|| Some("declare it under `inputs:` in the graph file".into()));
                    self.err(
                        "unknown-set",
                        Pos { line: 1, column: 1 },
                        format!("--set {name}: the graph has no input named `{name}`"),
                    )
                    .hint = hint;
                }
            }
        }
        for (name, var) in &vars {
            let ok = match var.kind.as_deref() {
                Some("bool") => var.value.is_boolean(),
                Some("int") => var.value.is_i64() || var.value.is_u64(),
                Some("float") => var.value.is_number(),
                Some("string") | Some("path") => var.value.is_string(),
                Some("seed") => var.value.is_u64() || var.value.as_str() == Some("random"),
                _ => true,
            };
            if !ok {
                let kind = var.kind.clone().unwrap_or_default();
                self.diags.push(Diagnostic::error(
                    "input-value",
                    self.file,
                    var.pos,
                    format!(
                        "graph input `{name}` is declared {kind} but its value is {}",
                        var.value
                    ),
                ));
            }
            if var.value.is_null() {
                self.diags.push(
                    Diagnostic::error(
                        "input-missing",
                        self.file,
                        var.pos,
                        format!("graph input `{name}` has no value"),
                    )
                    .hint(format!("give it a default or pass --set {name}=VALUE")),
                );
            }
        }
        vars
    }

    /// Resolves a `$name` reference, marking the variable used.
    fn var_ref(
        &mut self,
        text: &str,
        pos: Pos,
        node: &str,
        vars: &mut BTreeMap<String, GraphInput>,
    ) -> Option<Json> {
        let name = &text[1..];
        match vars.get_mut(name) {
            Some(v) => {
                v.used = true;
                Some(v.value.clone())
            }
            None => {
                let hint = did_you_mean(name, vars.keys().map(String::as_str))
                    .or_else(|| Some(format!("declare `{name}` under the graph's `inputs:`")));
                let d = self.err(
                    "undefined-variable",
                    pos,
                    format!("undefined variable `${name}`"),
                );
                d.node = Some(node.to_string());
                d.hint = hint;
                None
            }
        }
    }

    fn nodes<'g>(
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
                let hint = super::diag::did_you_mean_type(&t.value, self.registry.type_ids())
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

    fn params(
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
            match params::default_of(spec) {
                Some(Json::String(s))
                    if spec.kind == latentflow_plugin_api::ParamKind::Seed && s == "random" =>
                {
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

    fn inputs(
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

    /// A topological order, or `None` after reporting every cycle.
    fn order(&mut self, drafts: &[Draft<'_>]) -> Option<Vec<usize>> {
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

    fn outputs(&mut self, g: &GraphFile, drafts: &[Draft<'_>]) -> Vec<usize> {
        if let Some(list) = &g.outputs {
            let mut out = Vec::new();
            for super::file::Loc {
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

    /// The plugin's refined output types for a node (a loader names the model's family), or
    /// the declared ones after reporting why the plugin could not refine them.
    fn inferred(
        &mut self,
        d: &Draft<'_>,
        ty: &NodeType,
        declared: Vec<latentflow_plugin_api::PortType>,
    ) -> Vec<latentflow_plugin_api::PortType> {
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

    fn typecheck_and_build(
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
                        "connect an output of the expected type, or insert a conversion node"
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

/// The graph with variables and defaults resolved: valid graph YAML (JSON is YAML), used as
/// provenance in outputs so that `latentflow run image.png` re-runs it.
fn canonical_json(nodes: &[PlanNode], seed: u64) -> Json {
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

fn typecheck_seed(run_seed: u64, node: &str, param: &str) -> u64 {
    node_seed(run_seed, &format!("{node}/{param}"))
}

fn doc_suffix(doc: &str) -> String {
    if doc.is_empty() {
        String::new()
    } else {
        format!(" ({doc})")
    }
}

/// The first line of a YAML error, without its source snippet.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    // saphyr prefixes "line L column C: "; the diagnostic prints the position itself.
    let stripped = match first.find(": ") {
        Some(i) if first.starts_with("line ") => &first[i + 2..],
        _ => first,
    };
    stripped.to_string()
}

fn yaml_hint(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some("a graph has `version`, `description`, `seed`, `inputs`, `nodes`, `outputs`; a node has `type`, `inputs`, `params`, `doc`".into())
    } else if message.contains("missing field `nodes`") {
        Some("a graph needs a `nodes:` mapping".into())
    } else if message.contains("missing field `type`") {
        Some("every node needs `type: family.name`".into())
    } else {
        Some("check the indentation and the `key: value` syntax around this position".into())
    }
}
