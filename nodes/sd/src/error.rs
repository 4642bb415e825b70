//! The error type of the SD models: one readable message.

/// Why a model could not be loaded or run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SdError(pub String);

impl SdError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl From<candle_core::Error> for SdError {
    fn from(e: candle_core::Error) -> Self {
        Self(e.to_string())
    }
}
