//! Reading ComfyUI workflows, in either format, into one shape: nodes with named inputs that
//! are either values or links to another node's output slot.
//!
//! - The API format (`{id: {class_type, inputs}}`, what `/prompt` takes and what PNGs carry in
//!   their `prompt` chunk) already has that shape.
//! - The UI format (`nodes`, `links`, `widgets_values`, what the editor saves and PNGs carry in
//!   their `workflow` chunk) stores widget values by position; they are named from the class
//!   table. Reroutes and primitive nodes are resolved here, muted nodes dropped and bypassed
//!   nodes passed through, so the converter sees what ComfyUI would execute.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::classes;
use super::ImportError;

/// One input of a node: a constant or a link to `node`'s output `slot`.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A widget value.
    Value(Json),
    /// An edge from another node's output.
    Link {
        /// The source node's id.
        node: String,
        /// The source output's index.
        slot: usize,
    },
    /// A link from a node that does not run (muted), or that a bypassed node could not pass
    /// through.
    Dropped {
        /// The node that does not run.
        node: String,
    },
}

/// A node of the workflow.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node id, as ComfyUI writes it.
    pub id: String,
    /// The class (`class_type`).
    pub class: String,
    /// A title the author gave the node, if any.
    pub title: Option<String>,
    /// Inputs by name, in the order the workflow lists them.
    pub inputs: Vec<(String, Input)>,
}

impl Node {
    /// The input called `name`.
    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, i)| i)
    }
}

/// A workflow in the common shape.
#[derive(Debug, Clone, Default)]
pub struct Workflow {
    /// Nodes by id, in ascending numeric order where ids are numbers.
    pub nodes: BTreeMap<SortKey, Node>,
    /// Subgraph definitions by id, with their names (nodes whose class is one are not expanded).
    pub subgraphs: BTreeMap<String, String>,
    /// Notes (Note, MarkdownNote) and group titles, kept as comments.
    pub notes: Vec<String>,
    /// Which format it came in.
    pub format: Format,
}

/// The two workflow formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// `{id: {class_type, inputs}}`.
    #[default]
    Api,
    /// The editor's `nodes`/`links` format.
    Ui,
}

/// Orders ids numerically when they are numbers ("2" before "10"), then as text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SortKey(Vec<(u64, String)>);

impl SortKey {
    /// The key of `id` (parts split at `:`, as in subgraph ids `10:5`).
    pub fn of(id: &str) -> Self {
        SortKey(
            id.split(':')
                .map(|p| (p.parse::<u64>().unwrap_or(u64::MAX), p.to_string()))
                .collect(),
        )
    }
}

impl Workflow {
    /// The node with id `id`.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(&SortKey::of(id))
    }
}

/// Parses either format.
pub fn parse(json: &Json) -> Result<Workflow, ImportError> {
    let Some(obj) = json.as_object() else {
        return Err(ImportError::Format(
            "a ComfyUI workflow is a JSON object".into(),
        ));
    };
    if obj.get("nodes").is_some_and(Json::is_array) {
        parse_ui(obj)
    } else if let Some(prompt) = obj.get("prompt").filter(|p| p.is_object()) {
        // `{"prompt": {...}, "client_id": ...}`, the body a client posts to /prompt.
        parse_api(prompt)
    } else {
        parse_api(json)
    }
}

fn parse_api(json: &Json) -> Result<Workflow, ImportError> {
    let mut wf = Workflow {
        format: Format::Api,
        ..Default::default()
    };
    let Some(obj) = json.as_object() else {
        return Err(ImportError::Format(
            "the prompt is not a JSON object".into(),
        ));
    };
    for (id, node) in obj {
        let Some(class) = node.get("class_type").and_then(Json::as_str) else {
            return Err(ImportError::Format(format!(
                "node `{id}` has no `class_type`: this is neither a ComfyUI API prompt nor a UI workflow (which has `nodes` and `links`)"
            )));
        };
        let mut inputs = Vec::new();
        if let Some(ins) = node.get("inputs").and_then(Json::as_object) {
            for (name, v) in ins {
                inputs.push((name.clone(), api_input(v)));
            }
        }
        let title = node
            .pointer("/_meta/title")
            .and_then(Json::as_str)
            .filter(|t| *t != class)
            .map(str::to_string);
        wf.nodes.insert(
            SortKey::of(id),
            Node {
                id: id.clone(),
                class: class.to_string(),
                title,
                inputs,
            },
        );
    }
    Ok(wf)
}

