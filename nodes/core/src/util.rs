//! Helpers shared by the core nodes: safe output paths, atomic writes, tensor conversions.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::{NodeError, Tensor, Value};

/// Converts any error into a node failure.
pub fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

/// `filename` inside `output_dir`, refusing absolute paths and `..`, creating parent folders.
pub fn output_path(output_dir: &Path, filename: &str) -> Result<PathBuf, NodeError> {
    let rel = Path::new(filename);
    if filename.trim().is_empty() {
        return Err(NodeError::failed("the file name is empty"));
    }
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(NodeError::failed(format!(
            "output path `{filename}` must stay inside the output folder (no absolute paths, no `..`)"
        )));
    }
    std::fs::create_dir_all(output_dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", output_dir.display())))?;
    let root = output_dir.canonicalize().map_err(fail)?;
    let outside = || {
        NodeError::failed(format!(
            "output path `{filename}` leads outside the output folder"
        ))
    };
    // Folder by folder: nothing is created until the folder it goes in is known to be inside
    // (a symlinked folder must not lead out).
    let mut dir = root.clone();
    let folders = rel.parent().map(Path::components).into_iter().flatten();
    for part in folders.filter(|c| matches!(c, Component::Normal(_))) {
        let next = dir.join(part);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                dir = next.canonicalize().map_err(|_| outside())?;
                if !dir.starts_with(&root) || !dir.is_dir() {
                    return Err(outside());
                }
            }
            Ok(m) if m.is_dir() => dir = next,
            Ok(_) => {
                return Err(NodeError::failed(format!(
                    "cannot write `{filename}`: {} is not a folder",
                    next.display()
                )))
            }
            Err(_) => {
                std::fs::create_dir(&next)
                    .map_err(|e| fail(format!("cannot create {}: {e}", next.display())))?;
                dir = next;
            }
        }
    }
    let name = rel
        .file_name()
        .ok_or_else(|| NodeError::failed("the file name is empty"))?;
    Ok(dir.join(name))
}

/// Writes a file atomically: a temporary file in the same folder, synced, then renamed over.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), NodeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        write(&mut f)?;
        f.flush()?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(format!("cannot write {}: {e}", path.display())));
    }
    Ok(())
}

/// Input tensor as f32 candle tensor on the CPU (copies).
pub fn candle_f32(t: &Tensor) -> Result<CTensor, NodeError> {
    to_candle(t, &Device::Cpu)?
        .to_dtype(candle_core::DType::F32)
        .map_err(fail)
}

/// Exports a candle tensor as a value (no copy).
pub fn out(t: &CTensor) -> Result<Value, NodeError> {
    Ok(Value::Tensor(from_candle(t)?))
}

/// Checks the rank of an input tensor.
pub fn expect_rank(name: &str, t: &Tensor, rank: usize, layout: &str) -> Result<(), NodeError> {
    if t.rank() != rank {
        return Err(NodeError::invalid(format!(
            "`{name}` must be a rank-{rank} tensor ({layout}), got shape {:?}",
            t.shape()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_folder_cannot_lead_outside_and_nothing_is_created_there() {
        let base = std::env::temp_dir().join(format!("lf-out-{}", std::process::id()));
        let (out, elsewhere) = (base.join("output"), base.join("elsewhere"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("link")).unwrap();
        let err = output_path(&out, "link/deeper/x.png").unwrap_err();
        assert!(err.to_string().contains("leads outside"), "{err}");
        assert!(
            !elsewhere.join("deeper").exists(),
            "nothing created outside"
        );
        // Inside, folders are made as needed.
        let ok = output_path(&out, "a/b/x.png").unwrap();
        assert!(ok.parent().unwrap().is_dir() && ok.ends_with("a/b/x.png"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
