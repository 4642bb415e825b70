//! The host services handed to each node call.

use std::sync::atomic::{AtomicBool, Ordering};

use latentflow_plugin_api::abi_stable::std_types::{RStr, RString};
use latentflow_plugin_api::{HostServices, LogLevel};

use super::events::{Event, EventSink};

/// Per-call host services: bridges logs to `tracing`, reports progress and cancellation.
pub struct NodeServices<'a> {
    /// The node id.
    pub node_id: &'a str,
    /// The run seed (the node's seed derives from it and the node id).
    pub run_seed: u64,
    /// Set when the run is cancelled.
    pub cancel: &'a AtomicBool,
    /// Where progress and logs go.
    pub events: &'a dyn EventSink,
    /// Run provenance JSON.
    pub metadata: &'a str,
    /// Output folder.
    pub output_dir: &'a str,
    /// Bytes one result may take.
    pub alloc_limit: u64,
}

impl HostServices for NodeServices<'_> {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let node = self.node_id;
        let msg = message.as_str();
        match level {
            LogLevel::Error => tracing::error!(target: "plugin", node, "{msg}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", node, "{msg}"),
            LogLevel::Info => tracing::info!(target: "plugin", node, "{msg}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", node, "{msg}"),
            LogLevel::Trace => tracing::trace!(target: "plugin", node, "{msg}"),
        }
        if self.events.wants_detail() {
            self.events.emit(&Event::Log {
                node: node.to_string(),
                level: format!("{level:?}").to_lowercase(),
                message: msg.to_string(),
            });
        }
    }

    fn progress(&self, done: u64, total: u64, message: RStr<'_>) -> bool {
        if self.events.wants_detail() {
            self.events.emit(&Event::Progress {
                node: self.node_id.to_string(),
                done,
                total,
                message: message.to_string(),
            });
        }
        self.cancel.load(Ordering::Relaxed)
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn seed(&self) -> u64 {
        crate::graph::node_seed(self.run_seed, self.node_id)
    }

    fn node_id(&self) -> RString {
        self.node_id.into()
    }

    fn run_metadata(&self) -> RString {
        self.metadata.into()
    }

    fn output_dir(&self) -> RString {
        self.output_dir.into()
    }

    fn alloc_limit(&self) -> u64 {
        self.alloc_limit
    }

    fn gpu(&self) -> crate::devices::GpuResult {
        crate::devices::gpu_for_plugins()
    }
}
