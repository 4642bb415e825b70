//! Loading one plugin library: content-addressed copy, abi_stable header and layout checks,
//! manifest.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use latentflow_plugin_api::{
    NodeBox, NodeDescriptor, NodeError, PluginManifest, PluginModRef, PluginStats, PortType,
    API_VERSION,
};

use crate::isolate::{Isolated, Policy};

/// A loaded plugin generation. Libraries are never unloaded: a newer build of the same file is
/// loaded from its own content-addressed copy and the old one stays mapped.
pub struct Plugin {
    /// Name from the manifest.
    pub name: String,
    /// Version from the manifest.
    pub version: String,
    /// The library file as found (the one watched for changes).
    pub path: PathBuf,
    /// The private copy that was actually loaded.
    pub loaded_from: PathBuf,
    /// blake3 of the library bytes (hex): the plugin's build identity.
    pub build: String,
    /// Where its code runs.
    pub backend: Backend,
    /// Node types it provides.
    pub nodes: Vec<NodeDescriptor>,
    /// Node types it declares that this host cannot read, with the reason (a plugin built
    /// against a newer plugin-api may use port types this host does not know).
    pub unreadable: Vec<String>,
    /// Time spent loading, in seconds.
    pub load_seconds: f64,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .field("build", &self.build)
            .finish_non_exhaustive()
    }
}

/// Where a plugin's code runs.
#[derive(Clone)]
pub enum Backend {
    /// Loaded into the host process.
    InProcess(PluginModRef),
    /// In a worker process of its own (`--isolate`).
    Isolated(Arc<Isolated>),
}

impl Plugin {
    /// The plugin's tensor-traffic counters.
    pub fn stats(&self) -> PluginStats {
        match &self.backend {
            Backend::InProcess(m) => (m.stats())(),
            Backend::Isolated(w) => w.stats(),
        }
    }

    /// Whether it runs in a worker process.
    pub fn isolated(&self) -> Option<&Arc<Isolated>> {
        match &self.backend {
            Backend::Isolated(w) => Some(w),
            Backend::InProcess(_) => None,
        }
    }

    /// The output types of node `type_id` with `params` (JSON), refined by the plugin.
    pub fn infer(&self, type_id: &str, params: &str) -> Result<Vec<PortType>, String> {
        let json: String = match &self.backend {
            Backend::InProcess(m) => (m.infer())(type_id.into(), params.into())
                .into_result()
                .map(Into::into),
            Backend::Isolated(w) => w.infer(type_id, params),
        }
        .map_err(|e| e.message.to_string())?;
        serde_json::from_str(&json)
            .map_err(|e| format!("the plugin's type inference is not readable: {e}"))
    }

    /// Creates an instance of node type `type_id` with `params` (JSON).
    pub fn create_node(&self, type_id: &str, params: &str) -> Result<NodeBox, NodeError> {
        match &self.backend {
            Backend::InProcess(m) => (m.create_node())(type_id.into(), params.into()).into_result(),
            Backend::Isolated(w) => w.create_node(type_id, params),
        }
    }
}

/// Why a library was refused. The message is one readable line; `detail` holds abi_stable's full
/// report for `--verbose`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LoadError {
    /// The library.
    pub path: PathBuf,
    /// One-line reason.
    pub message: String,
    /// Full report, possibly long.
    pub detail: Option<String>,
}

impl LoadError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        LoadError {
            path: path.to_path_buf(),
            message: message.into(),
            detail: None,
        }
    }
}

/// Whether `path` names a shared library on this platform.
pub fn is_library(path: &Path) -> bool {
    let suffix = std::env::consts::DLL_SUFFIX.trim_start_matches('.');
    path.extension().is_some_and(|e| e == suffix)
}

/// Loads the library at `path` into this process, from a private copy in `cache_dir` named by
/// content hash.
pub fn load(path: &Path, cache_dir: &Path) -> Result<Plugin, LoadError> {
    load_as(path, cache_dir, None)
}

