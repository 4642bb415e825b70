//! `latentflow watch`: re-run a graph when it or a plugin library changes.
//!
//! A graph edit is re-validated and re-run incrementally through the cache. A rebuilt plugin is
//! loaded from a content-addressed copy as a new generation and swapped in between runs; only its
//! cache entries are dropped. A rebuilt plugin that fails to load is refused with one line and the
//! previous generation keeps serving.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::exec::{Event, Executor, RunOptions};
use crate::graph::{validate_bytes, Overrides};
use crate::plugins::{loader, Discovery, Registry};
use crate::provenance;

/// What to watch and how to run.
pub struct WatchConfig {
    /// The graph file.
    pub graph: PathBuf,
    /// `--set` and `--seed`.
    pub overrides: Overrides,
    /// Plugin search path (its folders are watched).
    pub discovery: Discovery,
    /// Run settings (events, output folder, cancel flag, threads).
    pub run: RunOptions,
    /// Cache budget in bytes.
    pub cache_bytes: usize,
    /// Stop after this many runs (for scripts and tests).
    pub exit_after: Option<usize>,
    /// How long a file must be quiet before it counts as settled.
    pub settle: Duration,
    /// Print, after each run, why each node ran or was cached.
    pub explain: bool,
}

/// Why watching stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The file system watcher failed.
    #[error("cannot watch files: {0}")]
    Notify(#[from] notify::Error),
}

/// Watches until cancelled (or `exit_after` runs). Returns the number of runs.
pub fn watch(cfg: WatchConfig, mut registry: Registry) -> Result<usize, WatchError> {
    let (tx, rx) = channel();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = tx.send(res);
    })?;
    let graph_abs = absolute(&cfg.graph);
    let mut dirs: Vec<PathBuf> = vec![graph_abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))];
    dirs.extend(cfg.discovery.watch_dirs().iter().map(|d| absolute(d)));
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!("cannot watch {}: {e}", d.display());
        }
    }
    let events = Arc::clone(&cfg.run.events);
    let mut exec = Executor::new(Some(cfg.cache_bytes));
    let mut runs = 0usize;
    let run_once = |registry: &Registry, exec: &mut Executor| {
        let bytes = match std::fs::read(&cfg.graph) {
            Ok(t) => t,
            Err(e) => {
                events.emit(&Event::GraphChanged {
                    path: cfg.graph.display().to_string(),
                    valid: false,
                    diagnostics: vec![format!("{}: cannot read: {e}", cfg.graph.display())],
                });
                return;
            }
        };
        let v = validate_bytes(&cfg.graph, &bytes, registry, &cfg.overrides);
        let rendered: Vec<String> = v.diagnostics.iter().map(|d| d.to_string()).collect();
        events.emit(&Event::GraphChanged {
            path: cfg.graph.display().to_string(),
            valid: v.plan.is_some(),
            diagnostics: rendered,
        });
        if let Some(plan) = v.plan {
            let mut opts = cfg.run.clone();
            opts.metadata = provenance::metadata(&plan, registry);
            let report = exec.run(&plan, &opts);
            if cfg.explain {
                eprint!("{}", crate::exec::explain(&report));
            }
        }
    };

    run_once(&registry, &mut exec);
    runs += 1;
    while cfg.exit_after.is_none_or(|n| runs < n) {
        if cfg.run.cancel.load(Ordering::Relaxed) {
            break;
        }
        let changed = match collect_changes(&rx, cfg.settle, &cfg.run.cancel) {
            Some(c) => c,
            None => continue,
        };
        let graph_changed = changed.iter().any(|p| same_file(p, &graph_abs));
        let mut plugins_changed = false;
        for path in changed.iter().filter(|p| loader::is_library(p)) {
            if reload(path, &mut registry, &mut exec, &cfg) {
                plugins_changed = true;
            }
        }
        if graph_changed || plugins_changed {
            run_once(&registry, &mut exec);
            runs += 1;
        }
    }
    Ok(runs)
}

fn absolute(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    absolute(a) == *b
}

/// Waits for file events, then for the files to be quiet for `settle`; returns the changed paths.
fn collect_changes(
    rx: &Receiver<notify::Result<notify::Event>>,
    settle: Duration,
    cancel: &std::sync::atomic::AtomicBool,
) -> Option<HashSet<PathBuf>> {
    let first = match rx.recv_timeout(Duration::from_millis(200)) {
        Ok(ev) => ev,
        Err(RecvTimeoutError::Timeout) => return None,
        Err(RecvTimeoutError::Disconnected) => {
            cancel.store(true, Ordering::Relaxed);
            return None;
        }
    };
    let mut paths = HashSet::new();
    let mut add = |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                paths.extend(ev.paths);
            }
        }
    };
    add(first);
    while let Ok(ev) = rx.recv_timeout(settle) {
        add(ev);
    }
    if paths.is_empty() {
        None
    } else {
        Some(paths)
    }
}

/// Loads a rebuilt library as a new generation. Returns whether the registry changed.
fn reload(path: &Path, registry: &mut Registry, exec: &mut Executor, cfg: &WatchConfig) -> bool {
    let events = &cfg.run.events;
    if !path.exists() {
        return false;
    }
    let settled = Instant::now();
    let current = registry.plugin_at(path).cloned();
    if let (Some(cur), Ok(bytes)) = (&current, std::fs::read(path)) {
        if blake3::hash(&bytes).to_hex().as_str() == cur.build {
            return false; // Touched but identical.
        }
    }
    let plugin = match cfg.discovery.load(path) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            if let Some(d) = &e.detail {
                tracing::debug!("full loader report for {}:\n{d}", path.display());
            }
            events.emit(&Event::PluginRefused {
                path: path.display().to_string(),
                error: e.message,
            });
            return false;
        }
    };
    match registry.with_replaced(Arc::clone(&plugin)) {
        Ok(next) => {
            *registry = next;
            if let Some(old) = current {
                let dropped = exec.invalidate_build(&old.build);
                tracing::debug!("dropped {dropped} cache entries of {}", old.path.display());
            }
            events.emit(&Event::PluginReloaded {
                path: path.display().to_string(),
                ms: settled.elapsed().as_secs_f64() * 1e3,
            });
            true
        }
        Err(refusal) => {
            events.emit(&Event::PluginRefused {
                path: path.display().to_string(),
                error: refusal.to_string(),
            });
            false
        }
    }
}
