//! ComfyUI workflows to LatentFlow graphs.
//!
//! [`import`] takes a workflow in either of ComfyUI's formats (the editor's UI format or the
//! API format) and returns a readable graph: one LatentFlow node per ComfyUI node that does
//! work, each commented with the ComfyUI id and class it came from; model files, images,
//! prompts, sizes, seeds, steps and CFG as graph inputs (so `--set checkpoint=NAME` works);
//! notes and group titles as comments. Anything that cannot be mapped is listed, each item
//! with its node id and class, and no graph is produced. Close-but-not-exact mappings (a
//! scheduler's spacing, a resize method) are listed as notes next to the graph.

mod classes;
mod convert;
mod workflow;
mod yaml;

use std::fmt;

use serde_json::Value as Json;

pub use convert::{tally, NO_EQUIVALENT};
pub use workflow::Format;

/// One finding about one ComfyUI node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The ComfyUI node id (empty for the workflow as a whole).
    pub node: String,
    /// Its class.
    pub class: String,
    /// What is wrong or approximate.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "node {} ({}): {}", self.node, self.class, self.message)
        }
    }
}

/// What the conversion found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Nodes that could not be mapped: if any, there is no graph.
    pub unmapped: Vec<Issue>,
    /// Mappings that are close rather than exact.
    pub notes: Vec<Issue>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.unmapped {
            writeln!(f, "  {i}")?;
        }
        Ok(())
    }
}

/// A converted workflow.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The graph, as YAML.
    pub yaml: String,
    /// Notes on approximate mappings (the unmapped list is empty).
    pub report: Report,
    /// The format the workflow came in.
    pub format: Format,
    /// Each graph node's ComfyUI node id.
    pub origin: std::collections::BTreeMap<String, String>,
}

/// Why a workflow was not converted.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// JSON, but not a ComfyUI workflow.
    #[error("not a ComfyUI workflow: {0}")]
    Format(String),
    /// Some nodes have no LatentFlow equivalent.
    #[error("{} node{} cannot be converted:\n{report}", report.unmapped.len(), if report.unmapped.len() == 1 { "" } else { "s" })]
    Unmapped {
        /// Everything found.
        report: Report,
    },
}

/// Whether `json` looks like a ComfyUI workflow (UI format, API format, or a `/prompt` body).
pub fn is_workflow(json: &Json) -> bool {
    let Some(obj) = json.as_object() else {
        return false;
    };
    if obj.get("nodes").is_some_and(Json::is_array) && obj.contains_key("links") {
        return true;
    }
    if obj.get("prompt").is_some_and(Json::is_object) {
        return true;
    }
    !obj.is_empty()
        && obj
            .values()
            .all(|v| v.get("class_type").is_some_and(Json::is_string))
}

/// Converts the workflow in `text`; `source` names it in the graph's header comment.
pub fn import(text: &str, source: &str) -> Result<Imported, ImportError> {
    let json: Json = serde_json::from_str(text).map_err(|e| ImportError::Json(e.to_string()))?;
    import_json(&json, source)
}

/// Converts a parsed workflow.
pub fn import_json(json: &Json, source: &str) -> Result<Imported, ImportError> {
    let wf = workflow::parse(json)?;
    let (mut graph, report) = convert::Converter::new(&wf).run();
    if !report.unmapped.is_empty() {
        return Err(ImportError::Unmapped { report });
    }
    let format = match wf.format {
        Format::Ui => "UI",
        Format::Api => "API",
    };
    graph.header.push(format!(
        "Imported from the ComfyUI workflow {source} ({format} format) by `latentflow import`."
    ));
    for n in &report.notes {
        graph.header.push(format!("note: {n}"));
    }
    for n in &wf.notes {
        graph.header.push(String::new());
        graph.header.push(n.clone());
    }
    graph.description = format!("Imported from the ComfyUI workflow {source}.");
    let origin = graph
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.origin.clone()))
        .collect();
    Ok(Imported {
        yaml: graph.to_yaml(),
        report,
        format: wf.format,
        origin,
    })
}

#[cfg(test)]
mod tests;
