//! Isolated plugins: a plugin's nodes and objects run in a child worker process, so that a
//! segfault, abort, stack overflow or runaway allocation inside the plugin fails the node that
//! was running instead of the host.
//!
//! - The worker is this binary started as `latentflow __plugin-worker LIBRARY` ([`worker_main`]).
//!   It loads the library and serves requests; it dies with the host.
//! - Each conversation has its own Unix socket ([`conn`]); the host opens one per concurrent
//!   call and keeps them in a pool. Calls nest both ways: a node in the worker may call an object
//!   of the host (a denoiser from another plugin) while the host waits for the node ([`session`]).
//! - Values travel flattened ([`wire`]); objects as ids into the sender's table, with proxies on
//!   the other side ([`peer`]); tensors as sealed shared-memory segments ([`shm`]): written once
//!   when they come from ordinary memory, passed on by descriptor when they already are shared.
//! - A crash fails the calls in flight with one line naming the plugin and the signal; the next
//!   call starts a fresh worker ([`client`]), and cached values holding the dead worker's objects
//!   are not served again ([`holds_dead_objects`]).
//!
//! Linux only: it relies on memfd seals and `SCM_RIGHTS`.

mod client;
mod conn;
mod peer;
mod server;
mod session;
mod shm;
mod wire;

use std::path::Path;

pub use client::Isolated;
pub use peer::holds_dead_objects;
pub use server::{worker_main, WORKER_ARG};

/// A file that, present in a plugin folder, isolates every plugin in that folder.
pub const FOLDER_MARKER: &str = ".latentflow-isolate";

/// Which plugins run isolated, and with what limits.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Every plugin (`--isolate`).
    pub all: bool,
    /// Plugins named by file stem, with or without the `lib` prefix (`--isolate-plugin`).
    pub names: Vec<String>,
    /// The data-segment limit of each worker, in bytes (`--isolate-memory`).
    pub memory: Option<u64>,
}

impl Policy {
    /// Whether the library at `path` runs isolated.
    pub fn applies(&self, path: &Path) -> bool {
        if self.all {
            return true;
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bare = stem
            .strip_prefix(std::env::consts::DLL_PREFIX)
            .unwrap_or(&stem);
        if self.names.iter().any(|n| n == &stem || n == bare) {
            return true;
        }
        path.parent()
            .is_some_and(|dir| dir.join(FOLDER_MARKER).is_file())
    }

    /// The worker memory limit: the one set, else three quarters of physical memory.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory
            .or_else(|| crate::limits::physical_memory().map(|m| m / 4 * 3))
    }
}

/// Raises the soft limit on open files to the hard limit: every shared tensor keeps a
/// descriptor open while it lives.
pub fn raise_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}
