//! Messages between the host and a worker, and values on the wire.
//!
//! Every message is one [`Envelope`] encoded with postcard. Tensors travel out of band as
//! shared-memory descriptors ([`super::shm`]); objects travel as ids into the sender's table of
//! exported objects ([`super::peer`]).

use serde::{Deserialize, Serialize};

use super::shm::WireTensor;

/// One item of a value on the wire. Values are flattened in prefix order (a list is its length
/// followed by its items), so that reading a message never recurses: a hostile peer cannot
/// overflow the stack with deep nesting, and [`super::peer`] bounds the depth it rebuilds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Flat {
    /// No value.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A list of this many values, which follow.
    List(u32),
    /// A record: its kind and field names; the field values follow.
    Record(String, Vec<String>),
    /// A tensor in shared memory.
    Tensor(WireTensor),
    /// An object.
    Object(WireObject),
}

/// An object on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireObject {
    /// The id in the table of the side that owns it.
    pub id: u64,
    /// Whether the receiver owns it (an object sent back to where it lives).
    pub yours: bool,
    /// Interface name.
    pub interface: String,
    /// Model family.
    pub family: String,
    /// Description.
    pub describe: String,
}

/// An error on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    /// `ErrorKind` code.
    pub kind: u8,
    /// The message.
    pub message: String,
}

impl From<latentflow_plugin_api::NodeError> for WireError {
    fn from(e: latentflow_plugin_api::NodeError) -> Self {
        WireError {
            kind: e.kind.0,
            message: e.message.into(),
        }
    }
}

impl From<WireError> for latentflow_plugin_api::NodeError {
    fn from(e: WireError) -> Self {
        latentflow_plugin_api::NodeError {
            kind: latentflow_plugin_api::ErrorKind(e.kind),
            message: e.message.into(),
        }
    }
}

/// What a call in a worker may ask of the host without a round trip.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Facts {
    /// The node's seed.
    pub seed: u64,
    /// The node id.
    pub node_id: String,
    /// The output folder.
    pub output_dir: String,
    /// The allocation limit.
    pub alloc_limit: u64,
}

/// A request. The first group goes from the host to a worker, the second from a worker to the
/// host; `CallObject` goes both ways.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// The plugin's manifest JSON.
    Manifest,
    /// The plugin's tensor counters.
    Stats,
    /// Output types refined from parameters.
    Infer {
        /// Node type.
        type_id: String,
        /// Parameters as JSON.
        params: String,
    },
    /// Creates a node instance; the reply is its id.
    CreateNode {
        /// Node type.
        type_id: String,
        /// Parameters as JSON.
        params: String,
    },
    /// Runs a node instance.
    RunNode {
        /// Instance id.
        node: u64,
        /// Host facts for the call.
        facts: Facts,
        /// Inputs.
        inputs: Vec<Flat>,
    },
    /// Calls a method of an object owned by the receiver.
    CallObject {
        /// Object id.
        object: u64,
        /// Host facts for the call.
        facts: Facts,
        /// Method name.
        method: String,
        /// Arguments.
        args: Vec<Flat>,
    },
    /// Progress of the current call; the reply says whether the run is cancelled.
    Progress {
        /// Steps done.
        done: u64,
        /// Steps in all.
        total: u64,
        /// A short message.
        message: String,
    },
    /// Whether the run is cancelled.
    IsCancelled,
    /// The run's provenance JSON.
    RunMetadata,
}

/// The body of a message.
#[derive(Debug, Serialize, Deserialize)]
pub enum Body {
    /// A request; the receiver answers with one `Reply`.
    Request(Request),
    /// The answer to the last request on this connection.
    Reply(Result<Vec<Flat>, WireError>),
    /// A log line of the current call (no answer).
    Log {
        /// `LogLevel` as a number.
        level: u8,
        /// The line.
        message: String,
    },
}

/// One message: its body, and the ids of the receiver's objects the sender no longer holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Objects to release.
    pub releases: Vec<u64>,
    /// The body.
    pub body: Body,
}

impl Envelope {
    /// Encodes the envelope.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        postcard::to_allocvec(self).map_err(|e| format!("cannot encode a message: {e}"))
    }

    /// Decodes an envelope.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("an unreadable message: {e}"))
    }
}
