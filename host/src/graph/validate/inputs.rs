//! Graph inputs: declared values, `--set` overrides, and `$name` references.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::{GraphInput, Overrides, Validator};
use crate::graph::diag::{did_you_mean, Diagnostic, Pos};
use crate::graph::file::GraphFile;

impl Validator<'_> {
    pub(super) fn graph_inputs(
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
                    // `--set name=10` for a string input means the text "10".
                    if matches!(var.kind.as_deref(), Some("string") | Some("path"))
                        && (value.is_number() || value.is_boolean())
                    {
                        var.value = Json::from(value.to_string());
                    }
                    // A relative path on the command line means relative to where it was typed.
                    // When nothing is there, the value may name a model.
                    if var.kind.as_deref() == Some("path") {
                        if let Some(s) = value.as_str().filter(|s| !s.is_empty()) {
                            if std::path::Path::new(s).is_relative() {
                                if let Ok(cwd) = std::env::current_dir() {
                                    let here = cwd.join(s);
                                    let found = if here.exists() {
                                        Ok(None)
                                    } else {
                                        crate::models::resolve_missing(s, &here)
                                    };
                                    match found {
                                        Ok(found) => {
                                            var.value = Json::from(
                                                found
                                                    .unwrap_or(here)
                                                    .to_string_lossy()
                                                    .into_owned(),
                                            )
                                        }
                                        Err(message) => {
                                            self.err(
                                                "unknown-model",
                                                Pos { line: 1, column: 1 },
                                                format!("--set {name}: {message}"),
                                            )
                                            .hint = Some(crate::models::HINT.into());
                                        }
                                    }
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
    pub(super) fn var_ref(
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
}
