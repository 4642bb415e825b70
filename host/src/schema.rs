//! JSON Schema for graph files, so editors can complete and check them.
//!
//! The schema describes the file structure and, for every node type the loaded plugins provide,
//! its parameters (types, ranges, choices, docs) and port names.

use latentflow_plugin_api::{NodeDescriptor, ParamKind, ParamSpec};
use serde_json::{json, Map, Value as Json};

use crate::plugins::Registry;

const EDGE_PATTERN: &str = r"^(\$[A-Za-z_][A-Za-z0-9_]*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_]+)?)$";

fn param_schema(p: &ParamSpec) -> Json {
    let mut s = match p.kind {
        ParamKind::Bool => json!({"type": "boolean"}),
        ParamKind::Int => json!({"type": "integer"}),
        ParamKind::Float => json!({"type": "number"}),
        ParamKind::String | ParamKind::Path => json!({"type": "string"}),
        ParamKind::Enum => {
            json!({"enum": p.choices.iter().map(|c| c.as_str()).collect::<Vec<_>>()})
        }
        ParamKind::Seed => {
            json!({"anyOf": [{"type": "integer", "minimum": 0}, {"const": "random"}]})
        }
        ParamKind::Json => json!({}),
    };
    if let Json::Object(m) = &mut s {
        if matches!(p.kind, ParamKind::Int | ParamKind::Float) {
            if let Some(v) = p.min {
                m.insert("minimum".into(), json!(v));
            }
            if let Some(v) = p.max {
                m.insert("maximum".into(), json!(v));
            }
        }
        if !p.doc.is_empty() {
            m.insert("description".into(), json!(p.doc.as_str()));
        }
        if let Some(d) = &p.default {
            if let Ok(v) = serde_json::from_str::<Json>(d.as_str()) {
                m.insert("default".into(), v);
            }
        }
    }
    // Every parameter may instead reference a graph input.
    json!({"anyOf": [s, {"type": "string", "pattern": r"^\$[A-Za-z_][A-Za-z0-9_]*$"}]})
}

fn node_rule(d: &NodeDescriptor) -> Json {
    let params: Map<String, Json> = d
        .params
        .iter()
        .map(|p| (p.name.to_string(), param_schema(p)))
        .collect();
    let inputs: Map<String, Json> = d
        .inputs
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                json!({"type": "string", "pattern": EDGE_PATTERN, "description": format!("{} — {}", p.ty, p.doc)}),
            )
        })
        .collect();
    let required_inputs: Vec<&str> = d
        .inputs
        .iter()
        .filter(|p| !p.optional)
        .map(|p| p.name.as_str())
        .collect();
    let required_params: Vec<&str> = d
        .params
        .iter()
        .filter(|p| p.default.is_none())
        .map(|p| p.name.as_str())
        .collect();
    let mut then = json!({
        "properties": {
            "params": {"type": "object", "properties": params, "additionalProperties": false, "required": required_params},
            "inputs": {"type": "object", "properties": inputs, "additionalProperties": false, "required": required_inputs},
        }
    });
    if !required_inputs.is_empty() {
        then["required"] = json!(["inputs"]);
    }
    json!({
        "if": {"properties": {"type": {"const": d.type_id.as_str()}}},
        "then": then,
    })
}

/// The schema for graph files, including every node type of `registry`.
pub fn graph_schema(registry: &Registry) -> Json {
    let types: Vec<Json> = registry
        .types()
        .map(|t| json!({"const": t.desc.type_id.as_str(), "description": t.desc.doc.lines().next().unwrap_or("")}))
        .collect();
    let type_schema = if types.is_empty() {
        json!({"type": "string", "pattern": r"^[A-Za-z0-9_]+\.[A-Za-z0-9_.]+$"})
    } else {
        json!({"anyOf": types})
    };
    let rules: Vec<Json> = registry.types().map(|t| node_rule(&t.desc)).collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://latentflow.dev/schema/graph.schema.json",
        "title": "LatentFlow graph",
        "type": "object",
        "additionalProperties": false,
        "required": ["nodes"],
        "properties": {
            "version": {"const": 1},
            "description": {"type": "string"},
            "seed": {"type": "integer", "minimum": 0, "description": "Run seed; `random` seed params derive from it"},
            "device": {"type": "string", "pattern": "^(cpu|cuda(:[0-9]+)?|wgpu)$", "description": "Default `device` of the model loaders that do not set one: cpu, cuda:N or wgpu"},
            "inputs": {
                "type": "object",
                "description": "Graph inputs, referenced as $name and overridable with --set name=value",
                "additionalProperties": {
                    "anyOf": [
                        {"type": ["string", "number", "boolean", "array"]},
                        {
                            "type": "object",
                            "additionalProperties": false,
                            "properties": {
                                "type": {"enum": ["bool", "int", "float", "string", "path", "seed"]},
                                "default": {},
                                "doc": {"type": "string"}
                            }
                        }
                    ]
                }
            },
            "nodes": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": "^[A-Za-z0-9_-]+$"},
                "additionalProperties": {"$ref": "#/$defs/node"}
            },
            "outputs": {"type": "array", "items": {"type": "string"}}
        },
        "$defs": {
            "node": {
                "type": "object",
                "additionalProperties": false,
                "required": ["type"],
                "properties": {
                    "type": type_schema,
                    "doc": {"type": "string"},
                    "inputs": {"type": "object", "additionalProperties": {"type": "string", "pattern": EDGE_PATTERN}},
                    "params": {"type": "object"}
                },
                "allOf": rules
            }
        }
    })
}
