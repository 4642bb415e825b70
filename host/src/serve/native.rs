//! LatentFlow's own API, under `/api/v1`: jobs (submit a graph with `--set`-style inputs,
//! status, cancel), the queue, history, outputs, uploads, the node catalog, validation, and an
//! events socket carrying the `--events json` stream.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Multipart, Path as AxPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as AxJson, Router};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::events::Note;
use super::{contained, error, Rejected, Shared, Submission};
use crate::graph::{parse_set_value, validate_bytes, Overrides};

/// The routes.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/jobs", post(submit))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/queue", get(queue).delete(clear_queue))
        .route("/api/v1/history", get(history).delete(clear_history))
        .route("/api/v1/outputs/{id}/{*file}", get(output))
        .route("/api/v1/uploads", post(upload))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/validate", post(validate))
        .route("/api/v1/plan", post(plan))
        .route("/api/v1/jobs/{id}/plan", get(job_plan))
        .route("/api/v1/events", get(events))
        .route("/api/v1/workers", get(workers))
}

/// A graph with inputs, as clients send it.
#[derive(Deserialize)]
pub struct GraphBody {
    /// The graph text (YAML or JSON) or a JSON object.
    graph: Json,
    /// Inputs: `{name: value}` or `["name=value", …]` (as `--set`).
    #[serde(default)]
    set: Json,
    /// A job id of the client's choosing (a resubmission with it is queued once).
    #[serde(default)]
    id: Option<String>,
    /// The worker pool to run it in (`serve --nats`; default: one whose workers have the
    /// plugins it needs).
    #[serde(default)]
    pool: Option<String>,
}

/// Graph text and `--set` inputs.
type Parsed = (String, Vec<(String, Json)>);

fn parse_body(b: &GraphBody) -> Result<Parsed, Box<Response>> {
    let graph = match &b.graph {
        Json::String(s) => s.clone(),
        Json::Object(_) => b.graph.to_string(),
        _ => return Err(bad("`graph` must be the graph text or a JSON object")),
    };
    let mut set = Vec::new();
    match &b.set {
        Json::Null => {}
        Json::Object(o) => set.extend(o.iter().map(|(k, v)| (k.clone(), v.clone()))),
        Json::Array(a) => {
            for item in a {
                let Some((k, v)) = item.as_str().and_then(|s| s.split_once('=')) else {
                    return Err(bad(format!("`set` item {item}: expected \"NAME=VALUE\"")));
                };
                set.push((k.trim().to_string(), parse_set_value(v)));
            }
        }
        _ => return Err(bad("`set` must be an object or a list of NAME=VALUE")),
    }
    Ok((graph, set))
}

fn bad(message: impl Into<String>) -> Box<Response> {
    Box::new(error(StatusCode::BAD_REQUEST, message))
}

