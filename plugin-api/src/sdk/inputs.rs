//! Typed access to a node's inputs.

use std::sync::Arc;

use crate::error::NodeError;
use crate::object::ObjectHandle;
use crate::tensor::Tensor;
use crate::value::Value;

/// The values passed to a node call, addressed by port name.
pub struct Inputs {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl Inputs {
    /// Pairs declared input names with the values the host passed.
    pub fn new(names: Arc<[String]>, values: Vec<Value>) -> Result<Self, NodeError> {
        if names.len() != values.len() {
            return Err(NodeError::invalid(format!(
                "expected {} inputs, the host passed {}",
                names.len(),
                values.len()
            )));
        }
        Ok(Inputs { names, values })
    }

    /// The value of input `name` ([`Value::None`] when an optional input is unconnected).
    pub fn get(&self, name: &str) -> Result<&Value, NodeError> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.values[i])
            .ok_or_else(|| NodeError::invalid(format!("node has no input named `{name}`")))
    }

    /// Whether input `name` carries a value.
    pub fn is_connected(&self, name: &str) -> bool {
        matches!(self.get(name), Ok(v) if !matches!(v, Value::None))
    }

    fn wrong(name: &str, want: &str, got: &Value) -> NodeError {
        NodeError::invalid(format!(
            "input `{name}` should be {want}, got {}",
            got.kind_name()
        ))
    }

    /// Input `name` as a tensor.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, NodeError> {
        let v = self.get(name)?;
        v.as_tensor()
            .ok_or_else(|| Self::wrong(name, "a tensor", v))
    }

    /// Optional input `name` as a tensor.
    pub fn opt_tensor(&self, name: &str) -> Result<Option<&Tensor>, NodeError> {
        match self.get(name)? {
            Value::None => Ok(None),
            v => v
                .as_tensor()
                .map(Some)
                .ok_or_else(|| Self::wrong(name, "a tensor", v)),
        }
    }

    /// Input `name` as an object handle.
    pub fn object(&self, name: &str) -> Result<&ObjectHandle, NodeError> {
        let v = self.get(name)?;
        v.as_object()
            .ok_or_else(|| Self::wrong(name, "an object", v))
    }

    /// Input `name` as an integer.
    pub fn int(&self, name: &str) -> Result<i64, NodeError> {
        let v = self.get(name)?;
        v.as_int().ok_or_else(|| Self::wrong(name, "an int", v))
    }

    /// Input `name` as a float (ints convert).
    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        let v = self.get(name)?;
        v.as_float().ok_or_else(|| Self::wrong(name, "a float", v))
    }

    /// Input `name` as a string.
    pub fn str(&self, name: &str) -> Result<&str, NodeError> {
        let v = self.get(name)?;
        v.as_str().ok_or_else(|| Self::wrong(name, "a string", v))
    }

    /// Input `name` as a list (a single value connected to a list input is a list of one;
    /// an unconnected optional input is empty).
    pub fn list(&self, name: &str) -> Result<&[Value], NodeError> {
        match self.get(name)? {
            Value::List(items) => Ok(items.as_slice()),
            Value::None => Ok(&[]),
            v @ (Value::Object(_) | Value::Tensor(_) | Value::Record(_)) => {
                Ok(std::slice::from_ref(v))
            }
            v => Err(Self::wrong(name, "a list", v)),
        }
    }

    /// All values in declaration order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }
}
