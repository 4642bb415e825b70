//! The set of `.safetensors` files that hold one component's weights, and how their keys map
//! onto the model's parameter names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::inspect::regular_file;
use crate::reader::TensorFiles;
use crate::WeightsError;

/// Maps a model parameter name (diffusers / transformers spelling) to the name stored in the
/// file (single-file checkpoints use other layouts).
pub type Rename = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// One component's weight files.
#[derive(Clone)]
pub struct Weights {
    files: Vec<PathBuf>,
    rename: Option<Rename>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("files", &self.files)
            .field("renamed", &self.rename.is_some())
            .finish()
    }
}

/// Index files that transformers and diffusers write next to sharded weights.
const INDEX_SUFFIX: &str = ".safetensors.index.json";

impl Weights {
    /// The weights of a component folder. A shard index (`*.safetensors.index.json`) names the
    /// files; otherwise every `.safetensors` file is used, a plain one preferred over variants
    /// such as `*.fp16.safetensors`.
    pub fn folder(dir: &Path) -> Result<Self, WeightsError> {
        let entries = std::fs::read_dir(dir).map_err(|source| WeightsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        let name = |p: &Path| {
            p.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let indexes: Vec<&PathBuf> = paths
            .iter()
            .filter(|p| name(p).ends_with(INDEX_SUFFIX))
            .collect();
        // A plain index (model.safetensors.index.json) before variants (…fp16.safetensors.index.json).
        if let Some(index) = indexes
            .iter()
            .find(|p| !name(p).trim_end_matches(INDEX_SUFFIX).contains('.'))
            .or(indexes.first())
        {
            return Self::sharded(index);
        }
        let files: Vec<PathBuf> = paths
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .cloned()
            .collect();
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
            return Err(WeightsError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        for f in &files {
            regular_file(f)?;
        }
        Ok(Self {
            files,
            rename: None,
        })
    }

    /// The shards named by a `*.safetensors.index.json` (its `weight_map`).
    pub fn sharded(index: &Path) -> Result<Self, WeightsError> {
        regular_file(index)?;
        let text = std::fs::read_to_string(index).map_err(|source| WeightsError::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| WeightsError::BadIndex {
            index: index.to_path_buf(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards = BTreeSet::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("`{tensor}` maps to a non-string")))?;
            // Shards live next to the index: no paths, no escapes.
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(bad(format!("shard name `{file}` is not a plain file name")));
            }
            shards.insert(file.to_owned());
        }
        if shards.is_empty() {
            return Err(bad("the weight map is empty".into()));
        }
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let path = dir.join(&shard);
            if !path.is_file() {
                return Err(WeightsError::MissingShard {
                    index: index.to_path_buf(),
                    shard,
                });
            }
            files.push(path);
        }
        Ok(Self {
            files,
            rename: None,
        })
    }

    /// One `.safetensors` file (or a shard index) under the model's own names.
    pub fn file(path: &Path) -> Result<Self, WeightsError> {
        if path.to_string_lossy().ends_with(INDEX_SUFFIX) {
            return Self::sharded(path);
        }
        regular_file(path)?;
        Ok(Self {
            files: vec![path.to_path_buf()],
            rename: None,
        })
    }

    /// One file whose keys `rename` maps the model's names onto.
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

    /// The renaming, if any.
    pub fn rename(&self) -> Option<&Rename> {
        self.rename.as_ref()
    }

    /// A var builder over the files; each tensor is read when the model asks for it and
    /// converted to `dtype`, so the weights are held once (no mapping stays resident).
    pub fn var_builder(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>, WeightsError> {
        let files = TensorFiles::open(&self.files)?;
        let vb = VarBuilder::from_backend(Box::new(files), dtype, device.clone());
        Ok(match &self.rename {
            Some(r) => {
                let r = r.clone();
                vb.rename_f(move |name| r(name))
            }
            None => vb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_st(path: &Path, names: &[&str]) {
        let data = vec![0u8; 4];
        let views: Vec<(String, safetensors::tensor::TensorView)> = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn a_shard_index_names_the_files() {
        let dir = tempfile::tempdir().unwrap();
        write_st(&dir.path().join("model-00001-of-00002.safetensors"), &["a"]);
        write_st(&dir.path().join("model-00002-of-00002.safetensors"), &["b"]);
        write_st(&dir.path().join("stray.safetensors"), &["c"]);
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let w = Weights::folder(dir.path()).unwrap();
        assert_eq!(w.files().len(), 2);
        let vb = w.var_builder(DType::F32, &Device::Cpu).unwrap();
        assert!(vb.contains_tensor("a") && vb.contains_tensor("b") && !vb.contains_tensor("c"));
    }

    #[test]
    fn bad_indexes_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(&index, r#"{"weight_map": {"a": "missing.safetensors"}}"#).unwrap();
        let e = Weights::folder(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("missing.safetensors") && e.contains("index.json"),
            "{e}"
        );
        std::fs::write(&index, r#"{"weight_map": {"a": "../escape.safetensors"}}"#).unwrap();
        let e = Weights::folder(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a plain file name"), "{e}");
        std::fs::write(&index, r#"[1, 2]"#).unwrap();
        let e = Weights::folder(dir.path()).unwrap_err().to_string();
        assert!(e.contains("weight_map"), "{e}");
    }

    #[test]
    fn a_folder_without_weights_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let e = Weights::folder(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no .safetensors weights"), "{e}");
    }
}
