//! What a run is asked to do and what it reports: options, per-node outcomes, the run's status,
//! and the `--explain` text.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use latentflow_plugin_api::Value;

use super::events::{EventSink, Reason};

/// Settings of one run.
#[derive(Clone)]
pub struct RunOptions {
    /// Set to cancel (Ctrl-C); checked between nodes and by nodes that poll it.
    pub cancel: Arc<AtomicBool>,
    /// Event receiver.
    pub events: Arc<dyn EventSink>,
    /// Folder for file outputs.
    pub output_dir: PathBuf,
    /// Worker threads.
    pub threads: usize,
    /// Run provenance JSON given to nodes.
    pub metadata: String,
    /// Cancel the remaining nodes as soon as one fails.
    pub fail_fast: bool,
    /// Bytes one node result may take.
    pub alloc_limit: u64,
}

impl RunOptions {
    /// Defaults: no events, `./output`, one thread per core.
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        RunOptions {
            cancel: Arc::new(AtomicBool::new(false)),
            events,
            output_dir: PathBuf::from("output"),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            metadata: "{}".into(),
            fail_fast: false,
            alloc_limit: crate::limits::default_alloc_limit(),
        }
    }
}

/// What happened to one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// It executed.
    Ran,
    /// It was served from the cache.
    Cached,
    /// It failed.
    Failed(String),
    /// It did not run (upstream failure or cancellation).
    Skipped(String),
    /// It was cancelled while running.
    Cancelled,
}

/// One node's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Node id.
    pub node: String,
    /// What happened.
    pub status: Status,
    /// Why it ran or was cached.
    pub reason: Option<Reason>,
    /// Milliseconds spent running it.
    pub ms: f64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Every needed node ran or was cached.
    Ok,
    /// At least one node failed.
    Failed,
    /// The run was cancelled.
    Cancelled,
}

/// The result of a run.
pub struct RunReport {
    /// Outcomes of the nodes the run needed, in plan order.
    pub outcomes: Vec<Outcome>,
    /// Output values of the requested nodes.
    pub outputs: HashMap<String, Vec<Value>>,
    /// How it ended.
    pub status: RunStatus,
    /// Wall time in milliseconds.
    pub ms: f64,
}

impl RunReport {
    /// Outcome of node `id`.
    pub fn outcome(&self, id: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.node == id)
    }

    /// Counts of (ran, cached, failed).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for o in &self.outcomes {
            match o.status {
                Status::Ran => c.0 += 1,
                Status::Cached => c.1 += 1,
                Status::Failed(_) | Status::Cancelled => c.2 += 1,
                Status::Skipped(_) => {}
            }
        }
        c
    }
}

/// A table of each node's status and the reason, as printed by `--explain`.
pub fn explain(report: &RunReport) -> String {
    use std::fmt::Write;
    let mut s = format!("{:<24} {:<9} why\n", "node", "status");
    for o in &report.outcomes {
        let (status, why) = match (&o.status, &o.reason) {
            (Status::Failed(e), _) => ("failed", e.clone()),
            (Status::Skipped(w), _) => ("skipped", w.clone()),
            (Status::Cancelled, _) => ("cancelled", String::new()),
            (Status::Ran, r) => ("ran", r.as_ref().map(|r| r.to_string()).unwrap_or_default()),
            (Status::Cached, r) => (
                "cached",
                r.as_ref().map(|r| r.to_string()).unwrap_or_default(),
            ),
        };
        let _ = writeln!(s, "{:<24} {status:<9} {why}", o.node);
    }
    s
}
