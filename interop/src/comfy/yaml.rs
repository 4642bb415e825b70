//! The converted graph and its YAML text: hand-written so that each node carries a comment
//! naming the ComfyUI node it came from.

use std::fmt::Write as _;

use serde_json::Value as Json;

/// A parameter value: a literal or a graph input.
#[derive(Debug, Clone)]
pub enum Param {
    /// A constant.
    Lit(Json),
    /// `$name`.
    Var(String),
}

/// A graph input (`inputs:`), overridable with `--set`.
#[derive(Debug, Clone)]
pub struct GraphInput {
    /// Its name.
    pub name: String,
    /// `path`, `string`, `int`, `float`, `bool` or `seed`.
    pub ty: &'static str,
    /// The default, from the workflow.
    pub default: Json,
    /// Where it came from.
    pub doc: String,
}

/// One LatentFlow node.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// Node id.
    pub id: String,
    /// `family.name`.
    pub ty: &'static str,
    /// A comment line above the node.
    pub comment: String,
    /// The ComfyUI node it came from.
    pub origin: String,
    /// Input port → `node.port`.
    pub inputs: Vec<(&'static str, String)>,
    /// Parameters.
    pub params: Vec<(&'static str, Param)>,
}

/// A whole graph.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Comment lines at the top.
    pub header: Vec<String>,
    /// `description:`.
    pub description: String,
    /// Graph inputs.
    pub inputs: Vec<GraphInput>,
    /// Nodes, in the order they were converted (dependencies first).
    pub nodes: Vec<GraphNode>,
}

/// A JSON literal is a valid YAML flow scalar (strings double-quoted with JSON escapes).
fn lit(v: &Json) -> String {
    v.to_string()
}

fn comment(out: &mut String, indent: &str, text: &str) {
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            let _ = writeln!(out, "{indent}#");
        } else {
            let _ = writeln!(out, "{indent}# {line}");
        }
    }
}

impl Graph {
    /// The graph as YAML.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for h in &self.header {
            comment(&mut out, "", h);
        }
        out.push_str("version: 1\n");
        let _ = writeln!(
            out,
            "description: {}",
            lit(&Json::from(self.description.clone()))
        );
        if !self.inputs.is_empty() {
            out.push_str("inputs:\n");
            for i in &self.inputs {
                let _ = writeln!(
                    out,
                    "  {}: {{type: {}, default: {}, doc: {}}}",
                    i.name,
                    i.ty,
                    lit(&i.default),
                    lit(&Json::from(i.doc.clone()))
                );
            }
        }
        out.push_str("nodes:\n");
        for n in &self.nodes {
            comment(&mut out, "  ", &n.comment);
            let _ = writeln!(out, "  {}:", n.id);
            let _ = writeln!(out, "    type: {}", n.ty);
            if !n.inputs.is_empty() {
                let parts: Vec<String> =
                    n.inputs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(out, "    inputs: {{{}}}", parts.join(", "));
            }
            if !n.params.is_empty() {
                let parts: Vec<String> = n
                    .params
                    .iter()
                    .map(|(k, v)| match v {
                        Param::Lit(j) => format!("{k}: {}", lit(j)),
                        Param::Var(name) => format!("{k}: ${name}"),
                    })
                    .collect();
                let _ = writeln!(out, "    params: {{{}}}", parts.join(", "));
            }
        }
        out
    }
}
