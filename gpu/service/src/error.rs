//! What can go wrong in the device service.

use latentflow_plugin_api::NodeError;

/// An error of the GPU device service.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matched; `tried` says what was looked for and what exists.
    #[error("no GPU adapter: {tried}")]
    NoAdapter {
        /// What was tried and found.
        tried: String,
    },
    /// The adapter refused to open a device.
    #[error("the GPU adapter {adapter} did not open a device: {reason}")]
    OpenDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        reason: String,
    },
    /// A handle that is not (or no longer) a live buffer.
    #[error("GPU buffer handle {0:#x} is stale or was never created")]
    StaleBuffer(u64),
    /// A kernel handle the service never returned.
    #[error("GPU kernel handle {0} was never compiled here")]
    UnknownKernel(u64),
    /// A size or count over the device's limits, or an unaligned range.
    #[error("{0}")]
    Limit(String),
    /// A WGSL module that does not validate.
    #[error("WGSL kernel `{entry}` does not compile: {message}")]
    Shader {
        /// The entry point asked for.
        entry: String,
        /// Where and why, from the shader compiler.
        message: String,
    },
    /// The device ran out of memory.
    #[error("the GPU ran out of memory during {what}")]
    OutOfMemory {
        /// What was attempted.
        what: &'static str,
    },
    /// A dispatch, copy or map that wgpu rejected.
    #[error("GPU {what} failed: {message}")]
    Operation {
        /// What was attempted.
        what: &'static str,
        /// wgpu's message.
        message: String,
    },
}

impl From<GpuError> for NodeError {
    fn from(e: GpuError) -> NodeError {
        match e {
            GpuError::Limit(_) | GpuError::OutOfMemory { .. } => {
                NodeError::too_large(e.to_string())
            }
            GpuError::StaleBuffer(_) | GpuError::UnknownKernel(_) | GpuError::Shader { .. } => {
                NodeError::invalid(e.to_string())
            }
            _ => NodeError::failed(e.to_string()),
        }
    }
}
