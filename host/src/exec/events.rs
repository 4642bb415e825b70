//! Events a run emits: for progress bars, `--events json`, `--explain` and tests.

use std::sync::Mutex;

use serde::Serialize;

/// Why a node ran or was served from the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Nothing was known about this node before.
    FirstRun,
    /// Its parameters changed.
    ParamsChanged {
        /// The changed parameter names.
        params: Vec<String>,
    },
    /// An upstream node produced a different value.
    UpstreamChanged {
        /// The changed inputs as `node.port`.
        inputs: Vec<String>,
    },
    /// Its plugin was rebuilt and reloaded.
    PluginReloaded,
    /// It is non-deterministic and unseeded, so it is never cached.
    NonDeterministic,
    /// Caching is off (`latentflow run` without a cache keeps nothing between runs).
    NoCache,
    /// The cache held the result of an identical call.
    Unchanged,
    /// An upstream node re-ran but produced bit-identical output, so this node was not re-run.
    EarlyCutoff {
        /// Upstream nodes that re-ran with identical output.
        upstream: Vec<String>,
    },
    /// The cache entry was evicted.
    Evicted,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::FirstRun => f.write_str("first run"),
            Reason::ParamsChanged { params } => write!(f, "params changed: {}", params.join(", ")),
            Reason::UpstreamChanged { inputs } => {
                write!(f, "upstream changed: {}", inputs.join(", "))
            }
            Reason::PluginReloaded => f.write_str("plugin reloaded"),
            Reason::NonDeterministic => f.write_str("non-deterministic (never cached)"),
            Reason::NoCache => f.write_str("no cache"),
            Reason::Unchanged => f.write_str("unchanged"),
            Reason::EarlyCutoff { upstream } => {
                write!(
                    f,
                    "early cutoff: {} re-ran with identical output",
                    upstream.join(", ")
                )
            }
            Reason::Evicted => f.write_str("cache entry evicted"),
        }
    }
}

/// Something that happened during a run or a watch session.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run began.
    RunStarted {
        /// Nodes that the requested outputs need.
        nodes: usize,
    },
    /// A node started executing.
    NodeStarted {
        /// Node id.
        node: String,
        /// Node type.
        node_type: String,
    },
    /// A node finished executing.
    NodeFinished {
        /// Node id.
        node: String,
        /// Wall time in milliseconds.
        ms: f64,
        /// Why it ran.
        reason: Reason,
    },
    /// A node was served from the cache.
    NodeCached {
        /// Node id.
        node: String,
        /// Why the cache applied.
        reason: Reason,
    },
    /// A node failed.
    NodeFailed {
        /// Node id.
        node: String,
        /// Its plugin (name and file).
        plugin: String,
        /// The error.
        error: String,
    },
    /// A node was not run because an upstream node failed or the run was cancelled.
    NodeSkipped {
        /// Node id.
        node: String,
        /// Why.
        reason: String,
    },
    /// Progress inside a node.
    Progress {
        /// Node id.
        node: String,
        /// Steps done.
        done: u64,
        /// Steps in all.
        total: u64,
        /// Short message.
        message: String,
    },
    /// A log line from a plugin.
    Log {
        /// Node id.
        node: String,
        /// Level name.
        level: String,
        /// Text.
        message: String,
    },
    /// A run ended.
    RunFinished {
        /// `ok`, `failed` or `cancelled`.
        status: String,
        /// Wall time in milliseconds.
        ms: f64,
        /// Nodes that executed.
        ran: usize,
        /// Nodes served from the cache.
        cached: usize,
        /// Nodes that failed.
        failed: usize,
    },
    /// A plugin library was reloaded (watch mode).
    PluginReloaded {
        /// The library.
        path: String,
        /// Milliseconds from the file settling to the new generation being ready.
        ms: f64,
    },
    /// A rebuilt plugin was refused; the previous generation keeps serving.
    PluginRefused {
        /// The library.
        path: String,
        /// One-line reason.
        error: String,
    },
    /// The graph file changed and was re-validated (watch mode).
    GraphChanged {
        /// The file.
        path: String,
        /// Whether it is valid.
        valid: bool,
        /// Diagnostics, rendered.
        diagnostics: Vec<String>,
    },
}

/// Receives events. Implementations must be cheap when nobody listens.
pub trait EventSink: Send + Sync {
    /// Handles one event.
    fn emit(&self, event: &Event);

    /// Whether `Progress` and `Log` events are wanted (they are frequent).
    fn wants_detail(&self) -> bool {
        true
    }

    /// Whether per-node events are wanted at all (building them costs allocations).
    fn wants_events(&self) -> bool {
        true
    }
}

/// Discards everything.
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _: &Event) {}
    fn wants_detail(&self) -> bool {
        false
    }
    fn wants_events(&self) -> bool {
        false
    }
}

/// Keeps every event (tests, benchmarks).
#[derive(Default)]
pub struct CollectSink(pub Mutex<Vec<Event>>);

impl EventSink for CollectSink {
    fn emit(&self, event: &Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event.clone());
        }
    }
}

/// Writes newline-delimited JSON to standard output.
pub struct JsonLinesSink;

impl EventSink for JsonLinesSink {
    fn emit(&self, event: &Event) {
        use std::io::Write;
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Sends each event to several sinks.
pub struct Tee(pub Vec<std::sync::Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, event: &Event) {
        for s in &self.0 {
            s.emit(event);
        }
    }
    fn wants_detail(&self) -> bool {
        self.0.iter().any(|s| s.wants_detail())
    }
    fn wants_events(&self) -> bool {
        self.0.iter().any(|s| s.wants_events())
    }
}
