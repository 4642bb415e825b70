//! `latentflow worker --nats URL`: pulls one job at a time from its pool's durable consumer,
//! claims its record, runs it with a long-lived executor, publishes its events and previews,
//! stores its outputs and record, and acknowledges it.
//!
//! - A job is acknowledged only once its record is final: a worker that dies leaves it to be
//!   redelivered when the ack deadline passes (`AckProgress` every third of it keeps a long
//!   run's job).
//! - An invalid graph is terminated (never redelivered) with an error event.
//! - A job no worker finished in `max_deliver` deliveries is moved to `lf.dead.<pool>` and
//!   marked failed (the max-deliveries advisory, one handler per farm).
//! - Cancel arrives on `lf.cancel.<id>`; the run checks for it between nodes and steps.
//! - A heartbeat with the worker's plugins, devices and models says it is alive.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use tokio::io::AsyncReadExt;

use super::record::{self, Record};
use super::{js_err, names, Farm, FarmConfig, FarmError};
use crate::exec::Executor;
use crate::graph::Plan;
use crate::plugins::Registry;
use crate::serve::events::{Note, Notify};
use crate::serve::runner::{execute, Ended, JobContext};
use crate::serve::store::State;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The server and delivery settings.
    pub farm: FarmConfig,
    /// The pool whose jobs it takes.
    pub pool: String,
    /// Its id (default: host name and process id).
    pub id: Option<String>,
    /// Its folder for uploads (`input/`) and outputs (`output/`).
    pub data_dir: PathBuf,
    /// Result cache budget across jobs, in bytes.
    pub cache_bytes: usize,
    /// Threads per run.
    pub threads: Option<usize>,
}

/// What the heartbeat reports besides the capabilities.
#[derive(Default)]
struct Status {
    running: Option<String>,
    done: u64,
    models: Vec<String>,
}

/// Runs a worker until Ctrl-C (the job in hand is handed back for another worker).
pub fn work(cfg: WorkerConfig, registry: Registry) -> Result<(), FarmError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| FarmError::Io(e.to_string()))?;
    rt.block_on(run(cfg, Arc::new(registry)))
}

fn worker_id(cfg: &WorkerConfig) -> String {
    cfg.id.clone().unwrap_or_else(|| {
        let host: String = super::hostname()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        format!("{host}-{}", std::process::id())
    })
}

