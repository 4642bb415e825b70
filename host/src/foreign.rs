//! Graphs from other tools' files: ComfyUI workflows (JSON files, or PNGs carrying a `prompt`
//! or `workflow` chunk) through the importer, and A1111 PNGs (a `parameters` chunk) through
//! the txt2img graph.

use std::path::Path;

use latentflow_interop::{a1111, comfy};
use serde_json::Value as Json;

use crate::provenance::{self, Embedded};

/// The txt2img graph that A1111 settings fill in.
const TXT2IMG: &str = include_str!("../../graphs/txt2img.yaml");

/// A graph text, with what the conversion wants the user to know.
pub struct Converted {
    /// Graph text (YAML or JSON).
    pub text: String,
    /// Notes and warnings, one line each.
    pub notes: Vec<String>,
}

/// Converts a ComfyUI workflow.
pub fn from_comfy(text: &str, source: &Path) -> Result<Converted, String> {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match comfy::import(text, &name) {
        Ok(g) => Ok(Converted {
            text: g.yaml,
            notes: g
                .report
                .notes
                .iter()
                .map(|n| format!("note: {n}"))
                .collect(),
        }),
        Err(e) => Err(format!("{}: {e}", source.display())),
    }
}

/// The settings of the A1111 `parameters` text applied to the txt2img graph; the model comes
/// from `--set model=…` when the user gives it, else from the `Model` setting, by name.
pub fn from_a1111(text: &str, png: &Path, model_set: bool) -> Result<Converted, String> {
    let bad = |e: a1111::ParametersError| format!("{}: A1111 parameters: {e}", png.display());
    let p = a1111::parse(text).map_err(bad)?;
    let mut graph: Json =
        serde_saphyr::from_str(TXT2IMG).map_err(|e| format!("the txt2img graph: {e}"))?;
    let mut set = |name: &str, v: Json| {
        if let Some(slot) = graph.pointer_mut(&format!("/inputs/{name}/default")) {
            *slot = v;
        }
    };
    set("prompt", Json::from(p.prompt.clone()));
    set("negative", Json::from(p.negative.clone()));
    if let Some(s) = p.steps().map_err(bad)? {
        set("steps", Json::from(s));
    }
    if let Some(c) = p.cfg().map_err(bad)? {
        set("cfg", Json::from(c));
    }
    if let Some(s) = p.seed().map_err(bad)? {
        set("seed", Json::from(s));
    }
    if let Some((w, h)) = p.size().map_err(bad)? {
        set("width", Json::from(w));
        set("height", Json::from(h));
    }
    if let Some(c) = p.clip_skip().map_err(bad)? {
        set("clip_skip", Json::from(c));
    }
    if let Some(s) = p.sampler().map_err(bad)? {
        set("sampler", Json::from(s.kind));
        set("karras", Json::from(s.karras));
    }
    let mut notes = Vec::new();
    if model_set {
        // The user's --set model wins; nothing to look up.
    } else if let Some(name) = p.get("Model") {
        let loc = crate::models::locations()?;
        let path = loc.resolve(name).map_err(|e| {
            format!(
                "{}: the image was made with model `{name}`{}: {e}; pass --set model=PATH",
                png.display(),
                p.get("Model hash")
                    .map(|h| format!(" (hash {h})"))
                    .unwrap_or_default()
            )
        })?;
        set("model", Json::from(path.to_string_lossy().into_owned()));
    } else {
        return Err(format!(
            "{}: the A1111 parameters do not say which model made the image (no `Model:` setting); pass --set model=PATH",
            png.display()
        ));
    }
    const USED: &[&str] = &[
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Model",
        "Model hash",
        "Clip skip",
        "Version",
    ];
    let ignored: Vec<String> = p
        .settings
        .iter()
        .filter(|(k, _)| !USED.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    if !ignored.is_empty() {
        notes.push(format!(
            "warning: A1111 settings not reproduced: {}",
            ignored.join(", ")
        ));
    }
    if p.prompt.contains("<lora:") || p.prompt.contains("<hypernet:") {
        notes.push("warning: the prompt's <lora:…> tags are read as text; add an sd.load_lora node (graphs/lora.yaml) to apply them".into());
    }
    notes.push("note: A1111 draws its noise with torch's generator; the settings are reproduced, the pixels are not".into());
    if let Some(obj) = graph.as_object_mut() {
        obj.insert(
            "description".into(),
            Json::from(format!(
                "txt2img with the A1111 settings of {}",
                png.display()
            )),
        );
    }
    Ok(Converted {
        text: serde_json::to_string_pretty(&graph).map_err(|e| e.to_string())?,
        notes,
    })
}

/// The graph a PNG carries, whichever tool wrote it.
pub fn from_png(png: &Path, model_set: bool) -> Result<Converted, String> {
    match provenance::embedded(png)? {
        Embedded::Graph(text) => Ok(Converted {
            text,
            notes: Vec::new(),
        }),
        Embedded::ComfyPrompt(text) | Embedded::ComfyWorkflow(text) => from_comfy(&text, png),
        Embedded::A1111(text) => from_a1111(&text, png, model_set),
    }
}
