//! Model names in path parameters: a path parameter whose value is not a file next to the
//! graph may name a model in the Hugging Face hub cache or in the model folders of
//! `$LATENTFLOW_MODEL_PATHS` (ComfyUI's `extra_model_paths.yaml` format); see
//! [`latentflow_interop::locate`].

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use latentflow_interop::locate::{LocateError, Locations};

/// How to name a model, for hints.
pub const HINT: &str = "give a path, a Hugging Face repo id in the local cache (org/name[@revision]), or a name in the model folders of --model-paths / $LATENTFLOW_MODEL_PATHS (ComfyUI's extra_model_paths.yaml format); `latentflow models` lists what is found";

static LOCATIONS: OnceLock<Result<Locations, String>> = OnceLock::new();

/// The locations the environment names, read once per process.
pub fn locations() -> Result<&'static Locations, String> {
    LOCATIONS
        .get_or_init(|| Locations::from_env().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Extensions that make a missing path read as a model name (so that a name that does not
/// resolve is an error before the run, with close matches).
const MODEL_EXTENSIONS: &[&str] = &["safetensors", "sft", "ckpt", "pt", "pth", "bin", "gguf"];

fn looks_like_a_model(value: &str) -> bool {
    let ext = Path::new(value)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    MODEL_EXTENSIONS.iter().any(|m| ext.eq_ignore_ascii_case(m))
        || latentflow_interop::locate::hf::parse_repo_id(value).is_some()
}

/// Resolves a path parameter's `value` that is not a file at `tried`: `Ok(Some(path))` when
/// it names a model, `Ok(None)` when it is not meant as a name (the node reports the missing
/// file), `Err` when it is meant as a name and does not resolve.
pub fn resolve_missing(value: &str, tried: &Path) -> Result<Option<PathBuf>, String> {
    if value.starts_with('.') || Path::new(value).is_absolute() {
        return Ok(None);
    }
    let loc = locations()?;
    match loc.resolve(value) {
        Ok(p) => Ok(Some(p)),
        Err(LocateError::NotFound { .. }) if !looks_like_a_model(value) => Ok(None),
        Err(e) => Err(format!(
            "`{value}` is not a file ({} does not exist), and {e}",
            tried.display()
        )),
    }
}
