//! Past one machine: jobs through NATS JetStream (`latentflow worker --nats URL`,
//! `latentflow serve --nats URL`).
//!
//! - [`names`]: the stream, consumers, buckets and subjects, in one place.
//! - [`record`]: a job record (the KV value) and the events on the wire.
//! - [`worker`]: pulls jobs, runs them, publishes events and outputs, heartbeats.
//! - [`front`]: the server's [`JobQueue`](crate::serve::queue::JobQueue) over the stream.
//!
//! Delivery is at least once: a job whose worker dies is redelivered when its ack deadline
//! passes, and the job record (a compare-and-set KV entry) keeps it in history once. Re-runs
//! are harmless: outputs are deterministic for a graph and its seed.

pub mod front;
pub mod names;
pub mod record;
pub mod worker;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use serde_json::{json, Value as Json};

use crate::graph::Plan;
use crate::plugins::Registry;

pub use front::Front;
pub use worker::{work, WorkerConfig};

/// Where the NATS server is and how jobs are delivered.
#[derive(Debug, Clone)]
pub struct FarmConfig {
    /// `nats://host:port` (several, comma-separated, for a cluster).
    pub url: String,
    /// How long a worker may hold a job without acknowledging progress before it is
    /// redelivered.
    pub ack_wait: Duration,
    /// Deliveries before a job goes to the dead-letter stream.
    pub max_deliver: i64,
}

impl FarmConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        FarmConfig {
            url: url.into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        }
    }
}

/// A NATS failure.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    /// The server cannot be reached.
    #[error("cannot connect to NATS at {url}: {why} (start one with `nats-server -js`)")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// JetStream refused something.
    #[error("NATS JetStream: {0} (is the server started with -js?)")]
    JetStream(String),
    /// A bad pool or worker name.
    #[error("{0}")]
    Name(String),
    /// Local I/O.
    #[error("{0}")]
    Io(String),
}

fn js_err(e: impl std::fmt::Display) -> FarmError {
    FarmError::JetStream(e.to_string())
}

/// The connection and the JetStream objects every side uses.
#[derive(Clone)]
pub struct Farm {
    /// Core NATS (events, cancel, advisories).
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
    /// The job stream.
    pub jobs: stream::Stream,
    /// Job records by id.
    pub records: kv::Store,
    /// Worker heartbeats by worker id (entries expire).
    pub workers: kv::Store,
    /// Outputs, named `JOB/FILE`.
    pub outputs: object_store::ObjectStore,
    /// Uploads, named as in the inputs folder.
    pub inputs: object_store::ObjectStore,
    /// The settings.
    pub config: FarmConfig,
}

impl Farm {
    /// Connects and makes sure the streams and buckets exist.
    pub async fn connect(config: FarmConfig, name: &str) -> Result<Farm, FarmError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(config.url.as_str());
        // `retry_on_initial_connect` would wait forever for a server that is not there.
        let client = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .map_err(|_| FarmError::Connect {
                url: config.url.clone(),
                why: "no answer in 10 s".into(),
            })?
            .map_err(|e| FarmError::Connect {
                url: config.url.clone(),
                why: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        let jobs = js
            .get_or_create_stream(stream::Config {
                name: names::JOBS_STREAM.into(),
                subjects: vec![format!("{}.>", names::JOBS_SUBJECT)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: names::DEDUPE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(format!("stream {}: {e}", names::JOBS_STREAM)))?;
        js.get_or_create_stream(stream::Config {
            name: names::DEAD_STREAM.into(),
            subjects: vec![format!("{}.>", names::DEAD_SUBJECT)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        })
        .await
        .map_err(|e| js_err(format!("stream {}: {e}", names::DEAD_STREAM)))?;
        let records = kv_bucket(&js, names::RECORDS_BUCKET, Duration::ZERO).await?;
        let workers = kv_bucket(&js, names::WORKERS_BUCKET, names::HEARTBEAT_TTL).await?;
        let outputs = object_bucket(&js, names::OUTPUTS_BUCKET).await?;
        let inputs = object_bucket(&js, names::INPUTS_BUCKET).await?;
        Ok(Farm {
            client,
            js,
            jobs,
            records,
            workers,
            outputs,
            inputs,
            config,
        })
    }
}

async fn kv_bucket(
    js: &jetstream::Context,
    name: &str,
    ttl: Duration,
) -> Result<kv::Store, FarmError> {
    // The bucket's stream is made here rather than with `create_key_value`, which first asks
    // for account details in a shape the server 2.9 (Debian bookworm's) does not answer in.
    let mut config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    if !ttl.is_zero() {
        config.duplicate_window = ttl.min(Duration::from_secs(120));
    }
    js.get_or_create_stream(config)
        .await
        .map_err(|e| js_err(format!("bucket {name}: {e}")))?;
    js.get_key_value(name)
        .await
        .map_err(|e| js_err(format!("bucket {name}: {e}")))
}

async fn object_bucket(
    js: &jetstream::Context,
    name: &str,
) -> Result<object_store::ObjectStore, FarmError> {
    if let Ok(b) = js.get_object_store(name).await {
        return Ok(b);
    }
    let created = js
        .create_object_store(object_store::Config {
            bucket: name.into(),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await;
    match created {
        Ok(b) => Ok(b),
        Err(e) => js
            .get_object_store(name)
            .await
            .map_err(|_| js_err(format!("bucket {name}: {e}"))),
    }
}

/// The plugins a plan's nodes come from (a farm routes the job to workers that have them).
pub fn plugins_needed(plan: &Plan) -> Vec<String> {
    let set: BTreeSet<String> = plan
        .nodes
        .iter()
        .map(|n| n.ty.plugin.name.clone())
        .collect();
    set.into_iter().collect()
}

/// What a machine offers: its plugins and versions, devices and threads.
pub fn capabilities(registry: &Registry, id: &str, pool: &str, threads: Option<usize>) -> Json {
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    json!({
        "id": id,
        "pool": pool,
        "host": hostname(),
        "pid": std::process::id(),
        "plugins": registry.versions(),
        "node_types": registry.type_ids().count(),
        "devices": [{"kind": "cpu", "threads": threads}],
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// This machine's name, for worker ids and heartbeats.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
