//! Run provenance: what outputs embed so a run can be repeated, and reading it back from PNGs.

use std::io::BufReader;
use std::path::Path;

use serde_json::{json, Value as Json};

use latentflow_interop::a1111;

use crate::graph::{Plan, Source};
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
        "parameters": a1111_parameters(plan),
    })
    .to_string()
}

/// The most an embedded graph may inflate to.
const TEXT_LIMIT: usize = 64 << 20;

/// What a PNG says about how it was made, in the order it is preferred.
#[derive(Debug, Clone, PartialEq)]
pub enum Embedded {
    /// A LatentFlow graph (`latentflow:graph`), as JSON text.
    Graph(String),
    /// ComfyUI's API-format prompt (`prompt`): what it executed.
    ComfyPrompt(String),
    /// ComfyUI's editor workflow (`workflow`).
    ComfyWorkflow(String),
    /// A1111's settings text (`parameters`).
    A1111(String),
}

/// Every text chunk of the PNG at `path` (tEXt, zTXt, iTXt), compressed ones inflated under
/// [`TEXT_LIMIT`]: keyword → text.
fn text_chunks(path: &Path) -> Result<Vec<(String, String)>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let decoder = png::Decoder::new(BufReader::new(file));
    let reader = decoder
        .read_info()
        .map_err(|e| format!("{} is not a readable PNG: {e}", path.display()))?;
    let info = reader.info();
    // Compressed chunks inflate under a limit: a small file must not unpack into gigabytes.
    let too_big = |key: &str, e: png::DecodingError| {
        format!(
            "{}: the `{key}` text chunk does not inflate within {} MiB: {e}",
            path.display(),
            TEXT_LIMIT >> 20
        )
    };
    let mut out = Vec::new();
    for c in &info.uncompressed_latin1_text {
        out.push((c.keyword.clone(), c.text.clone()));
    }
    for c in &info.compressed_latin1_text {
        let mut c = c.clone();
        c.decompress_text_with_limit(TEXT_LIMIT)
            .map_err(|e| too_big(&c.keyword, e))?;
        if let Ok(t) = c.get_text() {
            out.push((c.keyword.clone(), t));
        }
    }
    for c in &info.utf8_text {
        let mut c = c.clone();
        c.decompress_text_with_limit(TEXT_LIMIT)
            .map_err(|e| too_big(&c.keyword, e))?;
        if let Ok(t) = c.get_text() {
            out.push((c.keyword.clone(), t));
        }
    }
    Ok(out)
}

/// Reads how the PNG at `path` was made: a LatentFlow graph, a ComfyUI prompt or workflow, or
/// A1111 parameters.
pub fn embedded(path: &Path) -> Result<Embedded, String> {
    let chunks = text_chunks(path)?;
    let get = |key: &str| {
        chunks
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.clone())
    };
    if let Some(text) = get(GRAPH_KEY) {
        return graph_of(&text).map(Embedded::Graph);
    }
    if let Some(text) = get("prompt") {
        return Ok(Embedded::ComfyPrompt(text));
    }
    if let Some(text) = get("workflow") {
        return Ok(Embedded::ComfyWorkflow(text));
    }
    if let Some(text) = get(a1111::KEY) {
        return Ok(Embedded::A1111(text));
    }
    Err(format!(
        "{} carries no graph: no `{GRAPH_KEY}` (LatentFlow), `prompt` or `workflow` (ComfyUI) or `parameters` (A1111) text chunk",
        path.display()
    ))
}

/// The canonical graph inside provenance JSON (`{"graph": …, "seed": …}`), pretty-printed.
fn graph_of(text: &str) -> Result<String, String> {
    let meta: Json = serde_json::from_str(text)
        .map_err(|e| format!("the embedded graph is not valid JSON: {e}"))?;
    let graph = meta.get("graph").cloned().unwrap_or(meta);
    serde_json::to_string_pretty(&graph).map_err(|e| e.to_string())
}

/// Reads the graph embedded (in XMP) in an animated GIF or WebP written by `video.save`.
pub fn graph_from_video(path: &Path) -> Result<String, String> {
    match latentflow_media::embedded_graph(path).map_err(|e| e.to_string())? {
        Some(text) => graph_of(&text),
        None => Err(format!(
            "{} carries no LatentFlow graph (no `latentflow:graph` XMP property)",
            path.display()
        )),
    }
}

