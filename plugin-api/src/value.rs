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
        upsert(&mut self.fields, name, value.into());
    }

    /// Field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        lookup(&self.fields, name)
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

    /// Field `name` as `pick` reads it; `what` names the expected kind in the error.
    fn required<'a, T>(
        &'a self,
        name: &str,
        what: &str,
        pick: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T, NodeError> {
        self.get(name)
            .and_then(pick)
            .ok_or_else(|| self.missing(name, what))
    }

    /// Field `name` as `pick` reads it, or `None` when absent or `None`.
    fn optional<'a, T>(
        &'a self,
        name: &str,
        what: &str,
        pick: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, NodeError> {
        match self.get(name) {
            None | Some(Value::None) => Ok(None),
            Some(v) => pick(v).map(Some).ok_or_else(|| self.missing(name, what)),
        }
    }

    /// A required tensor field.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, NodeError> {
        self.required(name, "a tensor", Value::as_tensor)
    }

    /// An optional tensor field (absent or `None`).
    pub fn opt_tensor(&self, name: &str) -> Result<Option<&Tensor>, NodeError> {
        self.optional(name, "a tensor or none", Value::as_tensor)
    }

    /// A required number field (ints convert).
    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        self.required(name, "a number", Value::as_float)
    }

    /// A required integer field.
    pub fn int(&self, name: &str) -> Result<i64, NodeError> {
        self.required(name, "an integer", Value::as_int)
    }

    /// A boolean field; absent is `false`.
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Value::Bool(true)))
    }

    /// A required string field.
    pub fn str(&self, name: &str) -> Result<&str, NodeError> {
        self.required(name, "a string", Value::as_str)
    }

    /// An optional nested record field.
    pub fn record(&self, name: &str) -> Result<Option<&Record>, NodeError> {
        self.optional(name, "a record", Value::as_record)
    }
}

/// The value named `name` in a list of named values.
pub(crate) fn lookup<'a>(list: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    list.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Sets the value named `name` in a list of named values (replacing, or appending).
pub(crate) fn upsert(list: &mut Vec<(String, Value)>, name: &str, value: Value) {
    match list.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => list.push((name.into(), value)),
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

/// `From` for the values that are one variant around the type.
macro_rules! value_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl From<$ty> for Value {
            fn from(v: $ty) -> Self {
                Value::$variant(v)
            }
        })*
    };
}

value_from!(
    Tensor => Tensor,
    ObjectHandle => Object,
    Record => Record,
    i64 => Int,
    f64 => Float,
    bool => Bool,
    String => Str,
    Vec<Value> => List,
);

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.into())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Value::None)
    }
}
