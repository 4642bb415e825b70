//! `latentflow serve --nats URL`: the server's job queue over the farm. Submissions are
//! published to the pool's subject (deduplicated by job id); queue and history come from a
//! live mirror of the records bucket; events and previews from the workers' subjects are fed
//! to the server's sockets; outputs are fetched from the object store on first request.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation};
use async_nats::jetstream::message::PublishMessage;
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;

use super::record::{self, Record};
use super::{names, Farm, FarmConfig, FarmError};
use crate::serve::events::{Hub, Note};
use crate::serve::queue::JobQueue;
use crate::serve::store::{Job, NewJob, State, StoreError};

/// The largest output fetched from the object store.
const MAX_OUTPUT: usize = 1 << 30;

/// The farm behind `serve --nats`.
pub struct Front {
    farm: Farm,
    rt: Handle,
    jobs: Mutex<BTreeMap<String, Job>>,
    beats: Mutex<BTreeMap<String, Json>>,
    hub: Hub,
    outputs: PathBuf,
    history_limit: usize,
}

fn farm_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Farm(e.to_string())
}

impl Front {
    /// Connects, mirrors the records and heartbeats, and relays the workers' events to `hub`.
    pub async fn connect(
        config: FarmConfig,
        hub: Hub,
        outputs: PathBuf,
        history_limit: usize,
    ) -> Result<Arc<Front>, FarmError> {
        let farm = Farm::connect(config, "latentflow serve").await?;
        let front = Arc::new(Front {
            farm: farm.clone(),
            rt: Handle::current(),
            jobs: Mutex::default(),
            beats: Mutex::default(),
            hub,
            outputs,
            history_limit,
        });
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(front.clone().mirror_records(loaded_tx));
        tokio::spawn(front.clone().mirror_heartbeats());
        tokio::spawn(front.clone().relay(format!("{}.*", names::EVENTS), false));
        tokio::spawn(front.clone().relay(format!("{}.*", names::PREVIEWS), true));
        tokio::spawn(super::worker::dead_letters(farm));
        // The first request sees the history.
        let _ = tokio::time::timeout(Duration::from_secs(10), loaded_rx).await;
        Ok(front)
    }

