//! Errors, dtypes and tensors between the ABI and the model library.

use latentflow_plugin_api::sdk::prelude::*;

/// A library error as a node failure (its message names the file, tensor or field).
pub fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

pub use latentflow_plugin_api::sdk::candle::to_candle_f32 as f32_tensor;

pub use latentflow_plugin_api::sdk::candle::{compute_dtype, dtype_param};