async fn run(cfg: WorkerConfig, registry: Arc<Registry>) -> Result<(), FarmError> {
    names::check("pool", &cfg.pool)?;
    let id = worker_id(&cfg);
    names::check("worker id", &id)?;
    let io = |e: std::io::Error| FarmError::Io(e.to_string());
    let inputs = cfg.data_dir.join("input");
    let outputs = cfg.data_dir.join("output");
    std::fs::create_dir_all(&inputs).map_err(io)?;
    std::fs::create_dir_all(&outputs).map_err(io)?;
    let outputs = outputs.canonicalize().map_err(io)?;
    let inputs = inputs.canonicalize().map_err(io)?;

    let farm = Farm::connect(cfg.farm.clone(), &format!("latentflow worker {id}")).await?;
    let mut consumer: jetstream::consumer::Consumer<pull::Config> = farm
        .jobs
        .get_or_create_consumer(
            &names::consumer(&cfg.pool),
            pull::Config {
                durable_name: Some(names::consumer(&cfg.pool)),
                filter_subject: names::jobs_subject(&cfg.pool),
                ack_policy: AckPolicy::Explicit,
                ack_wait: cfg.farm.ack_wait,
                max_deliver: cfg.farm.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(js_err)?;
    let ack_wait = match consumer.info().await {
        Ok(info) => {
            let c = &info.config;
            if c.ack_wait != cfg.farm.ack_wait || c.max_deliver != cfg.farm.max_deliver {
                tracing::warn!(
                    "consumer {} exists with ack wait {:?} and max deliver {}; those apply",
                    names::consumer(&cfg.pool),
                    c.ack_wait,
                    c.max_deliver
                );
            }
            c.ack_wait
        }
        Err(_) => cfg.farm.ack_wait,
    };

    let flags: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>> = Arc::default();
    tokio::spawn(listen_for_cancel(farm.clone(), flags.clone()));
    tokio::spawn(dead_letters(farm.clone()));
    let status = Arc::new(Mutex::new(Status::default()));
    let caps = super::capabilities(&registry, &id, &cfg.pool, cfg.threads);
    tokio::spawn(heartbeat(farm.clone(), id.clone(), caps, status.clone()));

    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let (stop, stopping) = (stop.clone(), stopping.clone());
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stopping.store(true, Ordering::Relaxed);
                stop.notify_waiters();
            }
        });
    }
    // One line a script can wait for.
    eprintln!(
        "latentflow worker {id}: pool `{}`, waiting for jobs on {}",
        cfg.pool, cfg.farm.url
    );
    let mut exec = Some(Executor::new(Some(cfg.cache_bytes)));
    let mut seen_inputs: HashMap<String, String> = HashMap::new();
    let job_ctx = Worker {
        farm: farm.clone(),
        id: id.clone(),
        registry,
        inputs,
        outputs,
        threads: cfg.threads,
        ack_wait,
        flags,
        status: status.clone(),
    };
    while !stopping.load(Ordering::Relaxed) {
        let batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("pulling a job: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let next = tokio::select! {
            m = batch.next() => m,
            _ = stop.notified() => None,
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!("pulling a job: {e}");
                continue;
            }
            None => continue,
        };
        let held = exec
            .take()
            .unwrap_or_else(|| Executor::new(Some(cfg.cache_bytes)));
        let back = job_ctx
            .handle(msg, held, &mut seen_inputs, &stop, &stopping)
            .await;
        exec = Some(back);
    }
    let _ = farm.workers.delete(&id).await;
    eprintln!("latentflow worker {id}: stopped");
    Ok(())
}

/// What a job is run with.
struct Worker {
    farm: Farm,
    id: String,
    registry: Arc<Registry>,
    inputs: PathBuf,
    outputs: PathBuf,
    threads: Option<usize>,
    ack_wait: Duration,
    flags: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    status: Arc<Mutex<Status>>,
}