/// Loads the library at `path`: into this process, or, with `isolate`, into a worker process of
/// its own.
pub fn load_as(
    path: &Path,
    cache_dir: &Path,
    isolate: Option<&Policy>,
) -> Result<Plugin, LoadError> {
    let started = Instant::now();
    let bytes = fs::read(path).map_err(|e| LoadError::new(path, format!("cannot read: {e}")))?;
    super::elf::check(&bytes).map_err(|m| LoadError::new(path, m))?;
    let build = blake3::hash(&bytes).to_hex().to_string();
    let mut copy = private_copy(path, &bytes, &build, cache_dir)?;
    if let Some(policy) = isolate {
        drop(bytes);
        let worker = Isolated::start(&copy, path, policy.memory_limit())
            .map_err(|m| LoadError::new(path, m))?;
        let json = worker.manifest().map_err(|e| {
            LoadError::new(
                path,
                format!("plugin failed to describe itself: {}", e.message),
            )
        })?;
        return finish(path, copy, build, Backend::Isolated(worker), &json, started);
    }
    let mut opened = lib_header_from_path(&copy);
    if opened.is_err() && !copy.exists() {
        // Another process pruned this copy between our check and the open: copy it again.
        copy = private_copy(path, &bytes, &build, cache_dir)?;
        opened = lib_header_from_path(&copy);
    }
    drop(bytes);

    let header = opened.map_err(|e| summarize(path, e))?;
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| summarize(path, e))?;
    let json = (module.manifest())().into_result().map_err(|e| {
        LoadError::new(
            path,
            format!("plugin failed to describe itself: {}", e.message),
        )
    })?;
    finish(
        path,
        copy,
        build,
        Backend::InProcess(module),
        json.as_str(),
        started,
    )
}

/// Reads the manifest of a loaded library.
fn finish(
    path: &Path,
    copy: PathBuf,
    build: String,
    backend: Backend,
    json: &str,
    started: Instant,
) -> Result<Plugin, LoadError> {
    let manifest: PluginManifest = serde_json::from_str(json)
        .map_err(|e| LoadError::new(path, format!("the plugin's manifest is not readable: {e}")))?;
    let mut nodes = Vec::with_capacity(manifest.nodes.len());
    let mut unreadable = Vec::new();
    for n in manifest.nodes {
        let name = n
            .get("type_id")
            .and_then(|t| t.as_str())
            .unwrap_or("?")
            .to_string();
        match serde_json::from_value::<NodeDescriptor>(n) {
            Ok(d) => nodes.push(d),
            Err(e) => unreadable.push(format!(
                "{name}: {e} (built against plugin-api {}, this host reads {API_VERSION})",
                manifest.api_version
            )),
        }
    }

    Ok(Plugin {
        name: manifest.name.to_string(),
        version: manifest.version.to_string(),
        path: path.to_path_buf(),
        loaded_from: copy,
        build,
        backend,
        nodes,
        unreadable,
        load_seconds: started.elapsed().as_secs_f64(),
    })
}

fn private_copy(
    path: &Path,
    bytes: &[u8],
    build: &str,
    cache_dir: &Path,
) -> Result<PathBuf, LoadError> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let copy = cache_dir.join(format!("{stem}-{}.{ext}", &build[..16]));
    if copy.exists() {
        // Mark it as recently used, so that pruning keeps it.
        if let Ok(f) = fs::File::options().append(true).open(&copy) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        return Ok(copy);
    }
    fs::create_dir_all(cache_dir).map_err(|e| {
        LoadError::new(
            path,
            format!("cannot create plugin cache {}: {e}", cache_dir.display()),
        )
    })?;
    let tmp = cache_dir.join(format!(
        ".{stem}-{}.{}.tmp",
        &build[..16],
        std::process::id()
    ));
    if let Err(e) = fs::write(&tmp, bytes).and_then(|_| fs::rename(&tmp, &copy)) {
        let _ = fs::remove_file(&tmp);
        return Err(LoadError::new(
            path,
            format!("cannot copy into plugin cache: {e}"),
        ));
    }
    prune(cache_dir, &stem, &ext, &copy);
    Ok(copy)
}

/// Copies of one library kept in the cache: a `watch` session rebuilding a plugin would
/// otherwise leave one copy per build behind.
const COPIES_KEPT: usize = 3;

/// Removes all but the [`COPIES_KEPT`] most recently used copies of `stem`. A process that has
/// an older copy loaded keeps its mapping (unlinking a mapped file is safe), so only a process
/// that is about to load a build three rebuilds old can miss it, and then it copies it again.
fn prune(cache_dir: &Path, stem: &str, ext: &str, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    let prefix = format!("{stem}-");
    let suffix = format!(".{ext}");
    let mut copies: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let build = name.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
            let is_copy = build.len() == 16 && build.bytes().all(|b| b.is_ascii_hexdigit());
            let path = e.path();
            if !is_copy || path == keep {
                return None;
            }
            Some((e.metadata().ok()?.modified().ok()?, path))
        })
        .collect();
    copies.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, old) in copies.into_iter().skip(COPIES_KEPT - 1) {
        tracing::debug!(path = %old.display(), "removing an old plugin copy");
        let _ = fs::remove_file(old);
    }
}

