//! Counters of the plugin's own tensor traffic (shown by `latentflow run --verbose`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::descriptor::PluginStats;

static BYTES_COPIED_IN: AtomicU64 = AtomicU64::new(0);
static TENSORS_EXPORTED: AtomicU64 = AtomicU64::new(0);
static TENSORS_REUSED: AtomicU64 = AtomicU64::new(0);

/// Records `bytes` copied while importing a tensor.
pub fn add_copied(bytes: u64) {
    BYTES_COPIED_IN.fetch_add(bytes, Ordering::Relaxed);
}

/// Records one tensor exported without copying.
pub fn add_exported() {
    TENSORS_EXPORTED.fetch_add(1, Ordering::Relaxed);
}

/// Records one tensor imported without copying (the plugin's own, handed back).
pub fn add_reused() {
    TENSORS_REUSED.fetch_add(1, Ordering::Relaxed);
}

/// The current counters.
pub fn snapshot() -> PluginStats {
    PluginStats {
        bytes_copied_in: BYTES_COPIED_IN.load(Ordering::Relaxed),
        tensors_exported: TENSORS_EXPORTED.load(Ordering::Relaxed),
        tensors_reused: TENSORS_REUSED.load(Ordering::Relaxed),
    }
}