/// What claiming a job's record decided.
enum Claim {
    /// Run it (the record now says running on this worker).
    Run(Box<Record>),
    /// It is over (or was cancelled or deleted): acknowledge without running.
    Skip,
    /// The store failed: hand it back.
    Retry(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    async fn handle(
        &self,
        msg: jetstream::Message,
        exec: Executor,
        seen_inputs: &mut HashMap<String, String>,
        stop: &tokio::sync::Notify,
        stopping: &AtomicBool,
    ) -> Executor {
        let (delivered, seq) = match msg.info() {
            Ok(i) => (i.delivered, i.stream_sequence),
            Err(_) => (1, 0),
        };
        let Some(rec) = Record::parse(&msg.payload).filter(|r| names::is_token(&r.job.id)) else {
            tracing::warn!(
                "a message on {} is not a job record: terminated",
                msg.subject
            );
            let _ = msg.ack_with(AckKind::Term).await;
            return exec;
        };
        let id = rec.job.id.clone();
        // Registered before the record says running: a cancel sent once it does is not missed.
        let flag = Arc::new(AtomicBool::new(false));
        lock(&self.flags).insert(id.clone(), flag.clone());
        let claimed = self.claim(rec, delivered, seq).await;
        let rec = match claimed {
            Claim::Run(r) => *r,
            Claim::Skip => {
                lock(&self.flags).remove(&id);
                let _ = msg.double_ack().await;
                return exec;
            }
            Claim::Retry(why) => {
                lock(&self.flags).remove(&id);
                tracing::warn!("job {id}: {why}; handed back");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return exec;
            }
        };
        tracing::info!("job {id}: running (delivery {delivered})");
        lock(&self.status).running = Some(id.clone());
        if let Err(e) = self.sync_inputs(seen_inputs).await {
            tracing::warn!("fetching uploads: {e}");
        }

        // Events go out in order from one task.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Note>();
        let notify: Notify = Arc::new(move |n| {
            let _ = tx.send(n);
        });
        let publisher = {
            let (client, id) = (self.farm.client.clone(), id.clone());
            tokio::spawn(async move {
                while let Some(note) = rx.recv().await {
                    let (preview, headers, body) = record::encode(&note);
                    let subject = if preview {
                        format!("{}.{id}", names::PREVIEWS)
                    } else {
                        format!("{}.{id}", names::EVENTS)
                    };
                    let _ = client.publish_with_headers(subject, headers, body).await;
                }
                let _ = client.flush().await;
            })
        };

        let job = rec.clone().into_job();
        let (registry, inputs, outputs, threads) = (
            self.registry.clone(),
            self.inputs.clone(),
            self.outputs.clone(),
            self.threads,
        );
        let status = self.status.clone();
        let run_flag = flag.clone();
        let mut run = tokio::task::spawn_blocking(move || {
            let mut exec = exec;
            let ctx = JobContext {
                registry: &registry,
                inputs,
                outputs,
                threads,
                notify,
                cancel: run_flag,
            };
            let end = execute(&ctx, &mut exec, &job, |plan| {
                let mut s = lock(&status);
                for m in models_of(plan) {
                    s.models.retain(|x| x != &m);
                    s.models.insert(0, m);
                }
                s.models.truncate(8);
            });
            (exec, end)
        });
        let mut tick = tokio::time::interval((self.ack_wait / 3).max(Duration::from_millis(100)));
        tick.tick().await;
        let mut handed_back = false;
        let joined = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = tick.tick() => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::warn!("job {id}: ack progress: {e}");
                    }
                }
                _ = stop.notified(), if !handed_back => {
                    // Stopping: stop the run and let another worker have the job now.
                    handed_back = true;
                    flag.store(true, Ordering::Relaxed);
                }
            }
        };
        let _ = publisher.await;
        lock(&self.flags).remove(&id);
        lock(&self.status).running = None;
        let (exec, end) = match joined {
            Ok(x) => x,
            Err(e) => {
                // The run panicked: the executor is gone; the job is failed, not retried.
                let end = Ended {
                    state: State::Failed,
                    outputs: Json::Object(Default::default()),
                    error: Some(format!("the run panicked: {e}")),
                    nodes: Json::Object(Default::default()),
                    invalid: false,
                };
                (Executor::new(None), end)
            }
        };
        if handed_back || (stopping.load(Ordering::Relaxed) && end.state == State::Cancelled) {
            let mut back = rec;
            back.job.state = State::Pending;
            back.job.worker = None;
            let _ = self.farm.records.put(&id, back.bytes()).await;
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            tracing::info!("job {id}: handed back (the worker is stopping)");
            return exec;
        }
        self.finish(rec, end, &msg).await;
        lock(&self.status).done += 1;
        exec
    }

    /// Moves the record from pending (or running on a worker that died) to running here.
    async fn claim(&self, msg_rec: Record, delivered: i64, seq: u64) -> Claim {
        let id = msg_rec.job.id.clone();
        for _ in 0..16 {
            let entry = match self.farm.records.entry(id.as_str()).await {
                Ok(e) => e,
                Err(e) => return Claim::Retry(e.to_string()),
            };
            let Some(entry) = entry else {
                // Published straight to the stream, not through `serve`: make its record.
                let mut r = msg_rec.clone();
                r.job.number = seq as i64;
                if r.job.state.is_final() {
                    return Claim::Skip;
                }
                r.job.state = State::Pending;
                let _ = self.farm.records.create(&id, r.bytes()).await;
                continue;
            };
            let Some(mut r) = Record::parse(&entry.value) else {
                return Claim::Skip;
            };
            if r.job.state.is_final() {
                return Claim::Skip;
            }
            r.job.state = State::Running;
            r.job.worker = Some(self.id.clone());
            r.job.started = Some(record::now());
            r.job.attempts = delivered.max(1) as u32;
            match self
                .farm
                .records
                .update(&id, r.bytes(), entry.revision)
                .await
            {
                Ok(_) => return Claim::Run(Box::new(r)),
                // Changed meanwhile (cancelled, or claimed): look again.
                Err(_) => continue,
            }
        }
        Claim::Retry("its record keeps changing".into())
    }

    /// Stores the outputs and the record, then acknowledges (or terminates) the message.
    async fn finish(&self, mut rec: Record, end: Ended, msg: &jetstream::Message) {
        let id = rec.job.id.clone();
        let mut error = end.error.clone();
        for files in end.outputs.as_object().into_iter().flat_map(|o| o.values()) {
            for rel in files
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
            {
                if let Err(e) = self.upload_output(rel).await {
                    let why = format!("storing output {rel}: {e}");
                    tracing::error!("job {id}: {why}");
                    error.get_or_insert(why);
                }
            }
        }
        rec.job.outputs = end.outputs.clone();
        rec.job.nodes = end.nodes.clone();
        rec.job.worker = Some(self.id.clone());
        rec.finish(end.state, error);
        // The worker owns a running record: a plain put.
        if let Err(e) = self.farm.records.put(&id, rec.bytes()).await {
            tracing::error!("job {id}: storing its record: {e}; handed back");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
        let ack = if end.invalid {
            msg.ack_with(AckKind::Term).await
        } else {
            msg.double_ack().await
        };
        if let Err(e) = ack {
            tracing::warn!("job {id}: ack: {e}");
        }
        tracing::info!("job {id}: {:?}", end.state);
    }

    async fn upload_output(&self, rel: &str) -> Result<(), String> {
        let path = crate::serve::contained(&self.outputs, rel).ok_or("leaves the folder")?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| e.to_string())?;
        let mut reader = tokio::io::BufReader::new(file);
        self.farm
            .outputs
            .put(rel, &mut reader)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Copies uploads that are new or changed from the object store into `input/`.
    async fn sync_inputs(&self, seen: &mut HashMap<String, String>) -> Result<(), String> {
        let mut list = self.farm.inputs.list().await.map_err(|e| e.to_string())?;
        let mut wanted = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| e.to_string())?;
            if info.deleted
                || seen.get(&info.name) == Some(&info.digest.clone().unwrap_or_default())
            {
                continue;
            }
            wanted.push(info);
        }
        for info in wanted {
            let Some(path) = crate::serve::contained(&self.inputs, &info.name) else {
                continue;
            };
            let mut obj = self
                .farm
                .inputs
                .get(&info.name)
                .await
                .map_err(|e| e.to_string())?;
            let mut bytes = Vec::with_capacity(info.size.min(1 << 30));
            obj.read_to_end(&mut bytes)
                .await
                .map_err(|e| e.to_string())?;
            write_atomic(&path, &bytes).map_err(|e| e.to_string())?;
            seen.insert(info.name.clone(), info.digest.clone().unwrap_or_default());
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The model files a plan loads (string params of loader nodes naming existing paths).
fn models_of(plan: &Plan) -> Vec<String> {
    plan.nodes
        .iter()
        .filter(|n| n.ty.desc.type_id.as_str().contains("load"))
        .flat_map(|n| n.params.values())
        .filter_map(Json::as_str)
        .filter(|s| Path::new(s).exists())
        .map(str::to_string)
        .collect()
}

async fn listen_for_cancel(farm: Farm, flags: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>) {
    let mut sub = match farm.client.subscribe(format!("{}.*", names::CANCEL)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for cancel requests: {e}");
            return;
        }
    };
    while let Some(m) = sub.next().await {
        let id = m.subject.rsplit('.').next().unwrap_or_default();
        if let Some(f) = lock(&flags).get(id) {
            f.store(true, Ordering::Relaxed);
            tracing::info!("job {id}: cancel requested");
        }
    }
}

