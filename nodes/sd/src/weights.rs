//! Where a model's weights and configuration come from: `.safetensors` files, memory-mapped,
//! optionally under renamed keys (single-file checkpoints).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::SdError;

/// Maps a diffusers parameter name to the name stored in the file.
pub type Rename = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// A set of `.safetensors` files holding one component's weights.
#[derive(Clone)]
pub struct Weights {
    files: Vec<PathBuf>,
    rename: Option<Rename>,
}

impl Weights {
    /// The weights of a diffusers component folder: its `.safetensors` files (a non-variant
    /// file is preferred over `*.fp16.safetensors`; shards are all used).
    pub fn folder(dir: &Path) -> Result<Self, SdError> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| SdError::new(format!("{}: {e}", dir.display())))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        let plain: Vec<PathBuf> = files
            .iter()
            .filter(|p| {
                let stem = p
                    .file_stem()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default();
                !stem.contains('.')
            })
            .cloned()
            .collect();
        let files = if plain.is_empty() { files } else { plain };
        if files.is_empty() {
            return Err(SdError::new(format!(
                "{} has no .safetensors weights (only safetensors are loaded; convert .bin/.ckpt first)",
                dir.display()
            )));
        }
        Ok(Self {
            files,
            rename: None,
        })
    }

    /// One file whose keys `rename` maps diffusers names onto.
    pub fn renamed(file: &Path, rename: Rename) -> Self {
        Self {
            files: vec![file.to_path_buf()],
            rename: Some(rename),
        }
    }

    /// The files.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// A var builder over the memory-mapped files; tensors are converted to `dtype` on access.
    pub fn var_builder(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>, SdError> {
        // SAFETY: the files are mapped read-only; changing them while mapped is not supported.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&self.files, dtype, device) }
            .map_err(|e| SdError::new(format!("{}: {e}", self.files[0].display())))?;
        Ok(match &self.rename {
            Some(r) => {
                let r = r.clone();
                vb.rename_f(move |name| r(name))
            }
            None => vb,
        })
    }
}

/// Reads a JSON configuration file.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T, SdError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SdError::new(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| SdError::new(format!("{}: {e}", path.display())))
}
