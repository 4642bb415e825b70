//! The FFI form of [`Value`]: an `abi_stable` non-exhaustive enum, so later versions can add
//! kinds of value without breaking plugins already built. A value of a kind this copy of the
//! crate does not know converts to an error, never to a guess.
//!
//! Plugin code never sees this type: the SDK converts at every boundary.

use abi_stable::std_types::{RString, RVec, Tuple2};
use abi_stable::StableAbi;

use crate::error::NodeError;
use crate::object::ObjectHandle;
use crate::tensor::Tensor;
use crate::value::{Record, Value};

/// The variants of a value on the wire.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug)]
#[sabi(kind(WithNonExhaustive(size = [usize; 16], traits(Clone, Debug))))]
#[non_exhaustive]
pub enum AbiValueKind {
    /// No value.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(RString),
    /// A list.
    List(RVec<AbiValue>),
    /// A tensor.
    Tensor(Tensor),
    /// An object.
    Object(ObjectHandle),
    /// A record: its kind and named fields.
    Record(RString, RVec<Tuple2<RString, AbiValue>>),
}

/// A value crossing the plugin boundary.
#[repr(transparent)]
#[derive(StableAbi, Clone, Debug)]
pub struct AbiValue(AbiValueKind_NE);

impl From<Value> for AbiValue {
    fn from(v: Value) -> Self {
        let kind = match v {
            Value::None => AbiValueKind::None,
            Value::Bool(b) => AbiValueKind::Bool(b),
            Value::Int(i) => AbiValueKind::Int(i),
            Value::Float(f) => AbiValueKind::Float(f),
            Value::Str(s) => AbiValueKind::Str(s.into()),
            Value::List(items) => AbiValueKind::List(items.into_iter().map(Into::into).collect()),
            Value::Tensor(t) => AbiValueKind::Tensor(t),
            Value::Object(o) => AbiValueKind::Object(o),
            Value::Record(r) => AbiValueKind::Record(
                r.kind.into(),
                r.fields
                    .into_iter()
                    .map(|(k, v)| Tuple2(k.into(), v.into()))
                    .collect(),
            ),
        };
        AbiValue(AbiValueKind_NE::new(kind))
    }
}

impl TryFrom<AbiValue> for Value {
    type Error = NodeError;

    fn try_from(v: AbiValue) -> Result<Self, NodeError> {
        let kind = v.0.into_enum().map_err(|e| {
            NodeError::invalid(format!(
                "a value of a kind this plugin-api ({}) does not know (discriminant {:?}); the other side was built against a newer plugin-api",
                crate::API_VERSION,
                e.into_inner().get_discriminant()
            ))
        })?;
        Ok(match kind {
            AbiValueKind::None => Value::None,
            AbiValueKind::Bool(b) => Value::Bool(b),
            AbiValueKind::Int(i) => Value::Int(i),
            AbiValueKind::Float(f) => Value::Float(f),
            AbiValueKind::Str(s) => Value::Str(s.into()),
            AbiValueKind::List(items) => Value::List(from_abi_vec(items)?),
            AbiValueKind::Tensor(t) => Value::Tensor(t),
            AbiValueKind::Object(o) => Value::Object(o),
            AbiValueKind::Record(kind, fields) => Value::Record(Record {
                kind: kind.into(),
                fields: fields
                    .into_iter()
                    .map(|Tuple2(k, v)| Ok((k.into(), Value::try_from(v)?)))
                    .collect::<Result<_, NodeError>>()?,
            }),
        })
    }
}

/// Values to their FFI form.
pub fn to_abi_vec(values: Vec<Value>) -> RVec<AbiValue> {
    values.into_iter().map(Into::into).collect()
}

/// Values from their FFI form.
pub fn from_abi_vec(values: RVec<AbiValue>) -> Result<Vec<Value>, NodeError> {
    values.into_iter().map(Value::try_from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let t = Tensor::from_vec(vec![1f32, 2.0], &[2]).unwrap();
        let v = Value::List(vec![
            Value::Int(3),
            Value::Str("x".into()),
            Value::Tensor(t),
            Value::Record(Record::new("Demo").with("a", Value::Float(0.5))),
        ]);
        let back = Value::try_from(AbiValue::from(v)).unwrap();
        let Value::List(items) = back else {
            panic!("not a list")
        };
        assert_eq!(items[0].as_int(), Some(3));
        assert_eq!(items[1].as_str(), Some("x"));
        assert_eq!(items[2].as_tensor().unwrap().shape(), vec![2]);
        let Value::Record(r) = &items[3] else {
            panic!("not a record")
        };
        assert_eq!(r.kind, "Demo");
        assert_eq!(r.get("a").and_then(Value::as_float), Some(0.5));
    }
}
