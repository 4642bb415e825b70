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

/// A component's tensors loaded once (converted to f32) and shared: a model and the variants
/// made from it (LoRA) hold the same untouched tensors, not copies.
#[derive(Clone)]
pub struct Store {
    tensors: Arc<std::collections::HashMap<String, candle_core::Tensor>>,
    rename: Option<Rename>,
    /// Parameter names (diffusers / transformers) the model asked for when it was built.
    names: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Store {
    /// Loads the tensors of `weights` whose stored name passes `keep`.
    pub fn load(weights: &Weights, keep: impl Fn(&str) -> bool) -> Result<Self, SdError> {
        let mut tensors = std::collections::HashMap::new();
        for file in &weights.files {
            let err = |e: candle_core::Error| SdError::new(format!("{}: {e}", file.display()));
            // SAFETY: the file is mapped read-only while its tensors are copied out.
            let st =
                unsafe { candle_core::safetensors::MmapedSafetensors::new(file) }.map_err(err)?;
            for (name, _) in st.tensors() {
                if keep(&name) {
                    let t = st.load(&name, &Device::Cpu).map_err(err)?;
                    let t = t.to_dtype(DType::F32).map_err(err)?;
                    tensors.insert(name, t);
                }
            }
        }
        Ok(Self {
            tensors: Arc::new(tensors),
            rename: weights.rename.clone(),
            names: Default::default(),
        })
    }

    /// The stored name of a model parameter.
    pub fn stored_name(&self, name: &str) -> String {
        match &self.rename {
            Some(r) => r(name),
            None => name.to_owned(),
        }
    }

    /// A tensor by stored name.
    pub fn get(&self, stored: &str) -> Option<&candle_core::Tensor> {
        self.tensors.get(stored)
    }

    /// The parameter names the model built from this store asked for.
    pub fn names(&self) -> Vec<String> {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A var builder over the tensors (no copies); records the names asked for.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        let map: std::collections::HashMap<String, candle_core::Tensor> = (*self.tensors).clone();
        let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
        let rename = self.rename.clone();
        let names = self.names.clone();
        vb.rename_f(move |name| {
            names
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name.to_owned());
            match &rename {
                Some(r) => r(name),
                None => name.to_owned(),
            }
        })
    }

    /// The same store with some tensors (by stored name) replaced; the others are shared.
    pub fn with(&self, replaced: std::collections::HashMap<String, candle_core::Tensor>) -> Self {
        let mut map = (*self.tensors).clone();
        map.extend(replaced);
        Self {
            tensors: Arc::new(map),
            rename: self.rename.clone(),
            names: Default::default(),
        }
    }
}
