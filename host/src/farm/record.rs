//! A job record (the value under the job's id in the records bucket, and the body of its
//! message on the stream) and the events on the wire.

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::serve::events::Note;
use crate::serve::store::{Job, NewJob, State};

/// A job as the farm keeps it: what the APIs show plus what a worker needs to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The job.
    #[serde(flatten)]
    pub job: Job,
    /// Graph text.
    pub graph: String,
    /// The ComfyUI prompt, if any.
    #[serde(default)]
    pub comfy: Option<Json>,
    /// Our node id → ComfyUI node id.
    #[serde(default)]
    pub origin: Json,
    /// The pool it runs in.
    pub pool: String,
    /// The plugins it needs.
    #[serde(default)]
    pub needs: Vec<String>,
}

/// Unix seconds now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Record {
    /// A pending record for a new job.
    pub fn pending(job: NewJob, pool: String, number: i64) -> Record {
        Record {
            job: Job {
                id: job.id,
                number,
                state: State::Pending,
                graph: String::new(),
                set: job.set,
                client: job.client,
                comfy: None,
                origin: Json::Null,
                created: now(),
                started: None,
                finished: None,
                outputs: Json::Object(Default::default()),
                error: None,
                nodes: Json::Object(Default::default()),
                worker: None,
                attempts: 0,
            },
            graph: job.graph,
            comfy: job.comfy,
            origin: job.origin,
            pool,
            needs: job.needs,
        }
    }

    /// Parses a record.
    pub fn parse(bytes: &[u8]) -> Option<Record> {
        serde_json::from_slice(bytes).ok()
    }

    /// The record's bytes.
    pub fn bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// The job with everything filled in.
    pub fn into_job(self) -> Job {
        let mut job = self.job;
        job.graph = self.graph;
        job.comfy = self.comfy;
        job.origin = self.origin;
        job
    }

    /// Marks it over.
    pub fn finish(&mut self, state: State, error: Option<String>) {
        self.job.state = state;
        self.job.error = error;
        self.job.finished = Some(now());
    }
}

const NODE: &str = "Lf-Node";
const COMFY_NODE: &str = "Lf-Comfy-Node";
const CLIENT: &str = "Lf-Client";

/// A note as published: subject suffix (events or previews), headers, body.
pub fn encode(note: &Note) -> (bool, HeaderMap, bytes::Bytes) {
    match note {
        Note::Native(j) => (
            false,
            HeaderMap::new(),
            json!({"native": j}).to_string().into(),
        ),
        Note::Comfy { client, message } => (
            false,
            HeaderMap::new(),
            json!({"comfy": message, "client": client})
                .to_string()
                .into(),
        ),
        Note::Preview {
            client, node, png, ..
        } => {
            let mut h = HeaderMap::new();
            h.insert(NODE, node.0.as_str());
            h.insert(COMFY_NODE, node.1.as_str());
            if let Some(c) = client {
                h.insert(CLIENT, c.as_str());
            }
            (true, h, png.clone().into())
        }
    }
}

/// A note from an event message of job `job`.
pub fn decode_event(payload: &[u8]) -> Option<Note> {
    let j: Json = serde_json::from_slice(payload).ok()?;
    if let Some(native) = j.get("native") {
        return Some(Note::Native(native.clone()));
    }
    let message = j.get("comfy")?.clone();
    let client = j.get("client").and_then(Json::as_str).map(str::to_string);
    Some(Note::Comfy { client, message })
}

/// A note from a preview message of job `job`.
pub fn decode_preview(job: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Option<Note> {
    let h = headers?;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
    Some(Note::Preview {
        job: job.to_string(),
        client: get(CLIENT),
        node: (get(NODE)?, get(COMFY_NODE)?),
        png: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_the_fields_the_api_hides() {
        let new = NewJob {
            id: "j1".into(),
            graph: "nodes: {}".into(),
            set: vec![("steps".into(), Json::from(3))],
            client: Some("c".into()),
            comfy: Some(json!({"1": {}})),
            origin: json!({"a": "1"}),
            pool: None,
            needs: vec!["core".into()],
        };
        let r = Record::pending(new, "default".into(), 7);
        let back = Record::parse(&r.bytes()).unwrap();
        assert_eq!(back.graph, "nodes: {}");
        assert_eq!(back.needs, vec!["core"]);
        let job = back.into_job();
        assert_eq!(
            (job.id.as_str(), job.number, job.state),
            ("j1", 7, State::Pending)
        );
        assert_eq!(job.origin, json!({"a": "1"}));
        assert_eq!(job.set, vec![("steps".to_string(), Json::from(3))]);
    }

    #[test]
    fn notes_round_trip() {
        let n = Note::Comfy {
            client: Some("c".into()),
            message: json!({"type": "progress"}),
        };
        let (preview, _, body) = encode(&n);
        assert!(!preview);
        match decode_event(&body) {
            Some(Note::Comfy { client, message }) => {
                assert_eq!(client.as_deref(), Some("c"));
                assert_eq!(message["type"], "progress");
            }
            other => panic!("{other:?}"),
        }
        let p = Note::Preview {
            job: "j".into(),
            client: None,
            node: ("save".into(), "9".into()),
            png: vec![1, 2, 3],
        };
        let (preview, h, body) = encode(&p);
        assert!(preview);
        match decode_preview("j", Some(&h), &body) {
            Some(Note::Preview { node, png, .. }) => {
                assert_eq!(node, ("save".to_string(), "9".to_string()));
                assert_eq!(png, vec![1, 2, 3]);
            }
            other => panic!("{other:?}"),
        }
    }
}
