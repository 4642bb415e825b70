//! The subset of ComfyUI's HTTP API that scripts and clients use (comfy-cli, n8n nodes,
//! ComfyUI's own `websockets_api_example.py`), served at `/` and under `/api/`.
//!
//! `POST /prompt` takes API-format JSON (`{id: {class_type, inputs}}`). Class types that are
//! LatentFlow node types map directly (`[node_id, output_index]` links by port order, other
//! inputs are params); ComfyUI's core class names go through the workflow importer, so a
//! client that sends a core ComfyUI workflow works unchanged.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Multipart, Path as AxPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as AxJson, Router};
use latentflow_plugin_api::ParamKind;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

use super::events::Note;
use super::native::{clean_name, file_under, store_upload};
use super::store::{Job, State as JobState};
use super::{error, Rejected, Shared, Submission};
use crate::plugins::Registry;

/// The routes (mounted at `/` and at `/api`).
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/prompt", post(prompt).get(prompt_info))
        .route("/queue", get(queue).post(edit_queue))
        .route("/history", get(history).post(edit_history))
        .route("/history/{id}", get(history_one))
        .route("/view", get(view))
        .route("/upload/image", post(upload_image))
        .route("/object_info", get(object_info))
        .route("/object_info/{class}", get(object_info_one))
        .route("/interrupt", post(interrupt))
        .route("/system_stats", get(system_stats))
        .route("/features", get(features))
        .route("/ws", get(ws))
}

/// A LatentFlow graph from an API-format prompt whose class types are LatentFlow node types:
/// links `[id, k]` take output `k` of node `id` by port order; other inputs are params.
fn native_graph(prompt: &Map<String, Json>, registry: &Registry) -> Result<Json, String> {
    let mut nodes = Map::new();
    for (id, node) in prompt {
        let class = node.get("class_type").and_then(Json::as_str).unwrap_or("");
        if registry.get(class).is_none() {
            return Err(format!("node {id}: unknown class_type `{class}`"));
        }
        let mut inputs = Map::new();
        let mut params = Map::new();
        for (name, v) in node
            .get("inputs")
            .and_then(Json::as_object)
            .into_iter()
            .flatten()
        {
            if let Some([src, slot]) = v.as_array().map(Vec::as_slice) {
                let src_id = match src {
                    Json::String(s) => s.clone(),
                    Json::Number(n) => n.to_string(),
                    _ => return Err(format!("node {id}: input `{name}` links to a bad node id")),
                };
                let Some(slot) = slot.as_u64() else {
                    return Err(format!(
                        "node {id}: input `{name}` links to a bad output index"
                    ));
                };
                let src_class = prompt
                    .get(&src_id)
                    .and_then(|n| n.get("class_type"))
                    .and_then(Json::as_str)
                    .unwrap_or("");
                let Some(port) = registry
                    .get(src_class)
                    .and_then(|t| t.desc.outputs.get(slot as usize))
                    .map(|p| p.name.to_string())
                else {
                    return Err(format!(
                        "node {id}: input `{name}` takes output {slot} of node {src_id}, which has no such output"
                    ));
                };
                inputs.insert(name.clone(), Json::from(format!("{src_id}.{port}")));
            } else {
                params.insert(name.clone(), v.clone());
            }
        }
        nodes.insert(
            id.clone(),
            json!({"type": class, "inputs": inputs, "params": params}),
        );
    }
    Ok(json!({"version": 1, "nodes": nodes}))
}

#[derive(Deserialize)]
struct PromptBody {
    prompt: Json,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    prompt_id: Option<String>,
}

fn invalid(message: &str, details: &str, node_errors: Json) -> Response {
    (
        StatusCode::BAD_REQUEST,
        AxJson(json!({
            "error": {"type": "prompt_outputs_failed_validation", "message": message, "details": details, "extra_info": {}},
            "node_errors": node_errors,
        })),
    )
        .into_response()
}

