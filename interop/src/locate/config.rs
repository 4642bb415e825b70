//! Model folders from a ComfyUI `extra_model_paths.yaml`: a file people already have.
//!
//! ```yaml
//! comfyui:
//!   base_path: /opt/ComfyUI/
//!   checkpoints: models/checkpoints/
//!   loras: |
//!     models/loras
//!     models/LyCORIS
//! a111:
//!   base_path: /opt/stable-diffusion-webui/
//!   checkpoints: models/Stable-diffusion
//!   vae: models/VAE
//! ```
//!
//! Each section has a `base_path` (relative to the file when relative, `~` expanded) and
//! folders by kind, one or several per line. A section with only a `base_path` is read as a
//! ComfyUI installation: `models/<kind>` for every standard kind.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::{Folder, LocateError};

/// The model kinds of a ComfyUI installation's `models/` folder.
pub const COMFY_KINDS: &[&str] = &[
    "checkpoints",
    "diffusion_models",
    "unet",
    "vae",
    "loras",
    "controlnet",
    "clip",
    "text_encoders",
    "clip_vision",
    "embeddings",
    "upscale_models",
];

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// Reads the folders of the file at `path`.
pub fn read(path: &Path) -> Result<Vec<Folder>, LocateError> {
    let text = std::fs::read_to_string(path).map_err(|e| LocateError::Config {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    parse(&text, path)
}

/// Parses the text of the file at `path` (relative base paths are relative to its folder).
pub fn parse(text: &str, path: &Path) -> Result<Vec<Folder>, LocateError> {
    let bad = |message: String| LocateError::Config {
        file: path.to_path_buf(),
        message,
    };
    let doc: Json = serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut folders = Vec::new();
    let Some(sections) = doc.as_object() else {
        if doc.is_null() {
            return Ok(folders);
        }
        return Err(bad(
            "expected sections (for example `comfyui:`) at the top level".into(),
        ));
    };
    for (section, body) in sections {
        let Some(body) = body.as_object() else {
            return Err(bad(format!(
                "section `{section}` is not a mapping of kinds to folders"
            )));
        };
        let base = match body.get("base_path") {
            Some(Json::String(b)) => dir.join(expand_home(b.trim())),
            Some(_) => return Err(bad(format!("`{section}.base_path` is not a string"))),
            None => dir.to_path_buf(),
        };
        let kinds: Vec<(&String, &Json)> = body
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "base_path" | "is_default"))
            .collect();
        if kinds.is_empty() {
            for kind in COMFY_KINDS {
                folders.push(Folder {
                    kind: kind.to_string(),
                    path: base.join("models").join(kind),
                });
            }
            continue;
        }
        for (kind, paths) in kinds {
            let Some(paths) = paths.as_str() else {
                return Err(bad(format!(
                    "`{section}.{kind}` is not a string of folders"
                )));
            };
            for line in paths.lines().map(str::trim).filter(|l| !l.is_empty()) {
                folders.push(Folder {
                    kind: kind.clone(),
                    path: base.join(expand_home(line)),
                });
            }
        }
    }
    Ok(folders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_comfyui_s_example_layout() {
        let text = "a111:\n  base_path: /sd/\n  checkpoints: models/Stable-diffusion\n  loras: |\n    models/Lora\n    models/LyCORIS\ncomfy:\n  base_path: rel/ComfyUI\n";
        let f = parse(text, Path::new("/etc/lf/paths.yaml")).unwrap();
        assert_eq!(f[0].kind, "checkpoints");
        assert_eq!(f[0].path, Path::new("/sd/models/Stable-diffusion"));
        assert_eq!(f[2].path, Path::new("/sd/models/LyCORIS"));
        assert!(f
            .iter()
            .any(|x| x.kind == "loras" && x.path == Path::new("/etc/lf/rel/ComfyUI/models/loras")));
    }

    #[test]
    fn names_the_file_when_it_is_wrong() {
        let e = parse("comfy: [1, 2]\n", Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.yaml") && e.contains("`comfy`"), "{e}");
    }
}
