//! The graph file as written: YAML deserialized with source positions.
//!
//! ```yaml
//! version: 1
//! inputs:
//!   size: 64            # a graph input with a default, overridable with --set size=128
//! nodes:
//!   noise:
//!     type: core.noise_latent
//!     params: {width: $size, height: $size, seed: 42}
//!   preview:
//!     type: core.save_image
//!     inputs: {image: decode.image}
//! ```

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value as Json;
use serde_saphyr::Spanned;

use super::diag::Pos;

thread_local! {
    static PLAIN: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with [`Loc`] reading plain values (no positions), for deserializers other than
/// serde-saphyr, which cannot drive `Spanned`.
pub fn plain<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            PLAIN.with(|p| p.set(false));
        }
    }
    PLAIN.with(|p| p.set(true));
    let _reset = Reset;
    f()
}

/// A value with the position it was written at (unknown, 0:0, when parsed as plain JSON).
#[derive(Debug)]
pub struct Loc<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub pos: Pos,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loc<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if PLAIN.with(Cell::get) {
            return T::deserialize(d).map(|value| Loc {
                value,
                pos: Pos::default(),
            });
        }
        let s = Spanned::<T>::deserialize(d)?;
        Ok(Loc {
            value: s.value,
            pos: s.referenced.into(),
        })
    }
}

/// A YAML mapping kept as an ordered list of entries, duplicates included, so that validation can
/// report a duplicate key with both positions instead of failing the parse.
#[derive(Debug)]
pub struct Entries<T>(pub Vec<(Loc<String>, Loc<T>)>);

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A whole graph file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFile {
    /// Format version; only 1 exists.
    pub version: Option<Loc<u32>>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// The run seed (overridden by `--seed`).
    #[serde(default)]
    pub seed: Option<Loc<u64>>,
    /// The device of every node with a `device` parameter (model loaders) that does not set
    /// it: `cpu`, `cuda:N` or `wgpu`.
    #[serde(default)]
    pub device: Option<Loc<String>>,
    /// Graph inputs: a default value, or `{type, default, doc}`.
    #[serde(default)]
    pub inputs: Entries<Json>,
    /// The nodes, keyed by id.
    pub nodes: Loc<Entries<NodeDef>>,
    /// Node ids whose results are wanted; default: every node nobody consumes, plus nodes with
    /// side effects.
    #[serde(default)]
    pub outputs: Option<Vec<Loc<String>>>,
}

/// One node as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    /// Node type id, `family.name`.
    #[serde(rename = "type")]
    pub type_id: Loc<String>,
    /// Input port → `node.port`, `node` (single-output node) or `$variable`.
    #[serde(default)]
    pub inputs: Entries<Json>,
    /// Parameter name → value or `$variable`.
    #[serde(default)]
    pub params: Entries<Json>,
    /// Free text.
    #[serde(default)]
    pub doc: Option<String>,
}