/// Turns abi_stable's error (whose layout report can run to hundreds of lines) into one line.
fn summarize(path: &Path, err: LibraryError) -> LoadError {
    let full = err.to_string();
    let message = match &err {
        LibraryError::OpenError { err, .. } => {
            format!("cannot open library: {}", first_line(&err.to_string()))
        }
        LibraryError::GetSymbolError { .. } => {
            "not a LatentFlow plugin (no abi_stable root module symbol; was it built with export_plugin!?)"
                .to_string()
        }
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "incompatible plugin-api: plugin built against plugin-api {actual_version}, this host uses \
             plugin-api {expected_version}; rebuild the plugin against plugin-api {}",
            API_VERSION
        ),
        LibraryError::ParseVersionError(e) => format!("unreadable plugin-api version: {e}"),
        LibraryError::AbiInstability(e) => format!(
            "incompatible plugin-api layout (plugin-api {API_VERSION} on the host): {}; rebuild the \
             plugin against this plugin-api",
            layout_summary(&e.to_string())
        ),
        LibraryError::InvalidAbiHeader(h) => format!(
            "built with an incompatible abi_stable ({h:?}); rebuild the plugin against plugin-api {API_VERSION}"
        ),
        LibraryError::RootModule { err, .. } => {
            format!("plugin failed while initialising: {}", first_line(&err.to_string()))
        }
        _ => first_line(&full).to_string(),
    };
    LoadError {
        path: path.to_path_buf(),
        message,
        detail: Some(full),
    }
}

/// The gist of abi_stable's layout report: its last `Error:` block, as
/// "mismatched type: expected PluginMod, found OldPluginMod".
fn layout_summary(report: &str) -> String {
    let lines: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let Some(at) = lines.iter().rposition(|l| l.starts_with("Error:")) else {
        return "the type layouts differ".into();
    };
    let error = lines[at].trim_start_matches("Error:").trim();
    if error.contains("Expected:") {
        return squeeze(error);
    }
    // `Expected:` and `Found:` carry their value on the same line or the next one.
    let value_after = |label: &str| {
        lines[at..]
            .iter()
            .position(|l| l.starts_with(label))
            .map(|i| {
                let same = lines[at + i].trim_start_matches(label).trim();
                if same.is_empty() {
                    lines.get(at + i + 1).copied().unwrap_or("").to_string()
                } else {
                    same.to_string()
                }
            })
    };
    match (value_after("Expected:"), value_after("Found:")) {
        (Some(e), Some(f)) => format!(
            "{}: expected {}, found {}",
            squeeze(error),
            squeeze(&e),
            squeeze(&f)
        ),
        _ => squeeze(error),
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(s)
}

fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The name abi_stable looks for (kept here so `RootModule` stays in use for docs and checks).
pub const ROOT_MODULE_NAME: &str = <PluginModRef as RootModule>::NAME;

#[cfg(test)]
mod tests {
    use super::{layout_summary, private_copy, COPIES_KEPT};
    use std::path::Path;

    #[test]
    fn the_cache_keeps_only_the_latest_copies_of_a_library() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        let lib = Path::new("/plugins/libfoo.so");
        let other = Path::new("/plugins/libfoo-extra.so");
        let kept = private_copy(other, b"other", &"f".repeat(64), &cache).expect("copy");
        let mut copies = Vec::new();
        for build in 0..6u8 {
            let hash = build.to_string().repeat(64);
            copies.push(private_copy(lib, &[build], &hash, &cache).expect("copy"));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (gone, left) = copies.split_at(copies.len() - COPIES_KEPT);
        assert!(gone.iter().all(|p| !p.exists()), "old copies pruned");
        assert!(left.iter().all(|p| p.exists()), "latest copies kept");
        assert!(kept.exists(), "another library's copy is not touched");
        // Reusing an old-but-kept copy marks it as recent.
        let reused = private_copy(lib, &[3], &"3".repeat(64), &cache).expect("reuse");
        assert_eq!(reused, left[0]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        private_copy(lib, &[9], &"9".repeat(64), &cache).expect("copy");
        assert!(reused.exists() && !left[1].exists());
        assert_eq!(
            std::fs::read_dir(&cache).expect("dir").count(),
            COPIES_KEPT + 1
        );
    }

    #[test]
    fn layout_report_becomes_one_line() {
        let report = "Compared <this>:\n  --- Type Layout ---\n  type:PluginMod\n\n\nError:mismatched type\nExpected:\n    PluginMod\nFound:\n    OldPluginMod\n";
        assert_eq!(
            layout_summary(report),
            "mismatched type: expected PluginMod, found OldPluginMod"
        );
        let report = "...\nError:too many fields Expected: 2 Found: 3\nExpected: 2\nFound: 3\n";
        assert_eq!(
            layout_summary(report),
            "too many fields Expected: 2 Found: 3"
        );
    }
}
