//! The executor: runs what the requested outputs need, independent branches in parallel, with a
//! content-addressed cache and early cutoff.
//!
//! A node's cache key hashes its type, its plugin's build, its parameters and the *content* hashes
//! of its inputs. When a node re-runs and produces bit-identical output, its consumers' keys do not
//! change, so they are served from the cache (early cutoff).

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use latentflow_plugin_api::abi_stable::sabi_trait::TD_Opaque;
use latentflow_plugin_api::abi_value::{from_abi_vec, to_abi_vec};
use latentflow_plugin_api::{ErrorKind, HostServices_TO, NodeBox, ParamKind, Value};
use serde_json::Value as Json;

use super::cache::Cache;
use super::events::{Event, EventSink, Reason};
use super::hash::{combine, value_hash, Hash};
use super::services::NodeServices;
use crate::graph::{node_seed, Plan, PlanNode, Source};

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

/// What the executor remembers about a node's last execution, to explain the next one.
#[derive(Clone)]
struct Record {
    plugin_build: String,
    params: Arc<serde_json::Map<String, Json>>,
    labels: Arc<[String]>,
    hashes: Vec<Hash>,
    key: Hash,
}

/// Runs plans. Keep one executor across runs to reuse the cache, node instances and history.
pub struct Executor {
    cache: Option<Mutex<Cache>>,
    /// Node instances by node id, with the static key they were made for (a node whose type,
    /// plugin build or params change gets a new instance).
    instances: Mutex<HashMap<String, (Hash, Arc<NodeBox>)>>,
    history: HashMap<String, Record>,
}

struct Slot {
    values: Vec<Value>,
    hashes: Vec<Hash>,
    /// The node executed in this run (as opposed to being cached).
    reran: bool,
}

struct State {
    ready: VecDeque<usize>,
    pending: Vec<usize>,
    uses: Vec<usize>,
    slots: Vec<Option<Arc<Slot>>>,
    outcomes: Vec<Option<Outcome>>,
    records: Vec<Option<Record>>,
    running: usize,
}

/// Static facts about a node for this run.
struct Prepared {
    static_key: Hash,
    cacheable: bool,
    params_json: String,
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
            .map(|node| prepare(node, plan.seed))
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks the nodes that the requested outputs need.
fn needed_nodes(plan: &Plan) -> Vec<bool> {
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

fn prepare(node: &PlanNode, run_seed: u64) -> Prepared {
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
    ]);
    Prepared {
        static_key,
        cacheable,
        params_json,
    }
}

struct RunCtx<'a> {
    plan: &'a Plan,
    prepared: &'a [Prepared],
    succ: &'a [Vec<usize>],
    keep: &'a [bool],
    state: &'a Mutex<State>,
    wake: &'a Condvar,
    opts: &'a RunOptions,
    output_dir: &'a str,
    exec: &'a Executor,
}

/// Inputs gathered for one node call.
struct Gathered {
    values: Vec<Value>,
    hashes: Vec<Hash>,
    /// Upstream nodes that executed in this run (for early-cutoff explanations).
    upstream_reran: Vec<usize>,
}

