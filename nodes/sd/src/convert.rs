//! Argument reading and tensor conversion shared by the plugin's objects and nodes.

use candle_core::Tensor as CTensor;
use latentflow_models::sd::lora;
use latentflow_plugin_api::sdk::candle::from_candle;
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_weights::lora::{Applied, Update};

/// A library error as a node failure (its message names the file, tensor or field).
pub fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

pub use latentflow_plugin_api::sdk::candle::to_candle_f32 as f32_tensor;

/// Candle tensors as a list value.
pub fn list_value(ts: &[CTensor]) -> Result<Value, NodeError> {
    Ok(Value::List(
        ts.iter()
            .map(|t| from_candle(t).map(Value::Tensor))
            .collect::<Result<_, _>>()?,
    ))
}

/// A list value of tensors as f32 candle tensors.
pub fn tensor_list(v: &Value, what: &str) -> Result<Vec<CTensor>, NodeError> {
    match v {
        Value::List(items) => items
            .iter()
            .map(|v| {
                v.as_tensor()
                    .ok_or_else(|| NodeError::invalid(format!("{what} must be tensors")))
                    .and_then(f32_tensor)
            })
            .collect(),
        _ => Err(NodeError::invalid(format!("{what} must be a list"))),
    }
}

/// Argument `i` of `method`.
pub fn arg<'a>(args: &'a [Value], i: usize, method: &str) -> Result<&'a Value, NodeError> {
    args.get(i)
        .ok_or_else(|| NodeError::invalid(format!("{method}: missing argument {i}")))
}

/// Integer argument `i` of `method`.
pub fn int_arg(args: &[Value], i: usize, method: &str) -> Result<i64, NodeError> {
    arg(args, i, method)?
        .as_int()
        .ok_or_else(|| NodeError::invalid(format!("{method}: argument {i} must be an integer")))
}

/// `with_lora(path, multiplier)` arguments, read.
pub fn lora_args(args: &[Value], what: &str) -> Result<(Vec<Update>, f64, String), NodeError> {
    let path = arg(args, 0, what)?
        .as_str()
        .ok_or_else(|| NodeError::invalid(format!("{what}: the path must be a string")))?;
    let m = args.get(1).and_then(Value::as_float).unwrap_or(1.0);
    let updates = lora::read(std::path::Path::new(path)).map_err(fail)?;
    Ok((updates, m, path.to_owned()))
}

/// The result of `with_lora`: the new object, modules patched, the unmatched module names.
pub fn lora_result(object: ObjectHandle, applied: &Applied) -> Vec<Value> {
    vec![
        Value::Object(object),
        Value::Int(applied.patched as i64),
        Value::List(
            applied
                .unmatched
                .iter()
                .map(|m| Value::Str(m.clone()))
                .collect(),
        ),
    ]
}