async fn heartbeat(farm: Farm, id: String, caps: Json, status: Arc<Mutex<Status>>) {
    let started = record::now();
    let mut tick = tokio::time::interval(names::HEARTBEAT);
    loop {
        tick.tick().await;
        let mut beat = caps.clone();
        if let Some(o) = beat.as_object_mut() {
            let s = lock(&status);
            o.insert("running".into(), Json::from(s.running.clone()));
            o.insert("jobs_done".into(), Json::from(s.done));
            o.insert("models".into(), Json::from(s.models.clone()));
            o.insert("started".into(), Json::from(started));
            o.insert("seen".into(), Json::from(record::now()));
        }
        if let Err(e) = farm.workers.put(&id, beat.to_string().into()).await {
            tracing::warn!("heartbeat: {e}");
        }
    }
}

/// Handles max-deliveries advisories (one handler per advisory across the farm): the job goes
/// to `lf.dead.<pool>` and its record is failed.
pub(crate) async fn dead_letters(farm: Farm) {
    let sub = farm
        .client
        .queue_subscribe(
            names::max_deliveries_advisory(),
            names::DEAD_LETTER_GROUP.into(),
        )
        .await;
    let mut sub = match sub {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for max-deliveries advisories: {e}");
            return;
        }
    };
    while let Some(m) = sub.next().await {
        let Ok(a) = serde_json::from_slice::<Json>(&m.payload) else {
            continue;
        };
        let (Some(seq), deliveries) = (
            a.get("stream_seq").and_then(Json::as_u64),
            a.get("deliveries").and_then(Json::as_u64).unwrap_or(0),
        ) else {
            continue;
        };
        if let Err(e) = bury(&farm, seq, deliveries).await {
            tracing::error!("dead-lettering message {seq}: {e}");
        }
    }
}

