//! Run events, fanned out to sockets: the native stream (the `--events json` objects with the
//! job id) and ComfyUI's messages (`executing`, `progress`, …, with ComfyUI's node ids), which
//! go only to the client that submitted the job.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};
use tokio::sync::broadcast;

use crate::exec::{Event, EventSink};

/// One message for the sockets.
#[derive(Debug, Clone)]
pub enum Note {
    /// A native event (JSON object with `job`).
    Native(Json),
    /// A ComfyUI message for `client` (`None`: every client, as `status` is).
    Comfy {
        /// The client id, or every client.
        client: Option<String>,
        /// `{type, data}`.
        message: Json,
    },
    /// A preview image (PNG bytes) of a job.
    Preview {
        /// The job.
        job: String,
        /// The ComfyUI client, if any.
        client: Option<String>,
        /// Our node id and ComfyUI's.
        node: (String, String),
        /// PNG bytes.
        png: Vec<u8>,
    },
}

/// Our node id → ComfyUI node id, from a job's stored `origin` object.
pub fn origin_map(origin: &Json) -> BTreeMap<String, String> {
    origin
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Where events go.
pub type Hub = broadcast::Sender<Note>;

/// Where one job's events go: the hub here, or a worker's NATS subjects.
pub type Notify = Arc<dyn Fn(Note) + Send + Sync>;

/// A [`Notify`] that sends to `hub`.
pub fn to_hub(hub: &Hub) -> Notify {
    let hub = hub.clone();
    Arc::new(move |note| {
        let _ = hub.send(note);
    })
}

/// An event sink for one job.
pub struct JobSink {
    /// Where its events go.
    pub notify: Notify,
    /// The job id.
    pub job: String,
    /// The ComfyUI client, if the job came from one.
    pub client: Option<String>,
    /// Our node id → ComfyUI node id.
    pub origin: BTreeMap<String, String>,
    /// Nodes cached so far (ComfyUI announces them in one message).
    pub cached: Mutex<Vec<String>>,
}

impl JobSink {
    /// The ComfyUI id of our node `node`.
    pub fn comfy_id(&self, node: &str) -> String {
        self.origin
            .get(node)
            .cloned()
            .unwrap_or_else(|| node.to_string())
    }

    /// Sends a ComfyUI message to the job's client.
    pub fn comfy(&self, kind: &str, data: Json) {
        (self.notify)(Note::Comfy {
            client: self.client.clone(),
            message: json!({"type": kind, "data": data}),
        });
    }
}

impl EventSink for JobSink {
    fn emit(&self, event: &Event) {
        let mut native = serde_json::to_value(event).unwrap_or(Json::Null);
        if let Some(o) = native.as_object_mut() {
            o.insert("job".into(), Json::from(self.job.clone()));
        }
        (self.notify)(Note::Native(native));
        let id = &self.job;
        match event {
            Event::NodeStarted { node, .. } => {
                let c = self.comfy_id(node);
                self.comfy(
                    "executing",
                    json!({"node": c, "display_node": c, "prompt_id": id}),
                );
            }
            Event::NodeCached { node, .. } => {
                let c = self.comfy_id(node);
                let mut all = self.cached.lock().unwrap_or_else(|e| e.into_inner());
                if !all.contains(&c) {
                    all.push(c);
                }
                self.comfy(
                    "execution_cached",
                    json!({"nodes": all.clone(), "prompt_id": id}),
                );
            }
            Event::Progress {
                node, done, total, ..
            } => {
                self.comfy(
                    "progress",
                    json!({"value": done, "max": total, "node": self.comfy_id(node), "prompt_id": id}),
                );
            }
            _ => {}
        }
    }
}