/// `[node_id, slot]` is a link in the API format; anything else is a value.
fn api_input(v: &Json) -> Input {
    if let Some([node, slot]) = v.as_array().map(Vec::as_slice) {
        let node = match node {
            Json::String(s) => Some(s.clone()),
            Json::Number(n) if n.is_u64() => Some(n.to_string()),
            _ => None,
        };
        if let (Some(node), Some(slot)) = (node, slot.as_u64()) {
            return Input::Link {
                node,
                slot: slot as usize,
            };
        }
    }
    Input::Value(v.clone())
}

/// A UI-format node as read, before links are resolved.
struct UiNode<'a> {
    id: String,
    class: String,
    mode: u64,
    raw: &'a Json,
}

/// A link: (origin id, origin slot).
type Origin = (String, usize);

fn id_text(v: &Json) -> Option<String> {
    match v {
        Json::Number(n) => Some(n.to_string()),
        Json::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse_links(obj: &serde_json::Map<String, Json>) -> BTreeMap<String, Origin> {
    let mut links = BTreeMap::new();
    for l in obj
        .get("links")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        // Version 0.4: [id, origin, origin_slot, target, target_slot, type]; version 1:
        // {id, origin_id, origin_slot, target_id, target_slot, type}.
        let parts = match l {
            Json::Array(a) if a.len() >= 3 => (id_text(&a[0]), id_text(&a[1]), a[2].as_u64()),
            Json::Object(o) => (
                o.get("id").and_then(id_text),
                o.get("origin_id").and_then(id_text),
                o.get("origin_slot").and_then(Json::as_u64),
            ),
            _ => continue,
        };
        if let (Some(id), Some(origin), Some(slot)) = parts {
            links.insert(id, (origin, slot as usize));
        }
    }
    links
}

fn parse_ui(obj: &serde_json::Map<String, Json>) -> Result<Workflow, ImportError> {
    let mut wf = Workflow {
        format: Format::Ui,
        ..Default::default()
    };
    for sg in obj
        .pointer_path(&["definitions", "subgraphs"])
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(id) = sg.get("id").and_then(Json::as_str) {
            let name = sg.get("name").and_then(Json::as_str).unwrap_or(id);
            wf.subgraphs.insert(id.to_string(), name.to_string());
        }
    }
    for g in obj
        .get("groups")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = g.get("title").and_then(Json::as_str) {
            if !t.trim().is_empty() {
                wf.notes.push(format!("group: {}", t.trim()));
            }
        }
    }
    let links = parse_links(obj);
    let mut raw: BTreeMap<String, UiNode> = BTreeMap::new();
    for n in obj
        .get("nodes")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(class)) = (
            n.get("id").and_then(id_text),
            n.get("type").and_then(Json::as_str),
        ) else {
            return Err(ImportError::Format(
                "a node of the workflow has no `id` or `type`".into(),
            ));
        };
        raw.insert(
            id.clone(),
            UiNode {
                id,
                class: class.to_string(),
                mode: n.get("mode").and_then(Json::as_u64).unwrap_or(0),
                raw: n,
            },
        );
    }
    for n in raw.values() {
        if classes::is_note(&n.class) {
            if let Some(text) = n.raw.pointer("/widgets_values/0").and_then(Json::as_str) {
                if !text.trim().is_empty() {
                    wf.notes.push(text.trim().to_string());
                }
            }
            continue;
        }
        // Muted nodes (mode 2) do not run; reroutes and primitives are folded into their
        // consumers; bypassed nodes (mode 4) are passed through below.
        if n.mode == 2 || n.mode == 4 || n.class == "Reroute" || n.class == "PrimitiveNode" {
            continue;
        }
        let mut inputs = Vec::new();
        for (name, v) in widget_values(n) {
            inputs.push((name, Input::Value(v)));
        }
        for input in n
            .raw
            .get("inputs")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = input.get("name").and_then(Json::as_str) else {
                continue;
            };
            let Some(link) = input.get("link").and_then(id_text) else {
                continue;
            };
            let resolved = resolve_link(&raw, &links, &link, 0);
            if let Some(slot) = inputs.iter_mut().find(|(n, _)| n == name) {
                slot.1 = resolved;
            } else {
                inputs.push((name.to_string(), resolved));
            }
        }
        let title = n
            .raw
            .get("title")
            .and_then(Json::as_str)
            .filter(|t| *t != n.class)
            .map(str::to_string);
        wf.nodes.insert(
            SortKey::of(&n.id),
            Node {
                id: n.id.clone(),
                class: n.class.clone(),
                title,
                inputs,
            },
        );
    }
    Ok(wf)
}