async fn prompt(State(s): State<Arc<Shared>>, AxJson(body): AxJson<PromptBody>) -> Response {
    let Some(p) = body.prompt.as_object().cloned() else {
        return invalid("the prompt must be an object of nodes", "", json!({}));
    };
    let all_ours = !p.is_empty()
        && p.values().all(|n| {
            n.get("class_type")
                .and_then(Json::as_str)
                .is_some_and(|c| s.registry.get(c).is_some())
        });
    let (graph, origin) = if all_ours {
        match native_graph(&p, &s.registry) {
            Ok(g) => {
                let origin: Map<String, Json> = p
                    .keys()
                    .map(|k| (k.clone(), Json::from(k.clone())))
                    .collect();
                (g.to_string(), Json::Object(origin))
            }
            Err(e) => return invalid("Prompt outputs failed validation", &e, json!({})),
        }
    } else {
        match latentflow_interop::comfy::import_json(&body.prompt, "prompt") {
            Ok(g) => {
                let origin: Map<String, Json> = g
                    .origin
                    .into_iter()
                    .map(|(k, v)| (k, Json::from(v)))
                    .collect();
                (g.yaml, Json::Object(origin))
            }
            Err(latentflow_interop::comfy::ImportError::Unmapped { report }) => {
                let mut errs = Map::new();
                for i in &report.unmapped {
                    errs.insert(
                        i.node.clone(),
                        json!({"errors": [{"type": "unmapped", "message": i.message, "details": "", "extra_info": {}}],
                               "dependent_outputs": [], "class_type": i.class}),
                    );
                }
                return invalid(
                    "Prompt outputs failed validation",
                    &report.to_string(),
                    Json::Object(errs),
                );
            }
            Err(e) => {
                return invalid(
                    "Prompt outputs failed validation",
                    &e.to_string(),
                    json!({}),
                )
            }
        }
    };
    let origin_map = super::events::origin_map(&origin);
    let sub = Submission {
        id: body.prompt_id.clone(),
        graph,
        set: Vec::new(),
        client: body.client_id.clone(),
        comfy: Some(body.prompt.clone()),
        origin,
        pool: None,
    };
    match tokio::task::spawn_blocking(move || s.submit(sub)).await {
        Ok(Ok(job)) => {
            AxJson(json!({"prompt_id": job.id, "number": job.number, "node_errors": {}}))
                .into_response()
        }
        Ok(Err(Rejected::Invalid(d))) => {
            let mut errs = Map::new();
            let mut details = Vec::new();
            for x in &d {
                details.push(x.to_string());
                if let Some(n) = &x.node {
                    let comfy = origin_map.get(n).cloned().unwrap_or_else(|| n.clone());
                    let entry = errs.entry(comfy).or_insert_with(
                        || json!({"errors": [], "dependent_outputs": [], "class_type": ""}),
                    );
                    if let Some(list) = entry.get_mut("errors").and_then(Json::as_array_mut) {
                        list.push(json!({"type": x.code, "message": x.message, "details": x.to_string(), "extra_info": {}}));
                    }
                }
            }
            invalid(
                "Prompt outputs failed validation",
                &details.join("\n"),
                Json::Object(errs),
            )
        }
        Ok(Err(Rejected::Duplicate(id))) => {
            // The same id again: queued once; ComfyUI answers with the job.
            AxJson(json!({"prompt_id": id, "number": 0, "node_errors": {}})).into_response()
        }
        Ok(Err(r)) => super::native::rejected(r),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn remaining(s: &Shared) -> usize {
    s.jobs.pending_count().unwrap_or(0)
}

async fn prompt_info(State(s): State<Arc<Shared>>) -> Response {
    AxJson(json!({"exec_info": {"queue_remaining": remaining(&s)}})).into_response()
}

fn queue_item(j: &Job) -> Json {
    json!([j.number, j.id, j.comfy.clone().unwrap_or(Json::Null), {"client_id": j.client}, []])
}

async fn queue(State(s): State<Arc<Shared>>) -> Response {
    let jobs = s.jobs.queue().unwrap_or_default();
    let running: Vec<Json> = jobs
        .iter()
        .filter(|j| j.state == JobState::Running)
        .map(queue_item)
        .collect();
    let pending: Vec<Json> = jobs
        .iter()
        .filter(|j| j.state == JobState::Pending)
        .map(queue_item)
        .collect();
    AxJson(json!({"queue_running": running, "queue_pending": pending})).into_response()
}

#[derive(Deserialize, Default)]
struct Edit {
    #[serde(default)]
    clear: bool,
    #[serde(default)]
    delete: Vec<String>,
}

async fn edit_queue(State(s): State<Arc<Shared>>, AxJson(e): AxJson<Edit>) -> Response {
    if e.clear {
        let _ = s.jobs.clear_pending();
    }
    for id in &e.delete {
        s.cancel(id);
    }
    s.status_changed();
    AxJson(json!({})).into_response()
}

fn history_entry(j: &Job) -> Json {
    let origin = j.origin.as_object();
    let mut outputs = Map::new();
    for (node, files) in j.outputs.as_object().into_iter().flatten() {
        let comfy = origin
            .and_then(|o| o.get(node))
            .and_then(Json::as_str)
            .unwrap_or(node)
            .to_string();
        let images: Vec<Json> = files
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .map(|f| {
                let (sub, name) = f.rsplit_once('/').unwrap_or(("", f));
                json!({"filename": name, "subfolder": sub, "type": "output"})
            })
            .collect();
        outputs.insert(comfy, json!({"images": images}));
    }
    let status = match j.state {
        JobState::Succeeded => "success",
        _ => "error",
    };
    json!({
        "prompt": queue_item(j),
        "outputs": outputs,
        "status": {"status_str": status, "completed": j.state == JobState::Succeeded,
                   "messages": j.error.as_ref().map(|e| vec![json!(["execution_error", {"exception_message": e}])]).unwrap_or_default()},
        "meta": {},
    })
}

#[derive(Deserialize)]
struct MaxItems {
    max_items: Option<usize>,
}

async fn history(State(s): State<Arc<Shared>>, Query(q): Query<MaxItems>) -> Response {
    let jobs = s
        .jobs
        .history(q.max_items.unwrap_or(200))
        .unwrap_or_default();
    let mut out = Map::new();
    for j in &jobs {
        out.insert(j.id.clone(), history_entry(j));
    }
    AxJson(Json::Object(out)).into_response()
}

async fn history_one(State(s): State<Arc<Shared>>, AxPath(id): AxPath<String>) -> Response {
    let job = s.jobs.get(&id).ok().flatten();
    let mut out = Map::new();
    if let Some(j) = job.filter(|j| j.state.is_final()) {
        out.insert(j.id.clone(), history_entry(&j));
    }
    AxJson(Json::Object(out)).into_response()
}

async fn edit_history(State(s): State<Arc<Shared>>, AxJson(e): AxJson<Edit>) -> Response {
    let store = &s.jobs;
    let r = if e.clear {
        store.delete_history(None)
    } else {
        store.delete_history(Some(&e.delete))
    };
    match r {
        Ok(()) => AxJson(json!({})).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

#[derive(Deserialize)]
struct ViewQuery {
    filename: String,
    #[serde(default)]
    subfolder: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

async fn view(State(s): State<Arc<Shared>>, Query(q): Query<ViewQuery>) -> Response {
    let input = q.kind.as_deref() == Some("input");
    let rel = if q.subfolder.is_empty() {
        q.filename.clone()
    } else {
        format!("{}/{}", q.subfolder, q.filename)
    };
    if !input {
        super::native::fetch_output(&s, &rel).await;
    }
    file_under(if input { &s.inputs } else { &s.outputs }, &rel).await
}

async fn upload_image(State(s): State<Arc<Shared>>, mut form: Multipart) -> Response {
    let mut data: Option<(String, Vec<u8>)> = None;
    let mut overwrite = false;
    let mut subfolder = String::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return error(e.status(), e.body_text()),
        };
        match field.name().unwrap_or("") {
            "image" => {
                let name = field.file_name().and_then(clean_name);
                let bytes = match field.bytes().await {
                    Ok(b) => b.to_vec(),
                    Err(e) => return error(e.status(), e.body_text()),
                };
                match name {
                    Some(n) => data = Some((n, bytes)),
                    None => {
                        return error(StatusCode::BAD_REQUEST, "the image has no usable file name")
                    }
                }
            }
            "overwrite" => {
                overwrite = field
                    .text()
                    .await
                    .map(|t| t == "true" || t == "1")
                    .unwrap_or(false)
            }
            "subfolder" => subfolder = field.text().await.unwrap_or_default(),
            _ => {}
        }
    }
    let Some((name, bytes)) = data else {
        return error(StatusCode::BAD_REQUEST, "no `image` field");
    };
    // Subfolders: plain names only.
    let parts: Vec<String> = subfolder
        .split(['/', '\\'])
        .filter(|p| !p.is_empty())
        .map(clean_name)
        .collect::<Option<_>>()
        .unwrap_or_default();
    let dir = parts.iter().fold(s.inputs.clone(), |d, p| d.join(p));
    match store_upload(&dir, &name, &bytes, overwrite).await {
        Ok(n) => {
            let rel = parts
                .iter()
                .chain([&n])
                .cloned()
                .collect::<Vec<_>>()
                .join("/");
            if let Err(r) = super::native::share_upload(&s, &rel, &bytes).await {
                return r;
            }
            AxJson(json!({"name": n, "subfolder": parts.join("/"), "type": "input"}))
                .into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn type_name(ty: &str) -> String {
    // `Latent{channels=4}` → `LATENT`, as ComfyUI spells types.
    ty.split('{').next().unwrap_or(ty).to_ascii_uppercase()
}

fn class_info(t: &crate::plugins::NodeType) -> Json {
    let d = &t.desc;
    let mut required = Map::new();
    let mut optional = Map::new();
    let mut order_req = Vec::new();
    let mut order_opt = Vec::new();
    for p in d.inputs.iter() {
        let spec = json!([type_name(&p.ty.to_string()), {"tooltip": p.doc.as_str()}]);
        if p.optional {
            optional.insert(p.name.to_string(), spec);
            order_opt.push(p.name.to_string());
        } else {
            required.insert(p.name.to_string(), spec);
            order_req.push(p.name.to_string());
        }
    }
    for p in d.params.iter() {
        let default = p
            .default
            .clone()
            .and_then(|s| serde_json::from_str::<Json>(s.as_str()).ok());
        let mut opts = Map::new();
        if let Some(v) = &default {
            opts.insert("default".into(), v.clone());
        }
        if let Some(m) = p.min {
            opts.insert("min".into(), Json::from(m));
        }
        if let Some(m) = p.max {
            opts.insert("max".into(), Json::from(m));
        }
        opts.insert("tooltip".into(), Json::from(p.doc.as_str()));
        let spec = match p.kind {
            ParamKind::Int | ParamKind::Seed => json!(["INT", opts]),
            ParamKind::Float => json!(["FLOAT", opts]),
            ParamKind::Bool => json!(["BOOLEAN", opts]),
            ParamKind::Enum => json!([
                p.choices.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                opts
            ]),
            _ => json!(["STRING", opts]),
        };
        if default.is_some() {
            optional.insert(p.name.to_string(), spec);
            order_opt.push(p.name.to_string());
        } else {
            required.insert(p.name.to_string(), spec);
            order_req.push(p.name.to_string());
        }
    }
    let outputs: Vec<String> = d
        .outputs
        .iter()
        .map(|p| type_name(&p.ty.to_string()))
        .collect();
    json!({
        "input": {"required": required, "optional": optional},
        "input_order": {"required": order_req, "optional": order_opt},
        "output": outputs,
        "output_is_list": d.outputs.iter().map(|_| false).collect::<Vec<_>>(),
        "output_name": d.outputs.iter().map(|p| p.name.to_string()).collect::<Vec<_>>(),
        "name": d.type_id.as_str(),
        "display_name": d.display_name.as_str(),
        "description": d.doc.as_str(),
        "python_module": format!("latentflow.{}", t.plugin.name),
        "category": d.type_id.split('.').next().unwrap_or(""),
        "output_node": d.caps.side_effects,
    })
}

async fn object_info(State(s): State<Arc<Shared>>) -> Response {
    let mut out = Map::new();
    for t in s.registry.types() {
        out.insert(t.desc.type_id.to_string(), class_info(t));
    }
    AxJson(Json::Object(out)).into_response()
}

async fn object_info_one(State(s): State<Arc<Shared>>, AxPath(class): AxPath<String>) -> Response {
    let mut out = Map::new();
    if let Some(t) = s.registry.get(&class) {
        out.insert(class, class_info(t));
    }
    AxJson(Json::Object(out)).into_response()
}

async fn interrupt(State(s): State<Arc<Shared>>, body: Option<AxJson<Json>>) -> Response {
    let wanted = body.and_then(|b| {
        b.0.get("prompt_id")
            .and_then(Json::as_str)
            .map(str::to_string)
    });
    match wanted {
        Some(id) => {
            s.cancel(&id);
        }
        None => {
            s.interrupt();
        }
    }
    AxJson(json!({})).into_response()
}

async fn system_stats() -> Response {
    let ram = crate::limits::physical_memory().unwrap_or(0);
    AxJson(json!({
        "system": {"os": std::env::consts::OS, "ram_total": ram, "ram_free": 0,
                   "comfyui_version": format!("latentflow {}", env!("CARGO_PKG_VERSION")),
                   "python_version": "", "pytorch_version": "", "embedded_python": false, "argv": []},
        "devices": [{"name": "cpu", "type": "cpu", "index": 0, "vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0}],
    }))
    .into_response()
}

async fn features() -> Response {
    AxJson(json!({"supports_preview_metadata": false, "max_upload_size": 0})).into_response()
}

#[derive(Deserialize)]
struct WsQuery {
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

async fn ws(
    State(s): State<Arc<Shared>>,
    Query(q): Query<WsQuery>,
    up: WebSocketUpgrade,
) -> Response {
    let client = q.client_id.unwrap_or_else(|| s.new_id());
    up.on_upgrade(move |socket| comfy_socket(s, socket, client))
}

async fn comfy_socket(s: Arc<Shared>, mut socket: WebSocket, client: String) {
    let mut rx = s.hub.subscribe();
    let hello = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining(&s)}}, "sid": client}});
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let note = match rx.recv().await {
            Ok(n) => n,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let msg = match note {
            Note::Comfy {
                client: to,
                message,
            } if to.is_none() || to.as_deref() == Some(client.as_str()) => {
                Message::Text(message.to_string().into())
            }
            Note::Preview {
                client: Some(to),
                png,
                ..
            } if to == client => {
                // ComfyUI's framing: event type 1 (preview image), format 2 (PNG), the bytes.
                let mut bytes = 1u32.to_be_bytes().to_vec();
                bytes.extend_from_slice(&2u32.to_be_bytes());
                bytes.extend_from_slice(&png);
                Message::Binary(bytes.into())
            }
            _ => continue,
        };
        if socket.send(msg).await.is_err() {
            return;
        }
    }
}
