//! Run provenance: what outputs embed so a run can be repeated, and reading it back from PNGs.

use std::io::BufReader;
use std::path::Path;

use serde_json::{json, Value as Json};

use crate::graph::Plan;
use crate::plugins::Registry;

/// The PNG text-chunk keyword holding the canonical graph.
pub const GRAPH_KEY: &str = "latentflow:graph";

/// Provenance JSON for a run: canonical graph, seed, plugin versions, host version.
pub fn metadata(plan: &Plan, registry: &Registry) -> String {
    let plugins: serde_json::Map<String, Json> = registry
        .versions()
        .into_iter()
        .map(|(k, v)| (k, Json::from(v)))
        .collect();
    json!({
        "latentflow": env!("CARGO_PKG_VERSION"),
        "graph": plan.canonical,
        "seed": plan.seed,
        "plugins": plugins,
    })
    .to_string()
}

/// Reads the graph embedded in a PNG written by `core.save_image`.
pub fn graph_from_png(path: &Path) -> Result<String, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let decoder = png::Decoder::new(BufReader::new(file));
    let reader = decoder
        .read_info()
        .map_err(|e| format!("{} is not a readable PNG: {e}", path.display()))?;
    let info = reader.info();
    let from_text = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == GRAPH_KEY)
        .map(|c| c.text.clone());
    let from_ztext = info
        .compressed_latin1_text
        .iter()
        .find(|c| c.keyword == GRAPH_KEY)
        .and_then(|c| c.get_text().ok());
    let from_itext = info
        .utf8_text
        .iter()
        .find(|c| c.keyword == GRAPH_KEY)
        .and_then(|c| c.get_text().ok());
    let text = from_itext.or(from_ztext).or(from_text).ok_or_else(|| {
        format!(
            "{} carries no LatentFlow graph (no `{GRAPH_KEY}` text chunk); only PNGs written by core.save_image do",
            path.display()
        )
    })?;
    let meta: Json = serde_json::from_str(&text)
        .map_err(|e| format!("the embedded graph is not valid JSON: {e}"))?;
    let graph = meta.get("graph").cloned().unwrap_or(meta);
    serde_json::to_string_pretty(&graph).map_err(|e| e.to_string())
}
