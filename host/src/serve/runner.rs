//! The thread that runs jobs, one at a time, oldest first, with one executor for the life of
//! the server: models stay loaded and repeated sub-graphs come from the cache across jobs.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use latentflow_plugin_api::Value;
use serde_json::{json, Value as Json};

use super::events::{JobSink, Note};
use super::store::{Job, State};
use super::Shared;
use crate::exec::{Executor, RunOptions, RunStatus};
use crate::graph::{validate_bytes, Overrides};

/// Runs jobs until the process ends.
pub fn run(shared: Arc<Shared>, cache_bytes: usize) {
    let mut exec = Executor::new(Some(cache_bytes));
    loop {
        let job = {
            let mut store = shared.lock_store();
            loop {
                match store.start_next() {
                    Ok(Some(job)) => break job,
                    Ok(None) => {}
                    Err(e) => tracing::error!("{e}"),
                }
                store = shared
                    .wake
                    .wait_timeout(store, std::time::Duration::from_millis(500))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        };
        shared.status_changed();
        run_job(&shared, &mut exec, job);
        shared.status_changed();
    }
}

fn files_of(values: &[Value], root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        if let Value::List(items) = v {
            for i in items {
                if let Value::Str(s) = i {
                    let p = Path::new(s.as_str());
                    if let Ok(rel) = p.strip_prefix(root) {
                        out.push(rel.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    out
}

fn run_job(shared: &Shared, exec: &mut Executor, job: Job) {
    let origin = super::events::origin_map(&job.origin);
    let sink = Arc::new(JobSink {
        hub: shared.hub.clone(),
        job: job.id.clone(),
        client: job.client.clone(),
        origin,
        cached: Mutex::new(Vec::new()),
    });
    sink.comfy("execution_start", json!({"prompt_id": job.id}));
    let fail = |error: String, node: Option<String>| {
        sink.comfy(
            "execution_error",
            json!({"prompt_id": job.id, "node_id": node.as_ref().map(|n| sink.comfy_id(n)),
                   "node_type": Json::Null, "exception_message": error, "exception_type": "latentflow",
                   "traceback": [], "current_inputs": {}, "current_outputs": {}}),
        );
        sink.comfy(
            "executing",
            json!({"node": Json::Null, "prompt_id": job.id}),
        );
        let mut store = shared.lock_store();
        if let Err(e) = store.finish(
            &job.id,
            State::Failed,
            &Json::Null,
            Some(&error),
            &Json::Null,
        ) {
            tracing::error!("{e}");
        }
    };
    // Validated again: the plugins may have changed since it was queued.
    let overrides = Overrides {
        set: job.set.clone(),
        seed: None,
    };
    let graph_path = shared.inputs.join(format!("{}.graph", job.id));
    let v = validate_bytes(
        &graph_path,
        job.graph.as_bytes(),
        &shared.registry,
        &overrides,
    );
    let Some(plan) = v.plan else {
        let text: Vec<String> = v.diagnostics.iter().map(|d| d.to_string()).collect();
        fail(text.join("\n"), None);
        return;
    };
    let output_dir = shared.outputs.join(&job.id);
    if let Err(e) = std::fs::create_dir_all(&output_dir) {
        fail(format!("cannot create {}: {e}", output_dir.display()), None);
        return;
    }
    let mut opts = RunOptions::new(sink.clone());
    opts.output_dir = output_dir;
    opts.metadata = crate::provenance::metadata(&plan, &shared.registry);
    if let Some(t) = shared.threads {
        opts.threads = t;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    opts.cancel = cancel.clone();
    *shared.running.lock().unwrap_or_else(|e| e.into_inner()) = Some((job.id.clone(), cancel));
    let report = exec.run(&plan, &opts);
    *shared.running.lock().unwrap_or_else(|e| e.into_inner()) = None;

    let mut outputs = serde_json::Map::new();
    for (node, values) in &report.outputs {
        let files = files_of(values, &shared.outputs);
        if files.is_empty() {
            continue;
        }
        let comfy = sink.comfy_id(node);
        let images: Vec<Json> = files
            .iter()
            .map(|f| {
                let (sub, name) = f.rsplit_once('/').unwrap_or(("", f.as_str()));
                json!({"filename": name, "subfolder": sub, "type": "output"})
            })
            .collect();
        sink.comfy(
            "executed",
            json!({"node": comfy, "display_node": comfy, "output": {"images": images}, "prompt_id": job.id}),
        );
        if let Some(first) = files.iter().find(|f| f.ends_with(".png")) {
            if let Ok(png) = std::fs::read(shared.outputs.join(first)) {
                let _ = shared.hub.send(Note::Preview {
                    job: job.id.clone(),
                    client: job.client.clone(),
                    node: (node.clone(), comfy.clone()),
                    png,
                });
            }
        }
        outputs.insert(node.clone(), Json::from(files));
    }
    let outputs = Json::Object(outputs);
    let nodes: serde_json::Map<String, Json> = report
        .outcomes
        .iter()
        .map(|o| {
            let s = match &o.status {
                crate::exec::Status::Ran => "ran",
                crate::exec::Status::Cached => "cached",
                crate::exec::Status::Failed(_) => "failed",
                crate::exec::Status::Skipped(_) => "skipped",
                crate::exec::Status::Cancelled => "cancelled",
            };
            (o.node.clone(), Json::from(s))
        })
        .collect();
    let nodes = Json::Object(nodes);
    let (state, error) = match report.status {
        RunStatus::Ok => (State::Succeeded, None),
        RunStatus::Cancelled => (State::Cancelled, Some("cancelled".to_string())),
        RunStatus::Failed => {
            let failed = report.outcomes.iter().find_map(|o| match &o.status {
                crate::exec::Status::Failed(e) => Some((o.node.clone(), e.clone())),
                _ => None,
            });
            let (node, e) = failed.unwrap_or_default();
            fail(format!("node `{node}` failed: {e}"), Some(node));
            let mut store = shared.lock_store();
            if let Err(err) = store.finish(&job.id, State::Failed, &outputs, Some(&e), &nodes) {
                tracing::error!("{err}");
            }
            return;
        }
    };
    match state {
        State::Cancelled => sink.comfy(
            "execution_interrupted",
            json!({"prompt_id": job.id, "node_id": Json::Null, "node_type": Json::Null, "executed": []}),
        ),
        _ => sink.comfy("execution_success", json!({"prompt_id": job.id})),
    }
    sink.comfy(
        "executing",
        json!({"node": Json::Null, "prompt_id": job.id}),
    );
    let mut store = shared.lock_store();
    if let Err(e) = store.finish(&job.id, state, &outputs, error.as_deref(), &nodes) {
        tracing::error!("{e}");
    }
}
