//! Values that flow along graph edges and through object calls.
//!
//! [`Value`] is what plugin and host code work with; it crosses the boundary as
//! [`crate::abi_value::AbiValue`], converted by the SDK. Tensors and objects are refcounted, so
//! cloning a value never copies data.

use crate::error::NodeError;
use crate::object::ObjectHandle;
use crate::tensor::Tensor;

/// A value on an edge.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    Str(String),
    /// A list of values.
    List(Vec<Value>),
    /// A tensor (images, latents, masks and conditioning are tensors too).
    Tensor(Tensor),
    /// An opaque object made by some plugin.
    Object(ObjectHandle),
    /// Named fields of a protocol message.
    Record(Record),
}

/// A protocol message: a kind (`DenoiseRequest`, ...) and named fields in order.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// The message kind.
    pub kind: String,
    /// The fields.
    pub fields: Vec<(String, Value)>,
}

impl Record {
    /// An empty record of `kind`.
    pub fn new(kind: &str) -> Self {
        Record {
            kind: kind.into(),
            fields: Vec::new(),
        }
    }

    /// The record with field `name` set to `value` (replacing an earlier one).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// Sets field `name`.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name.into(), value)),
        }
    }

    /// Field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Removes and returns field `name`.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        let at = self.fields.iter().position(|(k, _)| k == name)?;
        Some(self.fields.remove(at).1)
    }

    /// Checks that the record is of `kind`.
    pub fn expect_kind(&self, kind: &str) -> Result<(), NodeError> {
        if self.kind == kind {
            Ok(())
        } else {
            Err(NodeError::invalid(format!(
                "expected a {kind} record, got a {}",
                self.kind
            )))
        }
    }

    fn missing(&self, name: &str, what: &str) -> NodeError {
        NodeError::invalid(format!("{}: field `{name}` must be {what}", self.kind))
    }

    /// A required tensor field.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, NodeError> {
        self.get(name)
            .and_then(Value::as_tensor)
            .ok_or_else(|| self.missing(name, "a tensor"))
    }

    /// An optional tensor field (absent or `None`).
    pub fn opt_tensor(&self, name: &str) -> Result<Option<&Tensor>, NodeError> {
        match self.get(name) {
            None | Some(Value::None) => Ok(None),
            Some(Value::Tensor(t)) => Ok(Some(t)),
            Some(_) => Err(self.missing(name, "a tensor or none")),
        }
    }

    /// A required number field (ints convert).
    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        self.get(name)
            .and_then(Value::as_float)
            .ok_or_else(|| self.missing(name, "a number"))
    }

    /// A required integer field.
    pub fn int(&self, name: &str) -> Result<i64, NodeError> {
        self.get(name)
            .and_then(Value::as_int)
            .ok_or_else(|| self.missing(name, "an integer"))
    }

    /// A boolean field; absent is `false`.
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Value::Bool(true)))
    }

    /// A required string field.
    pub fn str(&self, name: &str) -> Result<&str, NodeError> {
        self.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| self.missing(name, "a string"))
    }

    /// An optional nested record field.
    pub fn record(&self, name: &str) -> Result<Option<&Record>, NodeError> {
        match self.get(name) {
            None | Some(Value::None) => Ok(None),
            Some(Value::Record(r)) => Ok(Some(r)),
            Some(_) => Err(self.missing(name, "a record")),
        }
    }
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
            Value::Record(_) => "record",
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

    /// The record inside, if any.
    pub fn as_record(&self) -> Option<&Record> {
        match self {
            Value::Record(r) => Some(r),
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

impl From<Record> for Value {
    fn from(r: Record) -> Self {
        Value::Record(r)
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
        Value::Str(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Value::None)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::List(v)
    }
}