    fn lock_jobs(&self) -> MutexGuard<'_, BTreeMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_beats(&self) -> MutexGuard<'_, BTreeMap<String, Json>> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` to completion from synchronous code (handlers, blocking tasks).
    fn block<F: Future>(&self, f: F) -> F::Output {
        tokio::task::block_in_place(|| self.rt.block_on(f))
    }

    fn status_changed(&self) {
        let remaining = self
            .lock_jobs()
            .values()
            .filter(|j| !j.state.is_final())
            .count();
        let _ = self.hub.send(Note::Comfy {
            client: None,
            message: json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}),
        });
    }

    async fn mirror_records(self: Arc<Self>, loaded: tokio::sync::oneshot::Sender<()>) {
        let mut loaded = Some(loaded);
        let empty = self
            .farm
            .records
            .status()
            .await
            .map(|s| s.values() == 0)
            .unwrap_or(true);
        if empty {
            loaded.take().map(|l| l.send(()));
        }
        loop {
            let mut watch = match self.farm.records.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!("watching job records: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { break };
                {
                    let mut jobs = self.lock_jobs();
                    match entry.operation {
                        Operation::Put => {
                            if let Some(r) = Record::parse(&entry.value) {
                                jobs.insert(entry.key.clone(), r.into_job());
                            }
                        }
                        Operation::Delete | Operation::Purge => {
                            jobs.remove(&entry.key);
                        }
                    }
                }
                if entry.seen_current {
                    loaded.take().map(|l| l.send(()));
                }
                self.status_changed();
                self.prune().await;
            }
        }
    }

    /// Keeps history to its limit (oldest finished records go).
    async fn prune(&self) {
        let extra: Vec<String> = {
            let jobs = self.lock_jobs();
            let mut done: Vec<&Job> = jobs.values().filter(|j| j.state.is_final()).collect();
            if done.len() <= self.history_limit {
                return;
            }
            done.sort_by(|a, b| {
                b.finished
                    .partial_cmp(&a.finished)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            done[self.history_limit..]
                .iter()
                .map(|j| j.id.clone())
                .collect()
        };
        for id in extra {
            let _ = self.farm.records.delete(&id).await;
        }
    }

    async fn mirror_heartbeats(self: Arc<Self>) {
        loop {
            let mut watch = match self.farm.workers.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!("watching worker heartbeats: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(Ok(entry)) = watch.next().await {
                let mut beats = self.lock_beats();
                match entry.operation {
                    Operation::Put => {
                        if let Ok(j) = serde_json::from_slice::<Json>(&entry.value) {
                            beats.insert(entry.key.clone(), j);
                        }
                    }
                    _ => {
                        beats.remove(&entry.key);
                    }
                }
            }
        }
    }

    async fn relay(self: Arc<Self>, subject: String, previews: bool) {
        let mut sub = match self.farm.client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("subscribing to {subject}: {e}");
                return;
            }
        };
        while let Some(m) = sub.next().await {
            let job = m.subject.rsplit('.').next().unwrap_or_default();
            let note = if previews {
                record::decode_preview(job, m.headers.as_ref(), &m.payload)
            } else {
                record::decode_event(&m.payload)
            };
            if let Some(n) = note {
                let _ = self.hub.send(n);
            }
        }
    }

    fn live(&self) -> Vec<Json> {
        super::worker::live(&self.lock_beats())
    }

    /// The pool for a job: the one asked for, else `default` or another pool with a live
    /// worker that has every plugin it needs.
    fn route(&self, asked: Option<String>, needs: &[String]) -> Result<String, StoreError> {
        let live = self.live();
        let has = |w: &Json| {
            needs
                .iter()
                .all(|p| w.get("plugins").and_then(|ps| ps.get(p)).is_some())
        };
        let pool_of = |w: &Json| w.get("pool").and_then(Json::as_str).map(str::to_string);
        if let Some(p) = asked {
            if !names::is_token(&p) {
                return Err(StoreError::NoWorker(format!(
                    "pool `{p}`: use 1 to 64 letters, digits, `-` or `_`"
                )));
            }
            let in_pool: Vec<&Json> = live
                .iter()
                .filter(|w| pool_of(w).as_deref() == Some(&p))
                .collect();
            if !in_pool.is_empty() && !in_pool.iter().any(|w| has(w)) {
                return Err(StoreError::NoWorker(format!(
                    "no worker in pool `{p}` has the plugins this graph needs ({})",
                    needs.join(", ")
                )));
            }
            return Ok(p);
        }
        if live.is_empty() {
            return Ok(names::DEFAULT_POOL.into());
        }
        let mut pools: Vec<String> = live.iter().filter(|w| has(w)).filter_map(pool_of).collect();
        pools.sort();
        pools.dedup();
        if pools.iter().any(|p| p == names::DEFAULT_POOL) {
            return Ok(names::DEFAULT_POOL.into());
        }
        pools.into_iter().next().ok_or_else(|| {
            StoreError::NoWorker(format!(
                "no live worker has the plugins this graph needs ({}); see GET /api/v1/workers",
                needs.join(", ")
            ))
        })
    }

    async fn record(&self, id: &str) -> Result<Option<(Record, u64)>, StoreError> {
        let e = self.farm.records.entry(id).await.map_err(farm_err)?;
        Ok(e.and_then(|e| Record::parse(&e.value).map(|r| (r, e.revision))))
    }

    /// Cancels `id` if pending (compare-and-set, so a worker's claim and a cancel never both
    /// win); asks its worker if running.
    async fn cancel_async(&self, id: &str, why: &str) -> bool {
        for _ in 0..16 {
            let Ok(Some((mut rec, rev))) = self.record(id).await else {
                return false;
            };
            match rec.job.state {
                State::Pending => {
                    rec.finish(State::Cancelled, Some(why.to_string()));
                    if self.farm.records.update(id, rec.bytes(), rev).await.is_ok() {
                        return true;
                    }
                }
                State::Running => {
                    let subject = format!("{}.{id}", names::CANCEL);
                    let sent = self.farm.client.publish(subject, "cancel".into()).await;
                    let _ = self.farm.client.flush().await;
                    return sent.is_ok();
                }
                _ => return false,
            }
        }
        false
    }
}

impl JobQueue for Front {
    fn enqueue(&self, job: NewJob) -> Result<Job, StoreError> {
        let id = job.id.clone();
        if self.lock_jobs().contains_key(&id) {
            return Err(StoreError::Duplicate(id));
        }
        let pool = self.route(job.pool.clone(), &job.needs)?;
        self.block(async {
            if self.record(&id).await?.is_some() {
                return Err(StoreError::Duplicate(id.clone()));
            }
            let mut rec = Record::pending(job, pool.clone(), 0);
            let ack = self
                .farm
                .js
                .send_publish(
                    names::jobs_subject(&pool),
                    PublishMessage::build().payload(rec.bytes()).message_id(&id),
                )
                .await
                .map_err(farm_err)?
                .await
                .map_err(farm_err)?;
            if ack.duplicate {
                return Err(StoreError::Duplicate(id.clone()));
            }
            rec.job.number = ack.sequence as i64;
            match self.farm.records.create(&id, rec.bytes()).await {
                Ok(_) => {}
                // A worker took it already and made the record.
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(farm_err(e)),
            }
            let job = rec.into_job();
            self.lock_jobs()
                .entry(id.clone())
                .or_insert_with(|| job.clone());
            Ok(job)
        })
    }

    fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        if let Some(j) = self.lock_jobs().get(id) {
            return Ok(Some(j.clone()));
        }
        // Submitted through another front end a moment ago.
        Ok(self.block(self.record(id))?.map(|(r, _)| r.into_job()))
    }

    fn queue(&self) -> Result<Vec<Job>, StoreError> {
        let mut q: Vec<Job> = self
            .lock_jobs()
            .values()
            .filter(|j| !j.state.is_final())
            .cloned()
            .collect();
        q.sort_by_key(|j| j.number);
        Ok(q)
    }

    fn history(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut h: Vec<Job> = self
            .lock_jobs()
            .values()
            .filter(|j| j.state.is_final())
            .cloned()
            .collect();
        h.sort_by(|a, b| {
            b.finished
                .partial_cmp(&a.finished)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        h.truncate(limit);
        Ok(h)
    }

    fn pending_count(&self) -> Result<usize, StoreError> {
        Ok(self.queue()?.len())
    }

    fn cancel(&self, id: &str) -> bool {
        self.block(self.cancel_async(id, "cancelled before it ran"))
    }

    fn interrupt(&self) -> Vec<String> {
        let running: Vec<String> = self
            .lock_jobs()
            .values()
            .filter(|j| j.state == State::Running)
            .map(|j| j.id.clone())
            .collect();
        running.into_iter().filter(|id| self.cancel(id)).collect()
    }

    fn clear_pending(&self) -> Result<usize, StoreError> {
        let pending: Vec<String> = self
            .lock_jobs()
            .values()
            .filter(|j| j.state == State::Pending)
            .map(|j| j.id.clone())
            .collect();
        let n = self.block(async {
            let mut n = 0;
            for id in &pending {
                if self.cancel_async(id, "the queue was cleared").await {
                    n += 1;
                }
            }
            n
        });
        Ok(n)
    }

    fn delete_history(&self, ids: Option<&[String]>) -> Result<(), StoreError> {
        let gone: Vec<String> = {
            let jobs = self.lock_jobs();
            jobs.values()
                .filter(|j| j.state.is_final())
                .filter(|j| ids.is_none_or(|ids| ids.contains(&j.id)))
                .map(|j| j.id.clone())
                .collect()
        };
        self.block(async {
            for id in &gone {
                self.farm.records.delete(id).await.map_err(farm_err)?;
            }
            Ok::<_, StoreError>(())
        })?;
        let mut jobs = self.lock_jobs();
        for id in &gone {
            jobs.remove(id);
        }
        Ok(())
    }

    fn fetch_output(&self, rel: &str) {
        let Some(path) = crate::serve::contained(&self.outputs, rel) else {
            return;
        };
        if path.exists() {
            return;
        }
        let name = rel.trim_start_matches('/').to_string();
        let got = self.block(async {
            let info = self.farm.outputs.info(&name).await.ok()?;
            if info.size > MAX_OUTPUT {
                tracing::warn!("output {name} is {} bytes: not fetched", info.size);
                return None;
            }
            let mut obj = self.farm.outputs.get(&name).await.ok()?;
            let mut bytes = Vec::with_capacity(info.size);
            obj.read_to_end(&mut bytes).await.ok()?;
            Some(bytes)
        });
        if let Some(bytes) = got {
            if let Err(e) = super::worker::write_atomic(&path, &bytes) {
                tracing::warn!("caching output {rel}: {e}");
            }
        }
    }

    fn uploaded(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.block(async {
            let mut reader = bytes;
            self.farm
                .inputs
                .put(name, &mut reader)
                .await
                .map(|_| ())
                .map_err(farm_err)
        })
    }

    fn workers(&self) -> Json {
        Json::Array(self.live())
    }
}