/// The response for a refused submission.
pub fn rejected(r: Rejected) -> Response {
    match r {
        Rejected::Invalid(d) => (
            StatusCode::BAD_REQUEST,
            AxJson(json!({"error": "the graph does not validate", "diagnostics": d})),
        )
            .into_response(),
        Rejected::Duplicate(id) => {
            error(StatusCode::CONFLICT, format!("a job with id `{id}` exists"))
        }
        Rejected::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
        Rejected::Internal(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

async fn submit(State(s): State<Arc<Shared>>, AxJson(body): AxJson<GraphBody>) -> Response {
    let (graph, set) = match parse_body(&body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let sub = Submission {
        id: body.id.clone(),
        graph,
        set,
        client: None,
        comfy: None,
        origin: Json::Null,
        pool: body.pool.clone(),
    };
    match tokio::task::spawn_blocking(move || s.submit(sub)).await {
        Ok(Ok(job)) => (
            StatusCode::CREATED,
            AxJson(json!({"id": job.id, "number": job.number})),
        )
            .into_response(),
        Ok(Err(r)) => rejected(r),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn job(State(s): State<Arc<Shared>>, AxPath(id): AxPath<String>) -> Response {
    match s.jobs.get(&id) {
        Ok(Some(j)) => AxJson(j).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job `{id}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn cancel(State(s): State<Arc<Shared>>, AxPath(id): AxPath<String>) -> Response {
    if s.cancel(&id) {
        AxJson(json!({"cancelled": id})).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("no pending or running job `{id}`"),
        )
    }
}

async fn queue(State(s): State<Arc<Shared>>) -> Response {
    match s.jobs.queue() {
        Ok(jobs) => {
            let (running, pending): (Vec<_>, Vec<_>) = jobs
                .into_iter()
                .partition(|j| j.state == super::store::State::Running);
            AxJson(json!({"running": running, "pending": pending})).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn clear_queue(State(s): State<Arc<Shared>>) -> Response {
    let n = s.jobs.clear_pending();
    s.status_changed();
    match n {
        Ok(n) => AxJson(json!({"cancelled": n})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn history(State(s): State<Arc<Shared>>, Query(q): Query<Limit>) -> Response {
    match s.jobs.history(q.limit.unwrap_or(100)) {
        Ok(jobs) => AxJson(jobs).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn clear_history(State(s): State<Arc<Shared>>) -> Response {
    match s.jobs.delete_history(None) {
        Ok(()) => AxJson(json!({"cleared": true})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Serves a file under `root` (never outside it).
pub async fn file_under(root: &std::path::Path, rel: &str) -> Response {
    let Some(path) = contained(root, rel) else {
        return error(StatusCode::BAD_REQUEST, "the path leaves the folder");
    };
    // A regular file only: no devices or FIFOs, and no symlink out of the folder.
    match tokio::fs::symlink_metadata(&path).await {
        Ok(m) if m.is_file() => {}
        _ => return error(StatusCode::NOT_FOUND, format!("no file `{rel}`")),
    }
    let ty = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(axum::http::header::CONTENT_TYPE, ty)], bytes).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn output(
    State(s): State<Arc<Shared>>,
    AxPath((id, file)): AxPath<(String, String)>,
) -> Response {
    let rel = format!("{id}/{file}");
    fetch_output(&s, &rel).await;
    file_under(&s.outputs, &rel).await
}

/// Brings an output written elsewhere (by a farm worker) into the outputs folder.
pub async fn fetch_output(s: &Arc<Shared>, rel: &str) {
    let (s, rel) = (s.clone(), rel.to_string());
    let _ = tokio::task::spawn_blocking(move || s.jobs.fetch_output(&rel)).await;
}

/// Shares an upload with the workers elsewhere (a farm's); the error as a response.
pub async fn share_upload(s: &Arc<Shared>, name: &str, bytes: &[u8]) -> Result<(), Response> {
    let (s, name, bytes) = (s.clone(), name.to_string(), bytes.to_vec());
    match tokio::task::spawn_blocking(move || s.jobs.uploaded(&name, &bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(error(StatusCode::BAD_GATEWAY, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn workers(State(s): State<Arc<Shared>>) -> Response {
    let w = tokio::task::spawn_blocking(move || s.jobs.workers()).await;
    AxJson(w.unwrap_or(Json::Null)).into_response()
}

/// Keeps a client's file name to letters, digits, `.`, `-` and `_` (no folders).
pub fn clean_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!clean.is_empty() && !clean.starts_with('.')).then_some(clean)
}

/// Writes an upload into `dir` atomically; without `overwrite`, a taken name gets a number.
pub async fn store_upload(
    dir: &std::path::Path,
    name: &str,
    bytes: &[u8],
    overwrite: bool,
) -> Result<String, String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| e.to_string())?;
    let mut chosen = name.to_string();
    if !overwrite {
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) => (s.to_string(), format!(".{e}")),
            None => (name.to_string(), String::new()),
        };
        let mut k = 1;
        while tokio::fs::try_exists(dir.join(&chosen))
            .await
            .unwrap_or(false)
        {
            chosen = format!("{stem} ({k}){ext}");
            k += 1;
        }
    }
    let tmp = dir.join(format!(".{chosen}.upload"));
    tokio::fs::write(&tmp, bytes)
        .await
        .map_err(|e| e.to_string())?;
    tokio::fs::rename(&tmp, dir.join(&chosen))
        .await
        .map_err(|e| e.to_string())?;
    Ok(chosen)
}

async fn upload(State(s): State<Arc<Shared>>, mut form: Multipart) -> Response {
    let mut saved = Vec::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return error(e.status(), e.body_text()),
        };
        let Some(name) = field.file_name().and_then(clean_name) else {
            continue;
        };
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return error(e.status(), e.body_text()),
        };
        match store_upload(&s.inputs, &name, &bytes, false).await {
            Ok(n) => {
                if let Err(r) = share_upload(&s, &n, &bytes).await {
                    return r;
                }
                saved.push(n)
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
    if saved.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no file in the form");
    }
    AxJson(json!({"files": saved})).into_response()
}

async fn nodes(State(s): State<Arc<Shared>>) -> Response {
    AxJson(crate::catalog::nodes_json(&s.registry)).into_response()
}

async fn validate(s: State<Arc<Shared>>, body: AxJson<GraphBody>) -> Response {
    plan_or_validate(s, body, false).await
}

/// The graph as the browser view draws it: nodes with typed ports, params and positions, and
/// edges with their types; with the diagnostics.
fn plan_json(v: &crate::graph::Validated) -> Json {
    let Some(plan) = &v.plan else {
        return json!({"valid": false, "diagnostics": v.diagnostics, "nodes": [], "edges": []});
    };
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for n in &plan.nodes {
        let d = &n.ty.desc;
        let inputs: Vec<Json> = d
            .inputs
            .iter()
            .map(|p| json!({"name": p.name.as_str(), "type": p.ty.to_string(), "optional": p.optional}))
            .collect();
        let outputs: Vec<Json> = d
            .outputs
            .iter()
            .zip(&n.output_types)
            .map(|(p, t)| json!({"name": p.name.as_str(), "type": t.to_string()}))
            .collect();
        for (k, src) in n.inputs.iter().enumerate() {
            if let crate::graph::Source::Node { node, port } = src {
                let from = &plan.nodes[*node];
                edges.push(json!({
                    "from": from.id, "from_port": from.ty.desc.outputs.get(*port).map(|p| p.name.to_string()),
                    "to": n.id, "to_port": d.inputs.get(k).map(|p| p.name.to_string()),
                    "type": from.output_types.get(*port).map(|t| t.to_string()),
                }));
            }
        }
        nodes.push(json!({
            "id": n.id, "type": d.type_id.as_str(), "inputs": inputs, "outputs": outputs,
            "params": &*n.params, "line": n.pos.line, "column": n.pos.column,
        }));
    }
    json!({"valid": true, "diagnostics": v.diagnostics, "nodes": nodes, "edges": edges})
}

async fn plan(s: State<Arc<Shared>>, body: AxJson<GraphBody>) -> Response {
    plan_or_validate(s, body, true).await
}

/// Validates a graph; with `full`, returns the drawable graph too.
async fn plan_or_validate(
    State(s): State<Arc<Shared>>,
    AxJson(body): AxJson<GraphBody>,
    full: bool,
) -> Response {
    let (graph, set) = match parse_body(&body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let v = tokio::task::spawn_blocking(move || {
        let path = s.inputs.join("graph.yaml");
        let v = validate_bytes(
            &path,
            graph.as_bytes(),
            &s.registry,
            &Overrides { set, seed: None },
        );
        if full {
            plan_json(&v)
        } else {
            json!({"valid": v.plan.is_some(), "diagnostics": v.diagnostics})
        }
    })
    .await;
    match v {
        Ok(j) => AxJson(j).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn job_plan(State(s): State<Arc<Shared>>, AxPath(id): AxPath<String>) -> Response {
    let job = match s.jobs.get(&id) {
        Ok(Some(j)) => j,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no job `{id}`")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let v = tokio::task::spawn_blocking(move || {
        let path = s.inputs.join(format!("{}.graph", job.id));
        let mut j = plan_json(&validate_bytes(
            &path,
            job.graph.as_bytes(),
            &s.registry,
            &Overrides {
                set: job.set.clone(),
                seed: None,
            },
        ));
        j["graph"] = Json::from(job.graph.clone());
        j
    })
    .await;
    match v {
        Ok(j) => AxJson(j).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn events(State(s): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| native_socket(s, socket))
}

async fn native_socket(s: Arc<Shared>, mut socket: WebSocket) {
    let mut rx = s.hub.subscribe();
    loop {
        let note = match rx.recv().await {
            Ok(n) => n,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let msg = match note {
            Note::Native(j) => Message::Text(j.to_string().into()),
            Note::Preview { job, node, png, .. } => {
                // A JSON header line, then the PNG: [len u32 BE][header][png].
                let header = json!({"event": "preview", "job": job, "node": node.0}).to_string();
                let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
                bytes.extend_from_slice(header.as_bytes());
                bytes.extend_from_slice(&png);
                Message::Binary(bytes.into())
            }
            Note::Comfy { .. } => continue,
        };
        if socket.send(msg).await.is_err() {
            return;
        }
    }
}
