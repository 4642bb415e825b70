//! Services the host gives every node call: logging, progress, cancellation, seeds, run facts,
//! allocation limits, the GPU device service. Later minor versions may append methods (the vtable is a prefix type).

use abi_stable::sabi_trait;
use abi_stable::sabi_types::RRef;
use abi_stable::std_types::{RResult, RStr, RString};
use abi_stable::StableAbi;

use crate::error::NodeError;
use crate::gpu::GpuRef;

/// Severity of a log line (bridged to `tracing` levels by the host).
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something is suspicious.
    Warn,
    /// Normal progress information.
    Info,
    /// Detail for developers.
    Debug,
    /// Very detailed tracing.
    Trace,
}

/// The host side of a node call. Plugins receive it as [`HostRef`] and must not keep it beyond the
/// call.
#[sabi_trait]
pub trait HostServices: Send + Sync {
    /// Writes a log line attributed to the calling node.
    fn log(&self, level: LogLevel, message: RStr<'_>);

    /// Reports progress (`done` of `total` steps, with a short message). Returns `true` when the
    /// run has been cancelled, so a loop can stop early.
    fn progress(&self, done: u64, total: u64, message: RStr<'_>) -> bool;

    /// Whether the run has been cancelled (Ctrl-C, a failing sibling branch, a reload).
    fn is_cancelled(&self) -> bool;

    /// A seed for this node in this run: the run seed mixed with the node id, stable across runs.
    fn seed(&self) -> u64;

    /// The graph node id being executed.
    fn node_id(&self) -> RString;

    /// JSON describing the run (canonical graph, resolved params, seed, plugin versions), for
    /// nodes that embed provenance in their outputs.
    fn run_metadata(&self) -> RString;

    /// The folder where nodes write their files; nodes must not write outside it.
    fn output_dir(&self) -> RString;

    /// The most bytes one node may allocate for one result (a share of physical memory unless
    /// the user set it). Nodes that allocate from parameters or input shapes check against it
    /// before allocating.
    #[sabi(last_prefix_field)]
    fn alloc_limit(&self) -> u64;

    /// The host's GPU device service, opened on first use. An error when the host has no GPU
    /// adapter (its message names what was tried) or the node runs where the service cannot
    /// reach (an isolated process).
    fn gpu(&self) -> RResult<GpuRef, NodeError>;
}

/// How a node receives the host services.
pub type HostRef<'a> = HostServices_TO<'a, RRef<'a, ()>>;
