//! The executor: runs what the requested outputs need, independent branches in parallel, with a
//! content-addressed cache and early cutoff.
//!
//! A node's cache key hashes its type, its plugin's build, its parameters and the *content* hashes
//! of its inputs. When a node re-runs and produces bit-identical output, its consumers' keys do not
//! change, so they are served from the cache (early cutoff).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use latentflow_plugin_api::{NodeBox, ParamKind, Value};
use serde_json::Value as Json;

use super::cache::Cache;
use super::events::Event;
use super::hash::{combine, Hash};
use super::report::{Outcome, RunOptions, RunReport, RunStatus, Status};
use super::worker::RunCtx;
use crate::graph::{node_seed, Plan, PlanNode, Source};

/// What the executor remembers about a node's last execution, to explain the next one.
#[derive(Clone)]
pub(super) struct Record {
    pub(super) plugin_build: String,
    pub(super) params: Arc<serde_json::Map<String, Json>>,
    pub(super) labels: Arc<[String]>,
    pub(super) hashes: Vec<Hash>,
    pub(super) key: Hash,
}

/// Runs plans. Keep one executor across runs to reuse the cache, node instances and history.
pub struct Executor {
    pub(super) cache: Option<Mutex<Cache>>,
    /// Node instances by node id, with the static key they were made for (a node whose type,
    /// plugin build or params change gets a new instance).
    pub(super) instances: Mutex<HashMap<String, (Hash, Arc<NodeBox>)>>,
    pub(super) history: HashMap<String, Record>,
}

pub(super) struct Slot {
    pub(super) values: Vec<Value>,
    pub(super) hashes: Vec<Hash>,
    /// The node executed in this run (as opposed to being cached).
    pub(super) reran: bool,
}

pub(super) struct State {
    pub(super) ready: VecDeque<usize>,
    pub(super) pending: Vec<usize>,
    pub(super) uses: Vec<usize>,
    pub(super) slots: Vec<Option<Arc<Slot>>>,
    pub(super) outcomes: Vec<Option<Outcome>>,
    pub(super) records: Vec<Option<Record>>,
    pub(super) running: usize,
}

/// Static facts about a node for this run.
pub(super) struct Prepared {
    pub(super) static_key: Hash,
    pub(super) cacheable: bool,
    pub(super) params_json: String,
}

impl Default for Executor {
    fn default() -> Self {
        Executor::new(None)
    }
}

impl Executor {
    /// An executor; `cache_bytes` enables the result cache with that budget.
    pub fn new(cache_bytes: Option<usize>) -> Self {
        Executor {
            cache: cache_bytes.map(|b| Mutex::new(Cache::new(b))),
            instances: Mutex::new(HashMap::new()),
            history: HashMap::new(),
        }
    }

    /// Drops the cache entries of a plugin build that was replaced. (Its node instances are
    /// replaced on their next use: their static key names the build.)
    pub fn invalidate_build(&mut self, build: &str) -> usize {
        match &self.cache {
            Some(c) => lock(c).invalidate_build(build),
            None => 0,
        }
    }

