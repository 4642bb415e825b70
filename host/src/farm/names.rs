//! The names a farm shares: stream, consumers, buckets, subjects, headers.
//!
//! | what | name |
//! |---|---|
//! | jobs (work queue, deduplicated by `Nats-Msg-Id` = job id) | stream `LF_JOBS`, subjects `lf.jobs.<pool>` |
//! | a pool's workers | durable pull consumer `lf-<pool>` |
//! | jobs no worker finished in `max_deliver` tries | stream `LF_DEAD`, subjects `lf.dead.<pool>` |
//! | job records | KV `lf_jobs`, key = job id |
//! | heartbeats (expire) | KV `lf_workers`, key = worker id |
//! | outputs / uploads | object stores `lf_outputs` (`JOB/FILE`) / `lf_inputs` |
//! | a job's events / previews / cancel | `lf.ev.<id>` / `lf.pv.<id>` / `lf.cancel.<id>` |

use std::time::Duration;

use super::FarmError;

/// The job stream.
pub const JOBS_STREAM: &str = "LF_JOBS";
/// Job subjects: `lf.jobs.<pool>`.
pub const JOBS_SUBJECT: &str = "lf.jobs";
/// The dead-letter stream.
pub const DEAD_STREAM: &str = "LF_DEAD";
/// Dead-letter subjects: `lf.dead.<pool>`.
pub const DEAD_SUBJECT: &str = "lf.dead";
/// Job records.
pub const RECORDS_BUCKET: &str = "lf_jobs";
/// Worker heartbeats.
pub const WORKERS_BUCKET: &str = "lf_workers";
/// Outputs.
pub const OUTPUTS_BUCKET: &str = "lf_outputs";
/// Uploads.
pub const INPUTS_BUCKET: &str = "lf_inputs";
/// Events: `lf.ev.<id>`.
pub const EVENTS: &str = "lf.ev";
/// Previews: `lf.pv.<id>`.
pub const PREVIEWS: &str = "lf.pv";
/// Cancel requests: `lf.cancel.<id>`.
pub const CANCEL: &str = "lf.cancel";
/// How long a resubmission with the same id is recognised by the stream itself (the job
/// records catch later ones).
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(600);
/// How often a worker says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// When a worker that stopped saying so is forgotten.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// The queue group that handles max-deliveries advisories (one handler per advisory).
pub const DEAD_LETTER_GROUP: &str = "lf-dead-letter";
/// The pool jobs go to unless they ask for one or need plugins only another pool has.
pub const DEFAULT_POOL: &str = "default";

/// A pool's job subject.
pub fn jobs_subject(pool: &str) -> String {
    format!("{JOBS_SUBJECT}.{pool}")
}

/// A pool's consumer.
pub fn consumer(pool: &str) -> String {
    format!("lf-{pool}")
}

/// The max-deliveries advisories of the job stream.
pub fn max_deliveries_advisory() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.*")
}

/// Whether `s` can be one subject token, KV key and consumer name: 1 to 64 ASCII letters,
/// digits, `-` or `_` (job ids are already restricted to this).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks a pool or worker name.
pub fn check(what: &str, s: &str) -> Result<(), FarmError> {
    if is_token(s) {
        Ok(())
    } else {
        Err(FarmError::Name(format!(
            "{what} `{s}`: use 1 to 64 letters, digits, `-` or `_`"
        )))
    }
}
