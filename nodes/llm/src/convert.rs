//! Errors, dtypes and tensors between the ABI and the model library.

use candle_core::DType as CDType;
use latentflow_plugin_api::sdk::prelude::*;

/// A library error as a node failure (its message names the file, tensor or field).
pub fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

pub use latentflow_plugin_api::sdk::candle::to_candle_f32 as f32_tensor;

/// The compute dtype a `dtype` parameter names.
pub fn compute_dtype(p: &Params) -> Result<CDType, NodeError> {
    match p.str("dtype")? {
        "f32" => Ok(CDType::F32),
        "bf16" => Ok(CDType::BF16),
        other => Err(NodeError::invalid(format!("dtype `{other}`: f32 or bf16"))),
    }
}

/// The `dtype` parameter of the loaders.
pub fn dtype_param() -> Param {
    Param::choice("dtype", &["f32", "bf16"])
        .default("f32")
        .doc("compute dtype: f32 (the reference's numbers) or bf16 (half the memory; weights stored in bf16 are then used as they are)")
}