    /// Runs `plan`.
    pub fn run(&mut self, plan: &Plan, opts: &RunOptions) -> RunReport {
        let started = Instant::now();
        let n = plan.nodes.len();
        let needed = needed_nodes(plan);
        let prepared: Vec<Prepared> = plan
            .nodes
            .iter()
            .map(|node| prepare(node, plan.seed, &opts.output_dir))
            .collect();

        let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut pending = vec![0usize; n];
        let mut uses = vec![0usize; n];
        for (i, node) in plan.nodes.iter().enumerate() {
            if !needed[i] {
                continue;
            }
            for s in &node.inputs {
                if let Source::Node { node: src, .. } = s {
                    succ[*src].push(i);
                    pending[i] += 1;
                    uses[*src] += 1;
                }
            }
        }
        let mut keep = vec![false; n];
        for &o in &plan.outputs {
            keep[o] = true;
        }
        let ready: VecDeque<usize> = (0..n).filter(|&i| needed[i] && pending[i] == 0).collect();
        let total = needed.iter().filter(|&&x| x).count();
        opts.events.emit(&Event::RunStarted { nodes: total });

        let state = Mutex::new(State {
            ready,
            pending,
            uses,
            slots: vec![None; n],
            outcomes: vec![None; n],
            records: vec![None; n],
            running: 0,
        });
        let wake = Condvar::new();
        let output_dir = opts.output_dir.to_string_lossy().into_owned();
        let ctx = RunCtx {
            plan,
            prepared: &prepared,
            succ: &succ,
            keep: &keep,
            state: &state,
            wake: &wake,
            opts,
            output_dir: &output_dir,
            exec: self,
        };
        let threads = opts.threads.clamp(1, total.max(1));
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(|| ctx.worker());
            }
            ctx.worker();
        });

        let mut st = state.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut outcomes = Vec::with_capacity(total);
        let cancelled = opts.cancel.load(Ordering::Relaxed);
        for (i, _) in needed.iter().enumerate().filter(|(_, &x)| x) {
            let o = st.outcomes[i].take().unwrap_or_else(|| {
                let why = if cancelled {
                    "cancelled"
                } else {
                    "an upstream node failed"
                };
                opts.events.emit(&Event::NodeSkipped {
                    node: plan.nodes[i].id.clone(),
                    reason: why.into(),
                });
                Outcome {
                    node: plan.nodes[i].id.clone(),
                    status: Status::Skipped(why.into()),
                    reason: None,
                    ms: 0.0,
                }
            });
            outcomes.push(o);
            // History explains the next run; only a caching executor runs again.
            if let (Some(r), Some(_)) = (st.records[i].take(), &self.cache) {
                self.history.insert(plan.nodes[i].id.clone(), r);
            }
        }
        let mut outputs = HashMap::new();
        for &o in &plan.outputs {
            if let Some(slot) = st.slots[o].take() {
                outputs.insert(plan.nodes[o].id.clone(), slot.values.clone());
            }
        }
        let failed = outcomes
            .iter()
            .any(|o| matches!(o.status, Status::Failed(_) | Status::Cancelled));
        let status = if cancelled
            && outcomes
                .iter()
                .any(|o| !matches!(o.status, Status::Ran | Status::Cached))
        {
            RunStatus::Cancelled
        } else if failed {
            RunStatus::Failed
        } else {
            RunStatus::Ok
        };
        let report = RunReport {
            outcomes,
            outputs,
            status,
            ms: started.elapsed().as_secs_f64() * 1e3,
        };
        let (ran, cached, failed) = report.counts();
        opts.events.emit(&Event::RunFinished {
            status: match status {
                RunStatus::Ok => "ok",
                RunStatus::Failed => "failed",
                RunStatus::Cancelled => "cancelled",
            }
            .into(),
            ms: report.ms,
            ran,
            cached,
            failed,
        });
        report
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks the nodes that the requested outputs need.
pub(super) fn needed_nodes(plan: &Plan) -> Vec<bool> {
    let mut needed = vec![false; plan.nodes.len()];
    let mut stack: Vec<usize> = plan.outputs.clone();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut needed[i], true) {
            continue;
        }
        for s in &plan.nodes[i].inputs {
            if let Source::Node { node, .. } = s {
                stack.push(*node);
            }
        }
    }
    needed
}

pub(super) fn prepare(node: &PlanNode, run_seed: u64, output_dir: &std::path::Path) -> Prepared {
    let desc = &node.ty.desc;
    let params_json = serde_json::to_string(&*node.params).unwrap_or_default();
    let seeded = desc.params.iter().any(|p| p.kind == ParamKind::Seed);
    let cacheable = desc.caps.deterministic || seeded;
    // A non-deterministic node's result depends on its seed, which the run seed changes.
    let seed_bytes = if desc.caps.deterministic {
        [0u8; 8]
    } else {
        node_seed(run_seed, &node.id).to_le_bytes()
    };
    let static_key = combine(&[
        desc.type_id.as_bytes(),
        desc.version.as_bytes(),
        node.ty.plugin.build.as_bytes(),
        params_json.as_bytes(),
        &seed_bytes,
        // A node that writes files has done nothing for a run that writes elsewhere (a server
        // gives each job its own folder).
        if desc.caps.side_effects {
            output_dir.as_os_str().as_encoded_bytes()
        } else {
            &[]
        },
    ]);
    Prepared {
        static_key,
        cacheable,
        params_json,
    }
}
