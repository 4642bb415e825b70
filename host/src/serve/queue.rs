//! Where jobs wait and how they end: a [`JobQueue`]. On one machine it is the SQLite
//! [`Store`] drained by the runner thread ([`LocalQueue`]); with `--nats` it is a JetStream
//! stream drained by workers (`crate::farm::Front`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde_json::Value as Json;

use super::store::{Job, NewJob, Store, StoreError};

/// The jobs behind the HTTP APIs.
pub trait JobQueue: Send + Sync {
    /// Queues a job; [`StoreError::Duplicate`] when its id exists.
    fn enqueue(&self, job: NewJob) -> Result<Job, StoreError>;
    /// The job `id`.
    fn get(&self, id: &str) -> Result<Option<Job>, StoreError>;
    /// Pending and running jobs, oldest first.
    fn queue(&self) -> Result<Vec<Job>, StoreError>;
    /// Finished jobs, newest first.
    fn history(&self, limit: usize) -> Result<Vec<Job>, StoreError>;
    /// Pending and running jobs.
    fn pending_count(&self) -> Result<usize, StoreError>;
    /// Cancels a pending or running job; returns whether there was one.
    fn cancel(&self, id: &str) -> bool;
    /// Cancels the running jobs; returns their ids.
    fn interrupt(&self) -> Vec<String>;
    /// Cancels every pending job; returns how many.
    fn clear_pending(&self) -> Result<usize, StoreError>;
    /// Deletes finished jobs (all, or these ids).
    fn delete_history(&self, ids: Option<&[String]>) -> Result<(), StoreError>;
    /// Makes the output `rel` (`JOB/FILE`) present under the outputs folder if it exists
    /// anywhere (a farm's workers keep outputs in an object store).
    fn fetch_output(&self, _rel: &str) {}
    /// A file was uploaded to the inputs folder as `name`: workers elsewhere need it too.
    fn uploaded(&self, _name: &str, _bytes: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    /// The machines that run jobs, as JSON (`[{id, pool, plugins, devices, …}]`).
    fn workers(&self) -> Json;
}

/// The single-machine queue: a SQLite store and one runner thread.
pub struct LocalQueue {
    store: Mutex<Store>,
    /// Signalled when a job is queued.
    pub wake: Condvar,
    /// The job running now and its cancel flag.
    pub running: Mutex<Option<(String, Arc<AtomicBool>)>>,
    /// What this machine offers, for [`JobQueue::workers`].
    pub capabilities: Json,
}

impl LocalQueue {
    /// A queue over `store`.
    pub fn new(store: Store, capabilities: Json) -> Self {
        LocalQueue {
            store: Mutex::new(store),
            wake: Condvar::new(),
            running: Mutex::new(None),
            capabilities,
        }
    }

    /// The store, locked.
    pub fn lock_store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> MutexGuard<'_, Option<(String, Arc<AtomicBool>)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the job running now (`None` once it is over).
    pub fn set_running(&self, job: Option<(String, Arc<AtomicBool>)>) {
        *self.running() = job;
    }
}

impl JobQueue for LocalQueue {
    fn enqueue(&self, job: NewJob) -> Result<Job, StoreError> {
        let job = self.lock_store().enqueue(job)?;
        self.wake.notify_all();
        Ok(job)
    }

    fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.lock_store().get(id)
    }

    fn queue(&self) -> Result<Vec<Job>, StoreError> {
        self.lock_store().queue()
    }

    fn history(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.lock_store().history(limit)
    }

    fn pending_count(&self) -> Result<usize, StoreError> {
        self.lock_store().pending_count()
    }

    fn cancel(&self, id: &str) -> bool {
        if let Some((running, flag)) = &*self.running() {
            if running == id {
                flag.store(true, Ordering::Relaxed);
                return true;
            }
        }
        self.lock_store().cancel_pending(id).unwrap_or(false)
    }

    fn interrupt(&self) -> Vec<String> {
        self.running()
            .as_ref()
            .map(|(id, flag)| {
                flag.store(true, Ordering::Relaxed);
                id.clone()
            })
            .into_iter()
            .collect()
    }

    fn clear_pending(&self) -> Result<usize, StoreError> {
        self.lock_store().clear_pending()
    }

    fn delete_history(&self, ids: Option<&[String]>) -> Result<(), StoreError> {
        self.lock_store().delete_history(ids)
    }

    fn workers(&self) -> Json {
        let mut me = self.capabilities.clone();
        if let Some(o) = me.as_object_mut() {
            let running = self.running().as_ref().map(|(id, _)| id.clone());
            o.insert("running".into(), Json::from(running));
        }
        Json::Array(vec![me])
    }
}
