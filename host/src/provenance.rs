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

/// The most an embedded graph may inflate to.
const TEXT_LIMIT: usize = 64 << 20;

/// The text of the compressed chunk keyed [`GRAPH_KEY`] in `chunks` (zTXt or iTXt), inflated
/// under [`TEXT_LIMIT`].
macro_rules! inflated {
    ($chunks:expr, $too_big:expr) => {
        match $chunks.iter().find(|c| c.keyword == GRAPH_KEY) {
            Some(c) => {
                let mut c = c.clone();
                c.decompress_text_with_limit(TEXT_LIMIT).map_err($too_big)?;
                c.get_text().ok()
            }
            None => None,
        }
    };
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
    // Compressed chunks inflate under a limit: a small file must not unpack into gigabytes.
    let too_big = |e: png::DecodingError| {
        format!(
            "{}: the `{GRAPH_KEY}` text chunk does not inflate within {} MiB: {e}",
            path.display(),
            TEXT_LIMIT >> 20
        )
    };
    let from_ztext = inflated!(info.compressed_latin1_text, too_big);
    let from_itext = inflated!(info.utf8_text, too_big);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_chunk_that_inflates_past_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.png");
        let file = std::fs::File::create(&path).unwrap();
        let mut enc = png::Encoder::new(file, 1, 1);
        enc.set_color(png::ColorType::Grayscale);
        // 80 MiB of spaces compress to a few hundred KiB.
        enc.add_ztxt_chunk(GRAPH_KEY.into(), " ".repeat(80 << 20))
            .unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0]).unwrap();
        w.finish().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
        let err = graph_from_png(&path).unwrap_err();
        assert!(err.contains("does not inflate within 64 MiB"), "{err}");
    }
}
