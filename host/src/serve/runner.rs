//! Running one job, and the thread that runs a single machine's jobs: one at a time, oldest
//! first, with one executor for the life of the server (models stay loaded and repeated
//! sub-graphs come from the cache across jobs). `latentflow worker` runs jobs with the same
//! [`execute`].

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use latentflow_plugin_api::Value;
use serde_json::{json, Value as Json};

use super::events::{to_hub, JobSink, Note, Notify};
use super::queue::LocalQueue;
use super::store::{Job, State};
use super::Shared;
use crate::exec::{Executor, RunOptions, RunStatus};
use crate::graph::{validate_bytes, Overrides, Plan};
use crate::plugins::Registry;

/// Runs the local queue's jobs until the process ends.
pub fn run(shared: Arc<Shared>, local: Arc<LocalQueue>, cache_bytes: usize) {
    let mut exec = Executor::new(Some(cache_bytes));
    loop {
        let job = {
            let mut store = local.lock_store();
            loop {
                match store.start_next() {
                    Ok(Some(job)) => break job,
                    Ok(None) => {}
                    Err(e) => tracing::error!("{e}"),
                }
                store = local
                    .wake
                    .wait_timeout(store, std::time::Duration::from_millis(500))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        };
        shared.status_changed();
        let cancel = Arc::new(AtomicBool::new(false));
        local.set_running(Some((job.id.clone(), cancel.clone())));
        let ctx = JobContext {
            registry: &shared.registry,
            inputs: shared.inputs.clone(),
            outputs: shared.outputs.clone(),
            threads: shared.threads,
            notify: to_hub(&shared.hub),
            cancel,
        };
        let end = execute(&ctx, &mut exec, &job, |_| {});
        local.set_running(None);
        let finished = local.lock_store().finish(
            &job.id,
            end.state,
            &end.outputs,
            end.error.as_deref(),
            &end.nodes,
        );
        if let Err(e) = finished {
            tracing::error!("{e}");
        }
        shared.status_changed();
    }
}

/// What a job runs with.
pub struct JobContext<'a> {
    /// The plugins.
    pub registry: &'a Registry,
    /// Uploads; relative paths in graphs resolve here.
    pub inputs: PathBuf,
    /// Outputs go to `outputs/JOB/`.
    pub outputs: PathBuf,
    /// Worker threads per run.
    pub threads: Option<usize>,
    /// Where its events go.
    pub notify: Notify,
    /// Set to stop the run between nodes and steps.
    pub cancel: Arc<AtomicBool>,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Succeeded, failed or cancelled.
    pub state: State,
    /// Files written, by node: `{node: [paths relative to the outputs folder]}`.
    pub outputs: Json,
    /// Why it failed.
    pub error: Option<String>,
    /// Each node's outcome.
    pub nodes: Json,
    /// The graph did not validate (a worker terminates such a job rather than retrying it).
    pub invalid: bool,
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

/// Validates `job` again (the plugins may have changed since it was queued) and runs it,
/// sending ComfyUI's messages and the native events to `ctx.notify`. `validated` sees the plan
/// before the run starts.
pub fn execute(
    ctx: &JobContext<'_>,
    exec: &mut Executor,
    job: &Job,
    validated: impl FnOnce(&Plan),
) -> Ended {
    let origin = super::events::origin_map(&job.origin);
    let sink = Arc::new(JobSink {
        notify: ctx.notify.clone(),
        job: job.id.clone(),
        client: job.client.clone(),
        origin,
        cached: Mutex::new(Vec::new()),
    });
    sink.comfy("execution_start", json!({"prompt_id": job.id}));
    let fail = |error: String, node: Option<String>, outputs: Json, nodes: Json| {
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
        Ended {
            state: State::Failed,
            outputs,
            error: Some(error),
            nodes,
            invalid: false,
        }
    };
    let empty = || Json::Object(Default::default());
    let overrides = Overrides {
        set: job.set.clone(),
        seed: None,
    };
    let graph_path = ctx.inputs.join(format!("{}.graph", job.id));
    let v = validate_bytes(&graph_path, job.graph.as_bytes(), ctx.registry, &overrides);
    let Some(plan) = v.plan else {
        let text: Vec<String> = v.diagnostics.iter().map(|d| d.to_string()).collect();
        return Ended {
            invalid: true,
            ..fail(text.join("\n"), None, empty(), empty())
        };
    };
    validated(&plan);
    let output_dir = ctx.outputs.join(&job.id);
    if let Err(e) = std::fs::create_dir_all(&output_dir) {
        let why = format!("cannot create {}: {e}", output_dir.display());
        return fail(why, None, empty(), empty());
    }
    let mut opts = RunOptions::new(sink.clone());
    opts.output_dir = output_dir;
    opts.metadata = crate::provenance::metadata(&plan, ctx.registry);
    if let Some(t) = ctx.threads {
        opts.threads = t;
    }
    opts.cancel = ctx.cancel.clone();
    let report = exec.run(&plan, &opts);

    let mut outputs = serde_json::Map::new();
    for (node, values) in &report.outputs {
        let files = files_of(values, &ctx.outputs);
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
            if let Ok(png) = std::fs::read(ctx.outputs.join(first)) {
                (ctx.notify)(Note::Preview {
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
            let mut end = fail(
                format!("node `{node}` failed: {e}"),
                Some(node),
                outputs,
                nodes,
            );
            end.error = Some(e);
            return end;
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
    Ended {
        state,
        outputs,
        error,
        nodes,
        invalid: false,
    }
}
