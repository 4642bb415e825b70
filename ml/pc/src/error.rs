//! Why a circuit could not be built, read or queried.

use std::path::PathBuf;

/// A probabilistic-circuit error.
#[derive(Debug, thiserror::Error)]
pub enum PcError {
    /// The structure breaks a rule (topological order, smoothness, decomposability, sizes).
    #[error("circuit node {node}: {reason}")]
    Structure {
        /// The node's index.
        node: usize,
        /// The rule it breaks.
        reason: String,
    },
    /// Evidence that does not fit the circuit.
    #[error("evidence: {0}")]
    Evidence(String),
    /// Data or arguments that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// A circuit file could not be read or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl PcError {
    pub(crate) fn structure(node: usize, reason: impl Into<String>) -> Self {
        PcError::Structure {
            node,
            reason: reason.into(),
        }
    }
}
