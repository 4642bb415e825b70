//! `latentflow serve`: an HTTP and WebSocket server over a persistent job queue.
//!
//! - [`queue`]: where jobs wait ([`queue::JobQueue`]): on one machine, [`store`] (SQLite:
//!   pending jobs survive restarts) drained by [`runner`] (one thread, one long-lived executor:
//!   models and cached results stay between jobs); with `--nats`, a JetStream stream drained by
//!   `latentflow worker`s ([`crate::farm`]).
//! - [`events`]: run events to sockets, natively and as ComfyUI messages.
//! - [`native`]: LatentFlow's API under `/api/v1`.
//! - [`comfy`]: the subset of ComfyUI's API that scripts and clients use, at `/` and `/api/`.
//!
//! Every graph is validated before it is queued. The server binds to loopback unless told
//! otherwise, and then requires a bearer token; request bodies are bounded; uploads and output
//! files stay inside the data folder.

pub mod comfy;
pub mod events;
pub mod native;
pub mod queue;
pub mod runner;
pub mod store;
pub mod view;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State as AxState};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value as Json};

use crate::graph::{validate_bytes, Diagnostic, Overrides};
use crate::plugins::Registry;
use events::{Hub, Note};
use queue::{JobQueue, LocalQueue};
use store::{Job, NewJob, Store, StoreError};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token required on every request (mandatory off loopback).
    pub token: Option<String>,
    /// The folder for the queue database, uploads (`input/`) and outputs (`output/`).
    pub data_dir: PathBuf,
    /// Result cache budget across jobs, in bytes.
    pub cache_bytes: usize,
    /// Finished jobs kept in history.
    pub history_limit: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Worker threads per run.
    pub threads: Option<usize>,
    /// Plugin folders, which the data folder must stay out of.
    pub plugin_dirs: Vec<PathBuf>,
    /// A graph file the browser view shows and redraws on every save.
    pub graph: Option<PathBuf>,
    /// A NATS server: jobs go to `latentflow worker`s through JetStream instead of running here.
    pub nats: Option<crate::farm::FarmConfig>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Listening anywhere but loopback needs a token.
    #[error("listening on {0} (not loopback) needs --token: the API runs graphs and reads files")]
    NeedsToken(SocketAddr),
    /// The data folder is or holds a plugin folder.
    #[error("the data folder {} would let uploads write into the plugin folder {}", .0.display(), .1.display())]
    DataInPlugins(PathBuf, PathBuf),
    /// I/O.
    #[error("{0}")]
    Io(String),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The NATS server.
    #[error(transparent)]
    Farm(#[from] crate::farm::FarmError),
}

/// State shared by the HTTP handlers and the runner.
pub struct Shared {
    /// The plugins.
    pub registry: Registry,
    /// The jobs.
    pub jobs: Arc<dyn JobQueue>,
    /// Events.
    pub hub: Hub,
    /// Uploads (ComfyUI's input folder); relative paths in graphs resolve here.
    pub inputs: PathBuf,
    /// Job outputs, one folder per job.
    pub outputs: PathBuf,
    /// Worker threads per run.
    pub threads: Option<usize>,
    token: Option<String>,
    counter: std::sync::atomic::AtomicU64,
    /// The `--graph` file, if any.
    pub graph_file: Option<PathBuf>,
}

impl Shared {
    /// Tells every ComfyUI socket how many jobs remain.
    pub fn status_changed(&self) {
        let remaining = self.jobs.pending_count().unwrap_or(0);
        let _ = self.hub.send(Note::Comfy {
            client: None,
            message: json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}),
        });
    }

    /// A fresh job id.
    pub fn new_id(&self) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let h = blake3::hash(format!("{t}:{n}:{}", std::process::id()).as_bytes());
        let hex = h.to_hex();
        // The 8-4-4-4-12 shape clients that expect UUIDs accept.
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// Validates and queues a graph.
    pub fn submit(&self, sub: Submission) -> Result<Job, Rejected> {
        if let Some(id) = &sub.id {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Rejected::BadRequest(format!(
                    "job id `{id}`: use 1 to 64 letters, digits, `-` or `_`"
                )));
            }
        }
        let id = sub.id.clone().unwrap_or_else(|| self.new_id());
        let overrides = Overrides {
            set: sub.set.clone(),
            seed: None,
        };
        let path = self.inputs.join(format!("{id}.graph"));
        let v = validate_bytes(&path, sub.graph.as_bytes(), &self.registry, &overrides);
        if v.plan.is_none() {
            return Err(Rejected::Invalid(v.diagnostics));
        }
        let plan = v.plan.as_ref();
        let needs = plan.map(crate::farm::plugins_needed).unwrap_or_default();
        let job = self.jobs.enqueue(NewJob {
            id,
            graph: sub.graph,
            set: sub.set,
            client: sub.client,
            comfy: sub.comfy,
            origin: sub.origin,
            pool: sub.pool,
            needs,
        });
        match job {
            Ok(job) => {
                self.status_changed();
                Ok(job)
            }
            Err(StoreError::Duplicate(id)) => Err(Rejected::Duplicate(id)),
            Err(StoreError::NoWorker(why)) => Err(Rejected::BadRequest(why)),
            Err(e) => Err(Rejected::Internal(e.to_string())),
        }
    }

    /// Cancels a job: pending ones are dropped, running ones are stopped between nodes and
    /// steps. Returns whether anything was cancelled.
    pub fn cancel(&self, id: &str) -> bool {
        let done = self.jobs.cancel(id);
        if done {
            self.status_changed();
        }
        done
    }

    /// Cancels the running jobs; returns their ids.
    pub fn interrupt(&self) -> Vec<String> {
        self.jobs.interrupt()
    }
}