async fn bury(farm: &Farm, seq: u64, deliveries: u64) -> Result<(), String> {
    let raw = farm
        .jobs
        .get_raw_message(seq)
        .await
        .map_err(|e| e.to_string())?;
    let pool = raw
        .subject
        .strip_prefix(&format!("{}.", names::JOBS_SUBJECT))
        .unwrap_or(names::DEFAULT_POOL)
        .to_string();
    let dead = format!("{}.{pool}", names::DEAD_SUBJECT);
    farm.js
        .publish(dead.clone(), raw.payload.clone())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    if let Some(rec) = Record::parse(&raw.payload) {
        let id = rec.job.id.clone();
        let why = format!(
            "no worker finished it in {deliveries} deliveries (each worker that took it stopped \
             or lost contact); the job is kept on {dead}"
        );
        if let Ok(Some(entry)) = farm.records.entry(id.as_str()).await {
            if let Some(mut cur) = Record::parse(&entry.value).filter(|r| !r.job.state.is_final()) {
                cur.finish(State::Failed, Some(why.clone()));
                let _ = farm.records.update(&id, cur.bytes(), entry.revision).await;
                let event = json!({"comfy": {"type": "execution_error", "data": {"prompt_id": id,
                    "node_id": null, "node_type": null, "exception_message": why,
                    "exception_type": "latentflow", "traceback": [], "current_inputs": {},
                    "current_outputs": {}}}, "client": cur.job.client});
                let _ = farm
                    .client
                    .publish(format!("{}.{id}", names::EVENTS), event.to_string().into())
                    .await;
            }
        }
        tracing::warn!("job {id}: dead-lettered after {deliveries} deliveries");
    }
    farm.jobs
        .delete_message(seq)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Live workers from heartbeat entries: `{id: heartbeat}`.
pub(crate) fn live(beats: &BTreeMap<String, Json>) -> Vec<Json> {
    let now = record::now();
    beats
        .values()
        .filter(|b| {
            b.get("seen")
                .and_then(Json::as_f64)
                .is_some_and(|t| now - t < names::HEARTBEAT_TTL.as_secs_f64())
        })
        .cloned()
        .collect()
}
