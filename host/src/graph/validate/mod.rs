//! Validation: a graph file plus the registry become a [`Plan`], or a list of every problem.
//!
//! Nothing runs before validation has passed. All problems are collected, each with its
//! `file:line:column`, the node and a hint. The steps, one file each: graph inputs and `--set`
//! ([`inputs`]), node types and parameters ([`nodes`]), edges ([`wiring`]), cycles and
//! requested outputs ([`order`]), port types and the plan ([`types`]), and the canonical graph
//! embedded in outputs ([`canonical`]).

mod canonical;
mod devices;
mod inputs;
mod nodes;
mod order;
mod sizes;
mod types;
mod wiring;

use std::path::Path;

use serde_json::{Map, Value as Json};

use super::diag::{Diagnostic, Pos};
use super::file::{GraphFile, NodeDef};
use super::plan::{Plan, Source};
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

/// Validates the graph file `file` from its bytes (UTF-8, or UTF-16 with a byte-order mark).
pub fn validate_bytes(
    file: &Path,
    bytes: &[u8],
    registry: &Registry,
    overrides: &Overrides,
) -> Validated {
    match super::source::decode(file, bytes) {
        Ok(text) => validate(file, &text, registry, overrides),
        Err(d) => Validated {
            plan: None,
            diagnostics: vec![*d],
        },
    }
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
                alloc_limit: None,
                default_device: None,
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
        alloc_limit: None,
        default_device: None,
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
    /// The allocation limit, read when a node first declares a size.
    alloc_limit: Option<u64>,
    /// The graph's `device:`, for the loaders that do not set their own.
    default_device: Option<(String, Pos)>,
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
                let message = yaml_message(&e);
                // Some problems the deserializer places vaguely: find their token.
                if let Some((pos, precise)) = super::yaml_positions::locate(&message, text) {
                    self.err("yaml", pos, precise);
                    return None;
                }
                let pos = e.location().map(Pos::from).unwrap_or_default();
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

        self.default_device = self.graph_device(parsed.device.as_ref());
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
