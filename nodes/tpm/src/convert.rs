//! Errors and tensors between the ABI and the libraries.

use candle_core::Tensor as CTensor;
use latentflow_plugin_api::sdk::prelude::*;

/// A library error as a node failure.
pub fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

pub use latentflow_plugin_api::sdk::candle::to_candle_f32 as f32_tensor;

/// The argument `i` of a method call.
pub fn arg<'a>(args: &'a [Value], i: usize, method: &str) -> Result<&'a Value, NodeError> {
    args.get(i)
        .ok_or_else(|| NodeError::invalid(format!("{method}: argument {i} is missing")))
}

/// The tensor argument `i` as f32.
pub fn tensor_arg(args: &[Value], i: usize, method: &str) -> Result<CTensor, NodeError> {
    let t = arg(args, i, method)?
        .as_tensor()
        .ok_or_else(|| NodeError::invalid(format!("{method}: argument {i} must be a tensor")))?;
    f32_tensor(t)
}
