//! The job queue and history, in SQLite: pending jobs survive a restart (or a `kill -9`), jobs
//! that were running when the server stopped are marked failed, and history is pruned to a
//! limit.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting.
    Pending,
    /// Running now.
    Running,
    /// Finished without errors.
    Succeeded,
    /// A node failed, or the server stopped during the run.
    Failed,
    /// Cancelled before or during its run.
    Cancelled,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "pending" => State::Pending,
            "running" => State::Running,
            "succeeded" => State::Succeeded,
            "cancelled" => State::Cancelled,
            _ => State::Failed,
        }
    }

    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

/// A job: a graph with its `--set` inputs, and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Its id (a client may choose it).
    pub id: String,
    /// Its place in submission order.
    pub number: i64,
    /// Where it is.
    pub state: State,
    /// The graph text (YAML or JSON).
    #[serde(skip)]
    pub graph: String,
    /// `--set` inputs.
    pub set: Vec<(String, Json)>,
    /// The ComfyUI client that submitted it, if any.
    pub client: Option<String>,
    /// The ComfyUI prompt it came from, if any.
    #[serde(skip)]
    pub comfy: Option<Json>,
    /// Our node id → ComfyUI node id, for ComfyUI prompts.
    #[serde(skip)]
    pub origin: Json,
    /// Unix seconds.
    pub created: f64,
    /// Unix seconds, once started.
    pub started: Option<f64>,
    /// Unix seconds, once over.
    pub finished: Option<f64>,
    /// Files written, by node: `{node: [relative paths]}`.
    pub outputs: Json,
    /// Why it failed.
    pub error: Option<String>,
    /// Each node's outcome once the job is over: `{node: "ran" | "cached" | "failed" | …}`.
    pub nodes: Json,
    /// The farm worker that ran it (`latentflow serve --nats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// How many times a worker started it (more than one after a worker died).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("job store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A job with this id exists.
    #[error("a job with id `{0}` exists")]
    Duplicate(String),
    /// No worker can run the job (a farm).
    #[error("{0}")]
    NoWorker(String),
    /// The NATS server failed.
    #[error("job queue on NATS: {0}")]
    Farm(String),
}

/// The job table.
pub struct Store {
    db: Connection,
    history_limit: usize,
}