/// Reads the graph embedded in a PNG written by `core.save_image`.
pub fn graph_from_png(path: &Path) -> Result<String, String> {
    match embedded(path)? {
        Embedded::Graph(g) => Ok(g),
        _ => Err(format!(
            "{} carries no LatentFlow graph (no `{GRAPH_KEY}` text chunk)",
            path.display()
        )),
    }
}

/// The A1111 settings text for each `core.save_image` node whose image comes from a
/// `samplers.sample` run on SD text encodes: node id → settings (without `Size`, which the
/// node adds).
pub fn a1111_parameters(plan: &Plan) -> serde_json::Map<String, Json> {
    let mut out = serde_json::Map::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        if n.ty.desc.type_id != "core.save_image" {
            continue;
        }
        if let Some(text) = sampler_upstream(plan, i).and_then(|s| settings(plan, s)) {
            out.insert(n.id.clone(), Json::from(text));
        }
    }
    out
}

/// Producer of input `name` of node `i`.
fn producer(plan: &Plan, i: usize, name: &str) -> Option<usize> {
    let n = &plan.nodes[i];
    let k = n.ty.desc.inputs.iter().position(|p| p.name == name)?;
    match n.inputs.get(k)? {
        Source::Node { node, .. } => Some(*node),
        _ => None,
    }
}

/// The nearest `samplers.sample` upstream of node `i` (breadth first).
fn sampler_upstream(plan: &Plan, i: usize) -> Option<usize> {
    let mut queue = std::collections::VecDeque::from([i]);
    let mut seen = std::collections::HashSet::new();
    while let Some(j) = queue.pop_front() {
        if !seen.insert(j) {
            continue;
        }
        if plan.nodes[j].ty.desc.type_id == "samplers.sample" {
            return Some(j);
        }
        for s in &plan.nodes[j].inputs {
            if let Source::Node { node, .. } = s {
                queue.push_back(*node);
            }
        }
    }
    None
}

fn settings(plan: &Plan, s: usize) -> Option<String> {
    let sample = &plan.nodes[s];
    let text_of = |input: &str| -> Option<(String, i64)> {
        let t = producer(plan, s, input)?;
        let n = &plan.nodes[t];
        (n.ty.desc.type_id == "sd.text_encode").then(|| {
            (
                n.params
                    .get("text")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_string(),
                n.params
                    .get("clip_skip")
                    .and_then(Json::as_i64)
                    .unwrap_or(0),
            )
        })
    };
    let (prompt, clip_skip) = text_of("positive")?;
    let negative = text_of("negative").map(|(t, _)| t).unwrap_or_default();
    let p = &sample.params;
    let kind = p.get("kind").and_then(Json::as_str).unwrap_or("");
    let mut set: Vec<(String, String)> = Vec::new();
    let num = |k: &str| p.get(k).map(|v| v.to_string()).unwrap_or_default();
    set.push(("Steps".into(), num("steps")));
    set.push((
        "Sampler".into(),
        a1111::sampler_name(kind).unwrap_or(kind).to_string(),
    ));
    if p.get("karras").and_then(Json::as_bool) == Some(true) {
        set.push(("Schedule type".into(), "Karras".into()));
    }
    set.push(("CFG scale".into(), num("cfg")));
    set.push(("Seed".into(), num("seed")));
    // The model: through wrappers (LoRA, ControlNet, …) to the loader.
    let mut m = producer(plan, s, "model");
    for _ in 0..64 {
        let Some(j) = m else { break };
        let n = &plan.nodes[j];
        if matches!(
            n.ty.desc.type_id.as_str(),
            "sd.load_checkpoint" | "sd.load_unet"
        ) {
            if let Some(path) = n.params.get("path").and_then(Json::as_str) {
                let stem = Path::new(path)
                    .file_stem()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                set.push(("Model".into(), stem));
            }
            break;
        }
        m = producer(plan, j, "model");
    }
    if clip_skip > 0 {
        set.push(("Clip skip".into(), (clip_skip + 1).to_string()));
    }
    if let Some(st) = p
        .get("strength")
        .and_then(Json::as_f64)
        .filter(|s| *s < 1.0)
    {
        set.push(("Denoising strength".into(), st.to_string()));
    }
    set.push((
        "Version".into(),
        format!("LatentFlow {}", env!("CARGO_PKG_VERSION")),
    ));
    Some(a1111::format(&a1111::Parameters {
        prompt,
        negative,
        settings: set,
    }))
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
