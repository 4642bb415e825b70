//! The error type of the models: typed, with the file, component and shapes where they apply.

use std::path::PathBuf;

use latentflow_weights::{ConfigError, MergeError, WeightsError};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Weight files could not be found or read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A configuration could not be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A LoRA could not be merged.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// The weights do not fit the architecture the config describes.
    #[error("{}: {component} weights do not match the config: {source}", path.display())]
    Mismatch {
        /// The weights' file or folder.
        path: PathBuf,
        /// `UNet`, `VAE`, `text encoder`, ...
        component: &'static str,
        /// candle's report (names the tensor and both shapes).
        #[source]
        source: candle_core::Error,
    },
    /// A file is not what it was given as (not a checkpoint of this family, ...).
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file or folder.
        path: PathBuf,
        /// What it is not, and what to do.
        reason: String,
    },
    /// An input tensor has the wrong shape.
    #[error("{what}: expected {expected}, got {found:?}")]
    Shape {
        /// The input.
        what: String,
        /// The expected shape, in words.
        expected: String,
        /// The shape given.
        found: Vec<usize>,
    },
    /// An argument is out of range (a clip skip beyond the layers, ...).
    #[error("{0}")]
    Invalid(String),
    /// A computation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// An invalid-argument error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }

    /// A format error for `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Result of model code.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
