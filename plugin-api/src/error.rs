//! Errors a node or plugin reports to the host.

use std::fmt;

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// Why a node call failed. An open set: later versions may add kinds, and a kind this crate does
/// not know reads as [`ErrorKind::FAILED`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u8);

impl ErrorKind {
    /// The node could not do its work (bad input data, missing file, ...).
    pub const FAILED: ErrorKind = ErrorKind(0);
    /// The run was cancelled while the node was working.
    pub const CANCELLED: ErrorKind = ErrorKind(1);
    /// The node panicked; the panic was caught at the plugin boundary.
    pub const PANICKED: ErrorKind = ErrorKind(2);
    /// The host passed something the node cannot accept (a bug in validation or in the node).
    pub const INVALID_INPUT: ErrorKind = ErrorKind(3);
    /// A size limit was exceeded (memory, decompression, allocation request).
    pub const TOO_LARGE: ErrorKind = ErrorKind(4);

    /// The name, for messages (`failed`, `cancelled`, ...).
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "cancelled",
            2 => "panicked",
            3 => "invalid input",
            4 => "too large",
            _ => "failed",
        }
    }
}

impl std::fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0 => "Failed",
            1 => "Cancelled",
            2 => "Panicked",
            3 => "InvalidInput",
            4 => "TooLarge",
            _ => "Unknown",
        })
    }
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

/// The message without a backtrace that a library error may carry after it (candle's errors
/// append one when `RUST_BACKTRACE` is set).
fn without_backtrace(message: String) -> String {
    let cut = message.match_indices('\n').map(|(i, _)| i).find(|&i| {
        let rest = message[i + 1..].trim_start();
        rest.starts_with("0: ") || rest.starts_with("stack backtrace:")
    });
    match cut {
        Some(i) => message[..i].trim_end().to_string(),
        None => message,
    }
}

impl NodeError {
    /// A plain failure.
    pub fn failed(message: impl Into<String>) -> Self {
        NodeError {
            kind: ErrorKind::FAILED,
            message: RString::from(without_backtrace(message.into())),
        }
    }

    /// Cancellation.
    pub fn cancelled() -> Self {
        NodeError {
            kind: ErrorKind::CANCELLED,
            message: "cancelled".into(),
        }
    }

    /// A size limit was exceeded.
    pub fn too_large(message: impl Into<String>) -> Self {
        NodeError {
            kind: ErrorKind::TOO_LARGE,
            message: RString::from(message.into()),
        }
    }

    /// Invalid input from the host.
    pub fn invalid(message: impl Into<String>) -> Self {
        NodeError {
            kind: ErrorKind::INVALID_INPUT,
            message: RString::from(without_backtrace(message.into())),
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
            kind: ErrorKind::PANICKED,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtraces_are_cut_from_messages() {
        let e = NodeError::failed("shape mismatch\n   0: candle_core::error::Error::bt\n   1: x");
        assert_eq!(e.message.as_str(), "shape mismatch");
        let e = NodeError::failed("two\nlines");
        assert_eq!(e.message.as_str(), "two\nlines");
    }
}
