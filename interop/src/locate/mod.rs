//! Finding models by name where people keep them; nothing is ever downloaded.
//!
//! A name resolves, in this order, to:
//! 1. a Hugging Face repo id, `org/name` or `org/name@revision`, in the local hub cache
//!    ([`hf`]);
//! 2. a file or diffusers folder in the configured model folders ([`config`]: ComfyUI's
//!    `extra_model_paths.yaml` format), matched by its path inside the folder
//!    (`SD1.5/dreamshaper.safetensors`), its file name, or its file name without the extension.
//!
//! A name that matches nothing gets an error listing the close matches; a name that matches
//! two different files gets an error listing both.

pub mod config;
mod describe;
pub mod hf;

use std::path::{Path, PathBuf};

pub use describe::{describe, Info};

/// One model folder and the kind ComfyUI files under it (`checkpoints`, `loras`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// The kind (the key in `extra_model_paths.yaml`).
    pub kind: String,
    /// The folder.
    pub path: PathBuf,
}

/// Where to look.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    /// Model folders, in the order they are searched.
    pub folders: Vec<Folder>,
    /// The Hugging Face hub cache, if any.
    pub hf_cache: Option<PathBuf>,
}

/// A model found in one of the locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The name to use it by.
    pub name: String,
    /// `hf` for the hub cache, else the folder's kind.
    pub kind: String,
    /// Where it is.
    pub path: PathBuf,
}

/// Why a name did not resolve, or a location could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Nothing by that name.
    #[error("no model named `{name}` in {searched}{}", close_text(close))]
    NotFound {
        /// The name.
        name: String,
        /// What was searched, for the message.
        searched: String,
        /// Names that come close.
        close: Vec<String>,
    },
    /// Several different models by that name.
    #[error("`{name}` names several models: {}; use a longer name or a path", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The name.
        name: String,
        /// The candidates.
        paths: Vec<PathBuf>,
    },
    /// A model-paths file that cannot be used.
    #[error("{}: {message}", file.display())]
    Config {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A repo in the hub cache without the revision asked for.
    #[error("Hugging Face cache, {repo}: {message}")]
    Cache {
        /// `org/name`.
        repo: String,
        /// What is wrong.
        message: String,
    },
    /// A file whose header cannot be read.
    #[error("{}: {message}", path.display())]
    Describe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn close_text(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!("; close matches: {}", close.join(", "))
    }
}

/// File extensions of model weights.
const MODEL_EXTENSIONS: &[&str] = &["safetensors", "sft", "ckpt", "pt", "pth", "bin", "gguf"];

fn is_model_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| MODEL_EXTENSIONS.iter().any(|m| e.eq_ignore_ascii_case(m)))
}

/// A diffusers folder: a pipeline (`model_index.json`) or a component (`config.json` next to
/// weights).
fn is_model_folder(p: &Path) -> bool {
    p.join("model_index.json").is_file()
        || (p.join("config.json").is_file()
            && std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| is_model_file(&e.path())))
}

/// The most folder levels searched below a model folder.
const MAX_DEPTH: usize = 8;

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<(String, PathBuf)>) {
    if depth > MAX_DEPTH {
        return;
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p
            .strip_prefix(root)
            .map(|r| r.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        if p.is_dir() {
            if is_model_folder(&p) {
                out.push((rel, p));
            } else {
                walk(root, &p, depth + 1, out);
            }
        } else if p.is_file() && is_model_file(&p) {
            out.push((rel, p));
        }
    }
}

fn stem(rel: &str) -> &str {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    match file.rsplit_once('.') {
        Some((s, ext)) if MODEL_EXTENSIONS.iter().any(|m| ext.eq_ignore_ascii_case(m)) => s,
        _ => file,
    }
}

impl Locations {
    /// The locations the environment names: `$LATENTFLOW_MODEL_PATHS` (one or more
    /// `extra_model_paths.yaml`-format files, separated by `:`) and the hub cache.
    pub fn from_env() -> Result<Self, LocateError> {
        let mut loc = Locations {
            folders: Vec::new(),
            hf_cache: hf::cache_dir(),
        };
        if let Some(files) = std::env::var_os("LATENTFLOW_MODEL_PATHS") {
            for f in std::env::split_paths(&files).filter(|f| !f.as_os_str().is_empty()) {
                loc.folders.extend(config::read(&f)?);
            }
        }
        Ok(loc)
    }

    /// Everything in the folders and the cache.
    pub fn list(&self) -> Vec<Found> {
        let mut out = Vec::new();
        if let Some(cache) = &self.hf_cache {
            for (id, path) in hf::repos(cache) {
                out.push(Found {
                    name: id,
                    kind: "hf".into(),
                    path,
                });
            }
        }
        for f in &self.folders {
            let mut files = Vec::new();
            walk(&f.path, &f.path, 0, &mut files);
            for (rel, path) in files {
                out.push(Found {
                    name: rel,
                    kind: f.kind.clone(),
                    path,
                });
            }
        }
        out
    }

    fn searched(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.hf_cache {
            parts.push(format!("the Hugging Face cache {}", c.display()));
        }
        if self.folders.is_empty() {
            parts.push(
                "no model folders (set LATENTFLOW_MODEL_PATHS to an extra_model_paths.yaml)".into(),
            );
        } else {
            parts.push(format!(
                "{} model folder{}",
                self.folders.len(),
                if self.folders.len() == 1 { "" } else { "s" }
            ));
        }
        parts.join(" and ")
    }

    /// Resolves `name`.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, LocateError> {
        let name = name.trim().replace('\\', "/");
        if let (Some(cache), Some((org, repo, rev))) = (&self.hf_cache, hf::parse_repo_id(&name)) {
            if let Some(dir) = hf::snapshot(cache, org, repo, rev)? {
                return Ok(dir);
            }
        }
        let all = self.list();
        let by = |f: &dyn Fn(&Found) -> bool| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = all
                .iter()
                .filter(|x| x.kind != "hf" && f(x))
                .map(|x| x.path.clone())
                .collect();
            // The same file reached through two folders is one model.
            v.sort_by_key(|p| p.canonicalize().unwrap_or_else(|_| p.clone()));
            v.dedup_by_key(|p| p.canonicalize().unwrap_or_else(|_| p.clone()));
            v
        };
        let file_of = |rel: &str| rel.rsplit('/').next().unwrap_or(rel).to_string();
        for matches in [
            by(&|x| x.name == name),
            by(&|x| file_of(&x.name) == name),
            by(&|x| stem(&x.name) == name),
        ] {
            match matches.len() {
                0 => continue,
                1 => return Ok(matches.into_iter().next().unwrap_or_default()),
                _ => {
                    return Err(LocateError::Ambiguous {
                        name: name.to_string(),
                        paths: matches,
                    })
                }
            }
        }
        Err(LocateError::NotFound {
            name: name.to_string(),
            searched: self.searched(),
            close: close_matches(&name, all.iter().map(|f| f.name.as_str())),
        })
    }
}

