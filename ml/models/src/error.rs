//! The error type of the models: typed, with the file, component and shapes where they apply.

use std::path::PathBuf;

use latentflow_weights::{ConfigError, MergeError, WeightsError};

/// Why a model could not be loaded or run (boxed: errors stay one pointer wide on the happy
/// path).
#[derive(Debug)]
pub struct ModelError(Box<ModelErrorKind>);

impl ModelError {
    /// What went wrong.
    pub fn kind(&self) -> &ModelErrorKind {
        &self.0
    }
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl<T: Into<ModelErrorKind>> From<T> for ModelError {
    fn from(e: T) -> Self {
        ModelError(Box::new(e.into()))
    }
}

/// The kinds of [`ModelError`].
#[derive(Debug, thiserror::Error)]
pub enum ModelErrorKind {
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
        ModelErrorKind::Invalid(msg.into()).into()
    }

    /// A format error for `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ModelErrorKind::Format {
            path: path.into(),
            reason: reason.into(),
        }
        .into()
    }

    /// Weights that do not fit the architecture.
    pub fn mismatch(
        path: impl Into<PathBuf>,
        component: &'static str,
        source: candle_core::Error,
    ) -> Self {
        ModelErrorKind::Mismatch {
            path: path.into(),
            component,
            source,
        }
        .into()
    }

    /// An input of the wrong shape.
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, found: &[usize]) -> Self {
        ModelErrorKind::Shape {
            what: what.into(),
            expected: expected.into(),
            found: found.to_vec(),
        }
        .into()
    }
}

/// Result of model code.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