const COLUMNS: &str =
    "id, seq, state, graph, sets, client, comfy, origin, created, started, finished, outputs, error, nodes";

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let json = |i: usize| -> rusqlite::Result<Json> {
        let s: Option<String> = r.get(i)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Json::Null))
    };
    let sets = match json(4)? {
        Json::Array(a) => a
            .into_iter()
            .filter_map(|p| match p {
                Json::Array(mut kv) if kv.len() == 2 => {
                    let v = kv.pop()?;
                    let k = kv.pop()?.as_str()?.to_string();
                    Some((k, v))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let state: String = r.get(2)?;
    Ok(Job {
        id: r.get(0)?,
        number: r.get(1)?,
        state: State::parse(&state),
        graph: r.get(3)?,
        set: sets,
        client: r.get(5)?,
        comfy: Some(json(6)?).filter(|j| !j.is_null()),
        origin: json(7)?,
        created: r.get(8)?,
        started: r.get(9)?,
        finished: r.get(10)?,
        outputs: match json(11)? {
            Json::Null => Json::Object(Default::default()),
            j => j,
        },
        error: r.get(12)?,
        nodes: match json(13)? {
            Json::Null => Json::Object(Default::default()),
            j => j,
        },
        worker: None,
        attempts: 0,
    })
}

/// What a new job carries.
pub struct NewJob {
    /// Its id.
    pub id: String,
    /// Graph text.
    pub graph: String,
    /// `--set` inputs.
    pub set: Vec<(String, Json)>,
    /// ComfyUI client id.
    pub client: Option<String>,
    /// The ComfyUI prompt.
    pub comfy: Option<Json>,
    /// Our node id → ComfyUI node id.
    pub origin: Json,
    /// The worker pool it asks for (a farm's).
    pub pool: Option<String>,
    /// The plugins it needs (a farm routes it to a pool whose workers have them).
    pub needs: Vec<String>,
}

impl Store {
    /// Opens (or creates) the store at `path`; jobs left running by a previous server are
    /// marked failed.
    pub fn open(path: &Path, history_limit: usize) -> Result<Self, StoreError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT UNIQUE NOT NULL,
                state TEXT NOT NULL,
                graph TEXT NOT NULL,
                sets TEXT NOT NULL,
                client TEXT,
                comfy TEXT,
                origin TEXT,
                created REAL NOT NULL,
                started REAL,
                finished REAL,
                outputs TEXT,
                error TEXT,
                nodes TEXT
            );
            CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);",
        )?;
        db.execute(
            "UPDATE jobs SET state = 'failed', finished = ?1,
                error = 'the server stopped while this job was running'
             WHERE state = 'running'",
            params![now()],
        )?;
        Ok(Store { db, history_limit })
    }

    /// Queues a job.
    pub fn enqueue(&mut self, job: NewJob) -> Result<Job, StoreError> {
        let sets = Json::Array(
            job.set
                .iter()
                .map(|(k, v)| Json::Array(vec![Json::from(k.clone()), v.clone()]))
                .collect(),
        );
        let inserted = self.db.execute(
            "INSERT OR IGNORE INTO jobs (id, state, graph, sets, client, comfy, origin, created)
             VALUES (?1, 'pending', ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job.id,
                job.graph,
                sets.to_string(),
                job.client,
                job.comfy.as_ref().map(Json::to_string),
                job.origin.to_string(),
                now()
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::Duplicate(job.id));
        }
        self.get(&job.id)?
            .ok_or_else(|| StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The job `id`.
    pub fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        Ok(self
            .db
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                row_to_job,
            )
            .optional()?)
    }

    fn list(&self, filter: &str, order: &str, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut st = self.db.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE {filter} ORDER BY seq {order} LIMIT ?1"
        ))?;
        let rows = st.query_map(params![limit as i64], row_to_job)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Pending and running jobs, oldest first.
    pub fn queue(&self) -> Result<Vec<Job>, StoreError> {
        self.list("state IN ('pending', 'running')", "ASC", 100_000)
    }

    /// Finished jobs, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.list(
            "state IN ('succeeded', 'failed', 'cancelled')",
            "DESC",
            limit,
        )
    }

    /// Takes the oldest pending job and marks it running.
    pub fn start_next(&mut self) -> Result<Option<Job>, StoreError> {
        let tx = self.db.transaction()?;
        let id: Option<String> = tx
            .query_row(
                "SELECT id FROM jobs WHERE state = 'pending' ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE jobs SET state = 'running', started = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        tx.commit()?;
        self.get(&id)
    }

    /// Records how a job ended, then prunes history.
    pub fn finish(
        &mut self,
        id: &str,
        state: State,
        outputs: &Json,
        error: Option<&str>,
        nodes: &Json,
    ) -> Result<(), StoreError> {
        self.db.execute(
            "UPDATE jobs SET state = ?2, finished = ?3, outputs = ?4, error = ?5, nodes = ?6 WHERE id = ?1",
            params![id, state.as_str(), now(), outputs.to_string(), error, nodes.to_string()],
        )?;
        self.db.execute(
            "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND seq NOT IN
               (SELECT seq FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')
                ORDER BY seq DESC LIMIT ?1)",
            params![self.history_limit as i64],
        )?;
        Ok(())
    }

    /// Cancels a pending job; returns whether it was pending.
    pub fn cancel_pending(&mut self, id: &str) -> Result<bool, StoreError> {
        let n = self.db.execute(
            "UPDATE jobs SET state = 'cancelled', finished = ?2, error = 'cancelled before it ran'
             WHERE id = ?1 AND state = 'pending'",
            params![id, now()],
        )?;
        Ok(n > 0)
    }

    /// Cancels every pending job; returns how many.
    pub fn clear_pending(&mut self) -> Result<usize, StoreError> {
        Ok(self.db.execute(
            "UPDATE jobs SET state = 'cancelled', finished = ?1, error = 'the queue was cleared'
             WHERE state = 'pending'",
            params![now()],
        )?)
    }

    /// Deletes finished jobs (all, or these ids).
    pub fn delete_history(&mut self, ids: Option<&[String]>) -> Result<(), StoreError> {
        match ids {
            None => {
                self.db.execute(
                    "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')",
                    [],
                )?;
            }
            Some(ids) => {
                for id in ids {
                    self.db.execute(
                        "DELETE FROM jobs WHERE id = ?1 AND state IN ('succeeded', 'failed', 'cancelled')",
                        params![id],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Pending jobs.
    pub fn pending_count(&self) -> Result<usize, StoreError> {
        let n: i64 = self.db.query_row(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')",
            [],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> NewJob {
        NewJob {
            id: id.into(),
            graph: "nodes: {}".into(),
            set: vec![("steps".into(), Json::from(2))],
            client: None,
            comfy: None,
            origin: Json::Null,
            pool: None,
            needs: Vec::new(),
        }
    }

    #[test]
    fn pending_jobs_survive_reopening_and_running_ones_are_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        {
            let mut s = Store::open(&path, 10).unwrap();
            s.enqueue(job("a")).unwrap();
            s.enqueue(job("b")).unwrap();
            assert!(matches!(s.enqueue(job("a")), Err(StoreError::Duplicate(_))));
            let a = s.start_next().unwrap().unwrap();
            assert_eq!((a.id.as_str(), a.state), ("a", State::Running));
            // Dropped without finishing: the process died.
        }
        let mut s = Store::open(&path, 10).unwrap();
        let a = s.get("a").unwrap().unwrap();
        assert_eq!(a.state, State::Failed);
        assert!(a.error.unwrap().contains("stopped"));
        let b = s.start_next().unwrap().unwrap();
        assert_eq!(b.id, "b");
        assert_eq!(b.set, vec![("steps".to_string(), Json::from(2))]);
        s.finish(
            "b",
            State::Succeeded,
            &serde_json::json!({"save": ["x.png"]}),
            None,
            &serde_json::json!({"save": "ran"}),
        )
        .unwrap();
        assert_eq!(s.history(10).unwrap().len(), 2);
        assert!(s.start_next().unwrap().is_none());
    }

    #[test]
    fn history_is_pruned_to_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("j.sqlite"), 3).unwrap();
        for i in 0..6 {
            s.enqueue(job(&format!("j{i}"))).unwrap();
            s.start_next().unwrap();
            s.finish(
                &format!("j{i}"),
                State::Succeeded,
                &Json::Null,
                None,
                &Json::Null,
            )
            .unwrap();
        }
        let h: Vec<String> = s.history(10).unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(h, vec!["j5", "j4", "j3"]);
    }
}