impl RunCtx<'_> {
    fn worker(&self) {
        loop {
            let (i, inputs) = {
                let mut st = lock(self.state);
                loop {
                    if let Some(i) = st.ready.pop_front() {
                        st.running += 1;
                        let inputs = self.gather(&st, i);
                        break (i, inputs);
                    }
                    if st.running == 0 {
                        self.wake.notify_all();
                        return;
                    }
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            let result =
                catch_unwind(AssertUnwindSafe(|| self.execute(i, inputs))).unwrap_or_else(|_| {
                    Err(Status::Failed(
                        "the host panicked while running this node".into(),
                    ))
                });
            self.complete(i, result);
        }
    }

    fn gather(&self, st: &State, i: usize) -> Gathered {
        let node = &self.plan.nodes[i];
        let mut g = Gathered {
            values: Vec::with_capacity(node.inputs.len()),
            hashes: Vec::with_capacity(node.inputs.len()),
            upstream_reran: Vec::new(),
        };
        for s in &node.inputs {
            match s {
                Source::Node { node: src, port } => match &st.slots[*src] {
                    Some(slot) => {
                        g.values.push(slot.values[*port].clone());
                        g.hashes.push(slot.hashes[*port]);
                        if slot.reran {
                            g.upstream_reran.push(*src);
                        }
                    }
                    None => {
                        g.values.push(Value::None);
                        g.hashes.push([0; 32]);
                    }
                },
                Source::Const(v) => {
                    let value = json_to_value(v);
                    g.hashes.push(value_hash(&value, &[0; 32]));
                    g.values.push(value);
                }
                Source::None => {
                    g.values.push(Value::None);
                    g.hashes.push([0; 32]);
                }
            }
        }
        g
    }

    /// Runs (or fetches from cache) node `i`. Returns the slot, the outcome and the record.
    fn execute(&self, i: usize, g: Gathered) -> Result<(Slot, Outcome, Record), Status> {
        let node = &self.plan.nodes[i];
        let prep = &self.prepared[i];
        let events = &*self.opts.events;
        let wants_events = events.wants_events();
        if self.opts.cancel.load(Ordering::Relaxed) {
            return Err(Status::Skipped("cancelled".into()));
        }
        let mut key_parts: Vec<&[u8]> = Vec::with_capacity(g.hashes.len() + 1);
        key_parts.push(&prep.static_key);
        for h in &g.hashes {
            key_parts.push(h);
        }
        let key = combine(&key_parts);
        let previous = self.exec.history.get(&node.id);

        if prep.cacheable {
            if let Some(cache) = &self.exec.cache {
                let hit = lock(cache).get(&key);
                if let Some((values, hashes)) = hit {
                    let reason = match previous {
                        Some(p) if p.key == key && !g.upstream_reran.is_empty() => {
                            Reason::EarlyCutoff {
                                upstream: g
                                    .upstream_reran
                                    .iter()
                                    .map(|&u| self.plan.nodes[u].id.clone())
                                    .collect(),
                            }
                        }
                        _ => Reason::Unchanged,
                    };
                    if wants_events {
                        events.emit(&Event::NodeCached {
                            node: node.id.clone(),
                            reason: reason.clone(),
                        });
                    }
                    let outcome = Outcome {
                        node: node.id.clone(),
                        status: Status::Cached,
                        reason: Some(reason),
                        ms: 0.0,
                    };
                    let slot = Slot {
                        values,
                        hashes,
                        reran: false,
                    };
                    return Ok((slot, outcome, self.record(node, g.hashes, key)));
                }
            }
        }

        let reason = self.explain_run(previous, prep, node, &g.hashes);
        if wants_events {
            events.emit(&Event::NodeStarted {
                node: node.id.clone(),
                node_type: node.ty.desc.type_id.to_string(),
            });
        }
        let t0 = Instant::now();
        let instance = self.instance(node, prep).map_err(Status::Failed)?;
        let services = NodeServices {
            node_id: &node.id,
            run_seed: self.plan.seed,
            cancel: &self.opts.cancel,
            events,
            metadata: &self.opts.metadata,
            output_dir: self.output_dir,
            alloc_limit: self.opts.alloc_limit,
        };
        let host = HostServices_TO::from_ptr(&services, TD_Opaque);
        let result = instance.run(host, to_abi_vec(g.values)).into_result();
        let values: Vec<Value> = match result.and_then(from_abi_vec) {
            Ok(v) => v,
            Err(e) if e.kind == ErrorKind::CANCELLED => return Err(Status::Cancelled),
            Err(e) => return Err(Status::Failed(e.message.to_string())),
        };
        if values.len() != node.ty.desc.outputs.len() {
            return Err(Status::Failed(format!(
                "returned {} outputs, declares {}",
                values.len(),
                node.ty.desc.outputs.len()
            )));
        }
        let hashes: Vec<Hash> = values
            .iter()
            .enumerate()
            .map(|(p, v)| value_hash(v, &combine(&[&key, &(p as u64).to_le_bytes()])))
            .collect();
        if prep.cacheable {
            if let Some(cache) = &self.exec.cache {
                lock(cache).insert(key, values.clone(), hashes.clone(), &node.ty.plugin.build);
            }
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if wants_events {
            events.emit(&Event::NodeFinished {
                node: node.id.clone(),
                ms,
                reason: reason.clone(),
            });
        }
        let slot = Slot {
            values,
            hashes,
            reran: true,
        };
        let outcome = Outcome {
            node: node.id.clone(),
            status: Status::Ran,
            reason: Some(reason),
            ms,
        };
        Ok((slot, outcome, self.record(node, g.hashes, key)))
    }

    fn record(&self, node: &PlanNode, hashes: Vec<Hash>, key: Hash) -> Record {
        Record {
            plugin_build: node.ty.plugin.build.clone(),
            params: Arc::clone(&node.params),
            labels: Arc::clone(&node.labels),
            hashes,
            key,
        }
    }

    fn explain_run(
        &self,
        previous: Option<&Record>,
        prep: &Prepared,
        node: &PlanNode,
        hashes: &[Hash],
    ) -> Reason {
        let Some(p) = previous else {
            return Reason::FirstRun;
        };
        if p.plugin_build != node.ty.plugin.build {
            return Reason::PluginReloaded;
        }
        if p.params != node.params {
            let now = &node.params;
            let mut changed: Vec<String> = now
                .iter()
                .filter(|(k, v)| p.params.get(*k) != Some(v))
                .map(|(k, _)| k.clone())
                .collect();
            changed.extend(p.params.keys().filter(|k| !now.contains_key(*k)).cloned());
            return Reason::ParamsChanged { params: changed };
        }
        let changed: Vec<String> = node
            .labels
            .iter()
            .zip(hashes)
            .enumerate()
            .filter(|(k, (label, h))| {
                p.labels.get(*k) != Some(*label) || p.hashes.get(*k) != Some(*h)
            })
            .map(|(_, (label, _))| label.clone())
            .collect();
        if !changed.is_empty() {
            return Reason::UpstreamChanged { inputs: changed };
        }
        if !prep.cacheable {
            Reason::NonDeterministic
        } else if self.exec.cache.is_none() {
            Reason::NoCache
        } else {
            Reason::Evicted
        }
    }

    fn instance(&self, node: &PlanNode, prep: &Prepared) -> Result<Arc<NodeBox>, String> {
        if let Some((key, inst)) = lock(&self.exec.instances).get(node.id.as_str()) {
            if *key == prep.static_key {
                return Ok(Arc::clone(inst));
            }
        }
        let create = node.ty.plugin.module.create_node();
        let inst = create(
            node.ty.desc.type_id.as_str().into(),
            prep.params_json.as_str().into(),
        )
        .into_result()
        .map_err(|e| format!("could not create the node: {}", e.message))?;
        let inst = Arc::new(inst);
        lock(&self.exec.instances).insert(node.id.clone(), (prep.static_key, Arc::clone(&inst)));
        Ok(inst)
    }

    fn complete(&self, i: usize, result: Result<(Slot, Outcome, Record), Status>) {
        let node = &self.plan.nodes[i];
        let mut st = lock(self.state);
        st.running -= 1;
        // Release inputs whose last consumer this was.
        for s in &node.inputs {
            if let Source::Node { node: src, .. } = s {
                st.uses[*src] -= 1;
                if st.uses[*src] == 0 && !self.keep[*src] {
                    st.slots[*src] = None;
                }
            }
        }
        match result {
            Ok((slot, outcome, record)) => {
                st.slots[i] = Some(Arc::new(slot));
                st.outcomes[i] = Some(outcome);
                st.records[i] = Some(record);
                for &s in &self.succ[i] {
                    st.pending[s] -= 1;
                    if st.pending[s] == 0 {
                        st.ready.push_back(s);
                    }
                }
            }
            Err(status) => {
                match &status {
                    Status::Failed(msg) => {
                        self.opts.events.emit(&Event::NodeFailed {
                            node: node.id.clone(),
                            plugin: format!(
                                "{} ({})",
                                node.ty.plugin.name,
                                node.ty.plugin.path.display()
                            ),
                            error: msg.clone(),
                        });
                        if self.opts.fail_fast {
                            self.opts.cancel.store(true, Ordering::Relaxed);
                        }
                    }
                    Status::Skipped(why) => self.opts.events.emit(&Event::NodeSkipped {
                        node: node.id.clone(),
                        reason: why.clone(),
                    }),
                    _ => self.opts.events.emit(&Event::NodeFailed {
                        node: node.id.clone(),
                        plugin: node.ty.plugin.name.clone(),
                        error: "cancelled".into(),
                    }),
                }
                st.outcomes[i] = Some(Outcome {
                    node: node.id.clone(),
                    status,
                    reason: None,
                    ms: 0.0,
                });
                // Descendants never become ready; they are reported as skipped at the end.
            }
        }
        // This worker takes the next ready node itself; wake others only for extra work, or
        // when the run is over so that they can exit.
        let wake_all = st.ready.len() > 1 || (st.ready.is_empty() && st.running == 0);
        drop(st);
        if wake_all {
            self.wake.notify_all();
        }
    }
}

/// Converts a graph constant to a value.
pub fn json_to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::None,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(s.as_str().into()),
        Json::Array(items) => Value::List(items.iter().map(json_to_value).collect()),
        Json::Object(_) => Value::Str(v.to_string().into()),
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