/// Names a node's widget values from the class table (or from an object, where the node
/// stores them by name). Unknown classes get none: they are reported, not converted.
fn widget_values(n: &UiNode) -> Vec<(String, Json)> {
    match n.raw.get("widgets_values") {
        Some(Json::Object(o)) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(Json::Array(values)) => match classes::widgets(&n.class) {
            Some(names) => classes::name_widgets(names, values),
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Follows a link through reroutes, primitives and bypassed nodes to what it carries.
fn resolve_link(
    raw: &BTreeMap<String, UiNode>,
    links: &BTreeMap<String, Origin>,
    link: &str,
    depth: usize,
) -> Input {
    let Some((origin, slot)) = links.get(link) else {
        return Input::Dropped {
            node: format!("link {link}"),
        };
    };
    let Some(node) = raw.get(origin) else {
        return Input::Dropped {
            node: origin.clone(),
        };
    };
    if depth > 64 {
        return Input::Dropped {
            node: origin.clone(),
        };
    }
    let first_input_link = |pred: &dyn Fn(&Json) -> bool| {
        node.raw
            .get("inputs")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter(|i| pred(i))
            .find_map(|i| i.get("link").and_then(id_text))
    };
    match (node.class.as_str(), node.mode) {
        ("Reroute", _) => match first_input_link(&|_| true) {
            Some(l) => resolve_link(raw, links, &l, depth + 1),
            None => Input::Dropped {
                node: origin.clone(),
            },
        },
        ("PrimitiveNode", _) => match node.raw.pointer("/widgets_values/0") {
            Some(v) => Input::Value(v.clone()),
            None => Input::Dropped {
                node: origin.clone(),
            },
        },
        (_, 2) => Input::Dropped {
            node: origin.clone(),
        },
        (_, 4) => {
            // Bypassed: the output is the first input of the same type.
            let ty = node
                .raw
                .get("outputs")
                .and_then(|o| o.get(*slot))
                .and_then(|o| o.get("type"))
                .cloned();
            match first_input_link(&|i| ty.is_some() && i.get("type") == ty.as_ref()) {
                Some(l) => resolve_link(raw, links, &l, depth + 1),
                None => Input::Dropped {
                    node: origin.clone(),
                },
            }
        }
        _ => Input::Link {
            node: origin.clone(),
            slot: *slot,
        },
    }
}

trait PointerPath {
    fn pointer_path(&self, path: &[&str]) -> Option<&Json>;
}

impl PointerPath for serde_json::Map<String, Json> {
    fn pointer_path(&self, path: &[&str]) -> Option<&Json> {
        let (first, rest) = path.split_first()?;
        let mut v = self.get(*first)?;
        for p in rest {
            v = v.get(*p)?;
        }
        Some(v)
    }
}
