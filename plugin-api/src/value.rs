//! Values that flow along graph edges.

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;

use crate::object::ObjectHandle;
use crate::tensor::Tensor;

/// A value on an edge. Tensors and objects are refcounted, so cloning a value never copies data.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug)]
pub enum Value {
    /// No value (an unconnected optional input).
    None,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(RString),
    /// A list of values.
    List(RVec<Value>),
    /// A tensor (images, latents, masks and conditioning are tensors too).
    Tensor(Tensor),
    /// An opaque object made by some plugin.
    Object(ObjectHandle),
}

impl Value {
    /// The variant name, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::None => "none",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Tensor(_) => "tensor",
            Value::Object(_) => "object",
        }
    }

    /// The tensor inside, if any.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The object inside, if any.
    pub fn as_object(&self) -> Option<&ObjectHandle> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The integer inside, if any.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The number inside (ints convert), if any.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// The string inside, if any.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Tensor(t)
    }
}

impl From<ObjectHandle> for Value {
    fn from(o: ObjectHandle) -> Self {
        Value::Object(o)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.into())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v.into())
    }
}
