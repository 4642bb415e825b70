//! The node's view of the host during a call.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::NodeError;
use crate::host::{HostRef, LogLevel};

/// Host services for one node call: logging, progress, cancellation, seeds.
pub struct Ctx<'a> {
    host: HostRef<'a>,
}

impl<'a> Ctx<'a> {
    /// Wraps the host handle passed to a node call.
    pub fn new(host: HostRef<'a>) -> Self {
        Ctx { host }
    }

    /// The raw host handle, to pass on to objects from other plugins.
    pub fn host(&self) -> HostRef<'_> {
        self.host.sabi_reborrow()
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.host.log(LogLevel::Info, message.into());
    }

    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        self.host.log(LogLevel::Warn, message.into());
    }

    /// Logs at debug level.
    pub fn debug(&self, message: &str) {
        self.host.log(LogLevel::Debug, message.into());
    }

    /// Reports progress; returns `Err(cancelled)` if the run was cancelled, so loops can use `?`.
    pub fn progress(&self, done: u64, total: u64, message: &str) -> Result<(), NodeError> {
        if self.host.progress(done, total, message.into()) {
            Err(NodeError::cancelled())
        } else {
            Ok(())
        }
    }

    /// Returns `Err(cancelled)` if the run was cancelled.
    pub fn check_cancelled(&self) -> Result<(), NodeError> {
        if self.host.is_cancelled() {
            Err(NodeError::cancelled())
        } else {
            Ok(())
        }
    }

    /// This node's seed for this run (stable across runs with the same run seed).
    pub fn seed(&self) -> u64 {
        self.host.seed()
    }

    /// A ChaCha8 generator seeded with `seed`. The stream is portable and stable across
    /// platforms and releases of `rand_chacha` 0.9.
    pub fn rng_from(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// The graph node id being executed.
    pub fn node_id(&self) -> String {
        self.host.node_id().into()
    }

    /// Run provenance as JSON (graph, params, seed, plugin versions).
    pub fn run_metadata(&self) -> String {
        self.host.run_metadata().into()
    }

    /// Folder that file outputs must stay inside.
    pub fn output_dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(self.host.output_dir().as_str())
    }

    /// The host's GPU device service (opened on first use); an error names what the host tried
    /// and found when it has none.
    pub fn gpu(&self) -> Result<crate::gpu::GpuRef, NodeError> {
        self.host.gpu().into_result()
    }

    /// The most bytes one result of this node may take.
    pub fn alloc_limit(&self) -> u64 {
        self.host.alloc_limit()
    }

    /// Checks that `elements` values of `bytes_each` bytes (`what`, for the message) fit the
    /// allocation limit, before allocating them. Overflowing sizes are refused too.
    pub fn check_alloc(
        &self,
        what: &str,
        elements: &[usize],
        bytes_each: usize,
    ) -> Result<(), NodeError> {
        let total = elements
            .iter()
            .try_fold(bytes_each as u128, |acc, &d| acc.checked_mul(d as u128));
        let limit = self.alloc_limit();
        match total {
            Some(t) if t <= limit as u128 => Ok(()),
            Some(t) => Err(NodeError::too_large(format!(
                "{what} {elements:?} would take {} but one result may take at most {} (set LATENTFLOW_ALLOC_LIMIT to change it)",
                human_bytes(t),
                human_bytes(limit as u128)
            ))),
            None => Err(NodeError::too_large(format!(
                "{what} {elements:?} is too large to address"
            ))),
        }
    }
}

/// `1.5 GiB`, `12 MiB`, `300 B`.
pub fn human_bytes(b: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
