//! Errors and tensors between the ABI and the libraries.

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::to_candle;
use latentflow_plugin_api::sdk::prelude::*;

/// A library error as a node failure.
pub fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

/// An FFI tensor as an f32 candle tensor on the CPU.
pub fn f32_tensor(t: &Tensor) -> Result<CTensor, NodeError> {
    to_candle(t, &Device::Cpu)?
        .to_dtype(CDType::F32)
        .map_err(fail)
}

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
