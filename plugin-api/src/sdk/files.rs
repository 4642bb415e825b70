//! Files a node writes: paths kept inside the run's output folder, and atomic writes.
//!
//! Every plugin that saves something uses these, so that no graph can write outside the output
//! folder (absolute paths, `..`, symlinked folders leading out) and no reader ever sees half a
//! file.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use crate::NodeError;

fn fail(e: impl std::fmt::Display) -> NodeError {
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
