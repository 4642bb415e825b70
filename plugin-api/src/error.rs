//! Errors a node or plugin reports to the host.

use std::fmt;

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// Why a node call failed.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The node could not do its work (bad input data, missing file, ...).
    Failed,
    /// The run was cancelled while the node was working.
    Cancelled,
    /// The node panicked; the panic was caught at the plugin boundary.
    Panicked,
    /// The host passed something the node cannot accept (a bug in validation or in the node).
    InvalidInput,
}

/// An error crossing the plugin boundary: a kind and a message.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct NodeError {
    /// What went wrong, broadly.
    pub kind: ErrorKind,
    /// A readable, single-paragraph message.
    pub message: RString,
}

impl NodeError {
    /// A plain failure.
    pub fn failed(message: impl Into<String>) -> Self {
        NodeError {
            kind: ErrorKind::Failed,
            message: RString::from(message.into()),
        }
    }

    /// Cancellation.
    pub fn cancelled() -> Self {
        NodeError {
            kind: ErrorKind::Cancelled,
            message: "cancelled".into(),
        }
    }

    /// Invalid input from the host.
    pub fn invalid(message: impl Into<String>) -> Self {
        NodeError {
            kind: ErrorKind::InvalidInput,
            message: RString::from(message.into()),
        }
    }

    /// A caught panic with its payload rendered as text.
    pub fn panicked(payload: &(dyn std::any::Any + Send)) -> Self {
        let text = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        };
        NodeError {
            kind: ErrorKind::Panicked,
            message: RString::from(format!("panicked: {text}")),
        }
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NodeError {}

impl From<crate::tensor::TensorError> for NodeError {
    fn from(e: crate::tensor::TensorError) -> Self {
        NodeError::failed(e.0)
    }
}
