//! Reading what a `.safetensors` file holds (names, shapes, element types) from its header
//! alone, so loaders can recognise a checkpoint's layout before building anything.

use std::collections::BTreeMap;
use std::path::Path;

use crate::WeightsError;

/// One tensor's entry in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Element type as safetensors spells it (`F32`, `F16`, `BF16`, ...).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
}

/// The header of a safetensors file: every tensor by name, and the file's metadata.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Tensors by stored name.
    pub tensors: BTreeMap<String, Entry>,
    /// The `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
}

/// Refuses anything that is not a regular file (a FIFO, a device such as `/dev/zero`, a
/// folder) before it is opened for reading or mapping.
pub fn regular_file(path: &Path) -> Result<(), WeightsError> {
    let meta = std::fs::metadata(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(WeightsError::NotSafetensors {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    Ok(())
}

impl Header {
    /// Reads the header of `path` (the file is mapped, nothing else is read).
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        regular_file(path)?;
        let file = std::fs::File::open(path).map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: a read-only mapping of a regular file, used only while this function runs.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
            WeightsError::NotSafetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                (
                    name,
                    Entry {
                        dtype: format!("{:?}", info.dtype),
                        shape: info.shape.clone(),
                    },
                )
            })
            .collect();
        let metadata = meta
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        Ok(Header { tensors, metadata })
    }

    /// Whether any tensor name starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors
            .range(prefix.to_owned()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_regular_files_are_refused() {
        let e = Header::read(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = Header::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_truncated_file_is_not_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        std::fs::write(&p, [200u8, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
        let e = Header::read(&p).unwrap_err().to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
    }

    #[test]
    fn prefixes_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let data = vec![0u8; 24];
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data)
            .unwrap();
        safetensors::serialize_to_file(vec![("model.x.weight", v)], None, &p).unwrap();
        let h = Header::read(&p).unwrap();
        assert!(h.has_prefix("model."));
        assert!(!h.has_prefix("first_stage_model."));
        assert_eq!(h.shape("model.x.weight"), Some(&[2usize, 3][..]));
    }
}