/// A graph to queue.
pub struct Submission {
    /// The client's id for it, if it chose one.
    pub id: Option<String>,
    /// Graph text.
    pub graph: String,
    /// `--set` inputs.
    pub set: Vec<(String, Json)>,
    /// The ComfyUI client id.
    pub client: Option<String>,
    /// The ComfyUI prompt.
    pub comfy: Option<Json>,
    /// Our node id → ComfyUI node id.
    pub origin: Json,
    /// The worker pool to run it in (a farm's; `None`: any that has the plugins).
    pub pool: Option<String>,
}

/// Why a submission was refused.
#[derive(Debug)]
pub enum Rejected {
    /// The graph does not validate.
    Invalid(Vec<Diagnostic>),
    /// A job with that id exists (a resubmission: queued once).
    Duplicate(String),
    /// Malformed request.
    BadRequest(String),
    /// Something broke.
    Internal(String),
}

/// A JSON error response.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn require_token(
    AxState(shared): AxState<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &shared.token else {
        return next.run(req).await;
    };
    if view::is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Browsers cannot set headers on WebSocket upgrades: `?token=` works too.
    let query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    });
    let given = header.map(str::to_string).or(query);
    if given
        .as_deref()
        .is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
    {
        next.run(req).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer TOKEN)",
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A path under `root` for a client-given relative path, or `None` when it would leave it.
pub fn contained(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    for part in rel.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return None,
            p if p.contains('\0') => return None,
            p => out.push(p),
        }
    }
    Some(out)
}

/// Builds the router.
pub fn router(shared: Arc<Shared>, max_body: usize) -> Router {
    Router::new()
        .merge(view::routes())
        .merge(native::routes())
        .merge(comfy::routes())
        .nest("/api", comfy::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(shared)
}

/// Serves until the process is stopped.
pub fn serve(cfg: ServeConfig, registry: Registry) -> Result<(), ServeError> {
    if !cfg.listen.ip().is_loopback() && cfg.token.is_none() {
        return Err(ServeError::NeedsToken(cfg.listen));
    }
    let io = |e: std::io::Error| ServeError::Io(e.to_string());
    std::fs::create_dir_all(&cfg.data_dir).map_err(io)?;
    let data = cfg.data_dir.canonicalize().map_err(io)?;
    for p in &cfg.plugin_dirs {
        if let Ok(p) = p.canonicalize() {
            if p.starts_with(&data) || data.starts_with(&p) {
                return Err(ServeError::DataInPlugins(data, p));
            }
        }
    }
    let inputs = data.join("input");
    let outputs = data.join("output");
    std::fs::create_dir_all(&inputs).map_err(io)?;
    std::fs::create_dir_all(&outputs).map_err(io)?;
    let (hub, _) = tokio::sync::broadcast::channel(4096);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io)?;
    let (jobs, local): (Arc<dyn JobQueue>, Option<Arc<LocalQueue>>) = match &cfg.nats {
        Some(farm) => {
            let front = rt.block_on(crate::farm::Front::connect(
                farm.clone(),
                hub.clone(),
                outputs.clone(),
                cfg.history_limit,
            ))?;
            (front, None)
        }
        None => {
            let store = Store::open(&data.join("jobs.sqlite"), cfg.history_limit)?;
            let caps = crate::farm::capabilities(&registry, "local", "local", cfg.threads);
            let local = Arc::new(LocalQueue::new(store, caps));
            (local.clone(), Some(local))
        }
    };
    let shared = Arc::new(Shared {
        registry,
        jobs,
        hub,
        inputs,
        outputs,
        threads: cfg.threads,
        token: cfg.token.clone(),
        counter: Default::default(),
        graph_file: cfg.graph.clone(),
    });
    view::watch_graph_file(shared.clone());
    if let Some(local) = local {
        let runner_shared = shared.clone();
        let cache = cfg.cache_bytes;
        std::thread::Builder::new()
            .name("latentflow-runner".into())
            .spawn(move || runner::run(runner_shared, local, cache))
            .map_err(io)?;
    }
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        // One line a script can wait for.
        eprintln!("latentflow serve: listening on http://{addr}");
        axum::serve(listener, router(shared, cfg.max_body))
            .await
            .map_err(io)
    })
}
