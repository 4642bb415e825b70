//! One run's workers: gather a node's inputs, serve it from the cache or call its plugin,
//! explain why, and release what its consumers no longer need.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use latentflow_plugin_api::abi_stable::sabi_trait::TD_Opaque;
use latentflow_plugin_api::abi_value::{from_abi_vec, to_abi_vec};
use latentflow_plugin_api::{ErrorKind, HostServices_TO, NodeBox, Value};
use serde_json::Value as Json;

use super::events::{Event, Reason};
use super::executor::{lock, Executor, Prepared, Record, Slot, State};
use super::hash::{combine, value_hash, Hash};
use super::report::{Outcome, RunOptions, Status};
use super::services::NodeServices;
use crate::graph::{Plan, PlanNode, Source};

pub(super) struct RunCtx<'a> {
    pub(super) plan: &'a Plan,
    pub(super) prepared: &'a [Prepared],
    pub(super) succ: &'a [Vec<usize>],
    pub(super) keep: &'a [bool],
    pub(super) state: &'a Mutex<State>,
    pub(super) wake: &'a Condvar,
    pub(super) opts: &'a RunOptions,
    pub(super) output_dir: &'a str,
    pub(super) exec: &'a Executor,
}

/// Inputs gathered for one node call.
struct Gathered {
    values: Vec<Value>,
    hashes: Vec<Hash>,
    /// Upstream nodes that executed in this run (for early-cutoff explanations).
    upstream_reran: Vec<usize>,
}

impl RunCtx<'_> {
    pub(super) fn worker(&self) {
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
                let hit = lock(cache)
                    .get(&key)
                    // Objects of a crashed worker are gone: run the node again.
                    .filter(|(values, _)| !crate::isolate::holds_dead_objects(values));
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
        let inst = node
            .ty
            .plugin
            .create_node(node.ty.desc.type_id.as_str(), prep.params_json.as_str())
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
        Json::Object(_) => Value::Str(v.to_string()),
    }
}