/// Up to five names that come close to `name`, best first.
pub fn close_matches<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let lower = name.to_lowercase();
    let want = stem(&lower).to_string();
    let mut scored: Vec<(f64, String)> = names
        .map(|n| {
            let l = n.to_lowercase();
            let s = stem(&l);
            let mut score = strsim::jaro_winkler(&want, s);
            if s.contains(&want) || want.contains(s) {
                score = score.max(0.9);
            }
            (score, n.to_string())
        })
        .filter(|(s, _)| *s >= 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(5).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn resolves_by_path_file_name_and_stem() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoints");
        touch(&ck.join("SD1.5/dreamshaper_8.safetensors"));
        touch(&ck.join("v1-5-pruned-emaonly.ckpt"));
        let loc = Locations {
            folders: vec![Folder {
                kind: "checkpoints".into(),
                path: ck.clone(),
            }],
            hf_cache: None,
        };
        let want = ck.join("SD1.5/dreamshaper_8.safetensors");
        assert_eq!(
            loc.resolve("SD1.5/dreamshaper_8.safetensors").unwrap(),
            want
        );
        assert_eq!(
            loc.resolve("SD1.5\\dreamshaper_8.safetensors").unwrap(),
            want
        );
        assert_eq!(loc.resolve("dreamshaper_8.safetensors").unwrap(), want);
        assert_eq!(loc.resolve("dreamshaper_8").unwrap(), want);
        let e = loc.resolve("dreamshaper_7").unwrap_err().to_string();
        assert!(
            e.contains("close matches: SD1.5/dreamshaper_8.safetensors"),
            "{e}"
        );
    }

    #[test]
    fn two_files_by_one_name_are_ambiguous() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("a/model.safetensors"));
        touch(&d.path().join("b/model.safetensors"));
        let loc = Locations {
            folders: vec![Folder {
                kind: "checkpoints".into(),
                path: d.path().to_path_buf(),
            }],
            hf_cache: None,
        };
        let e = loc.resolve("model").unwrap_err().to_string();
        assert!(e.contains("names several models"), "{e}");
    }

    #[test]
    fn resolves_hub_cache_repo_ids_and_revisions() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("models--org--tiny");
        touch(&repo.join("snapshots/abc123/model_index.json"));
        touch(&repo.join("snapshots/def456/model_index.json"));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        std::fs::write(repo.join("refs/fp16"), "def456").unwrap();
        let loc = Locations {
            folders: vec![],
            hf_cache: Some(d.path().to_path_buf()),
        };
        assert_eq!(
            loc.resolve("org/tiny").unwrap(),
            repo.join("snapshots/abc123")
        );
        assert_eq!(
            loc.resolve("org/tiny@fp16").unwrap(),
            repo.join("snapshots/def456")
        );
        assert_eq!(
            loc.resolve("org/tiny@def4").unwrap(),
            repo.join("snapshots/def456")
        );
        let e = loc.resolve("org/tiny@v9").unwrap_err().to_string();
        assert!(e.contains("revision `v9` is not in the cache"), "{e}");
        assert!(loc.resolve("org/../../etc").is_err());
        assert_eq!(loc.list()[0].name, "org/tiny");
    }
}
