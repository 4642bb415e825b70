//! The Hugging Face hub cache, read in place (nothing is downloaded).
//!
//! Layout (huggingface_hub): `<cache>/models--<org>--<name>/refs/<branch>` holds a commit
//! hash, `<cache>/models--<org>--<name>/snapshots/<commit>/` the files (symlinks into
//! `blobs/`). The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`.

use std::path::{Path, PathBuf};

use super::LocateError;

/// The cache folder the environment names.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("HF_HUB_CACHE").filter(|c| !c.is_empty()) {
        return Some(PathBuf::from(c));
    }
    if let Some(h) = std::env::var_os("HF_HOME").filter(|c| !c.is_empty()) {
        return Some(Path::new(&h).join("hub"));
    }
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".cache/huggingface/hub"))
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits `org/name[@revision]`; `None` when the text is not a repo id.
pub fn parse_repo_id(text: &str) -> Option<(&str, &str, Option<&str>)> {
    let (repo, rev) = match text.split_once('@') {
        Some((r, v)) => (r, Some(v)),
        None => (text, None),
    };
    let (org, name) = repo.split_once('/')?;
    if !valid_part(org) || !valid_part(name) || rev.is_some_and(|r| !valid_part(r)) {
        return None;
    }
    Some((org, name, rev))
}

/// The snapshot folder of repo `org/name` at `revision` (a branch, tag or commit; default
/// `main`) in `cache`.
pub fn snapshot(
    cache: &Path,
    org: &str,
    name: &str,
    revision: Option<&str>,
) -> Result<Option<PathBuf>, LocateError> {
    let repo = cache.join(format!("models--{org}--{name}"));
    if !repo.is_dir() {
        return Ok(None);
    }
    let snapshots = repo.join("snapshots");
    let rev = revision.unwrap_or("main");
    let commit = match std::fs::read_to_string(repo.join("refs").join(rev)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => rev.to_string(),
    };
    if !valid_part(&commit) {
        return Err(LocateError::Cache {
            repo: format!("{org}/{name}"),
            message: format!("refs/{rev} does not hold a commit hash"),
        });
    }
    let dir = snapshots.join(&commit);
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    // A commit given by prefix, as `git` accepts.
    if revision.is_some() {
        let matches: Vec<PathBuf> = std::fs::read_dir(&snapshots)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(rev))
            .map(|e| e.path())
            .collect();
        if let [one] = matches.as_slice() {
            return Ok(Some(one.clone()));
        }
    }
    Err(LocateError::Cache {
        repo: format!("{org}/{name}"),
        message: format!(
            "revision `{rev}` is not in the cache (snapshots: {})",
            list_snapshots(&snapshots).join(", ")
        ),
    })
}

fn list_snapshots(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    if v.is_empty() {
        v.push("none".into());
    }
    v
}

/// Every repo in the cache with its `main` (or only) snapshot: (repo id, folder).
pub fn repos(cache: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let dir_name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = dir_name.strip_prefix("models--") else {
            continue;
        };
        let Some((org, name)) = rest.split_once("--") else {
            continue;
        };
        let id = format!("{org}/{name}");
        let snap = match snapshot(cache, org, name, None) {
            Ok(Some(s)) => Some(s),
            _ => {
                let all = list_snapshots(&e.path().join("snapshots"));
                match all.as_slice() {
                    [one] if one != "none" => Some(e.path().join("snapshots").join(one)),
                    _ => None,
                }
            }
        };
        if let Some(s) = snap {
            out.push((id, s));
        }
    }
    out.sort();
    out
}
