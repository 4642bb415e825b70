//! Parameterised port types and the rules for connecting them.
//!
//! A port type is more than a name: `Latent{channels=4}` and `Latent{channels=16}` are different
//! types, and the host refuses an edge between them before anything runs. Dimensions may be fixed,
//! free (`Any`), taken from one of the node's parameters (`Param`), or a type variable shared by
//! several ports of one node (`Var`), so that a generic node such as "add two latents" states that
//! its output has the channel count of its inputs. Model families work the same way: a denoiser
//! wrapper takes `Denoiser{family=F}` and gives `Denoiser{family=F}`, and a sampler wants its
//! model and its conditioning to be of one family `F`.
//!
//! Port types cross the plugin boundary inside the JSON manifest, so new kinds can be added in
//! later versions: a host that meets a kind it does not know refuses that one node, not the
//! plugin.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A dimension inside a port type (a channel count, a rank, an embedding width).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// Any value is accepted.
    Any,
    /// Exactly this value.
    Fixed(i64),
    /// The value of the node's integer parameter with this name.
    Param(String),
    /// A type variable: every port of the node that names the same variable has the same value.
    Var(String),
}

impl Dim {
    /// A dimension taken from the parameter `name`.
    pub fn param(name: &str) -> Self {
        Dim::Param(name.into())
    }

    /// A type variable named `name`.
    pub fn var(name: &str) -> Self {
        Dim::Var(name.into())
    }

    /// The fixed value, if this dimension is fixed.
    pub fn fixed(&self) -> Option<i64> {
        match self {
            Dim::Fixed(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Any => f.write_str("any"),
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Param(p) => write!(f, "${p}"),
            Dim::Var(v) => f.write_str(v),
        }
    }
}

/// A model family inside a port type (`sd1`, `sdxl`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Any family.
    Any,
    /// Exactly this family.
    Named(String),
    /// A type variable shared by the node's ports.
    Var(String),
}

impl Family {
    /// A named family.
    pub fn named(name: &str) -> Self {
        Family::Named(name.into())
    }

    /// A family variable.
    pub fn var(name: &str) -> Self {
        Family::Var(name.into())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Family::Any => f.write_str("any"),
            Family::Named(n) => f.write_str(n),
            Family::Var(v) => f.write_str(v),
        }
    }
}

/// Element types a tensor port can require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 16-bit brain float.
    BF16,
    /// 64-bit float.
    F64,
    /// Unsigned byte.
    U8,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 64-bit integer.
    I64,
}

impl DType {
    /// Every element type, in a fixed order.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::U8,
        DType::U32,
        DType::I64,
    ];

    /// The DLPack `(code, bits)` pair of this element type.
    pub fn dlpack(self) -> (u8, u8) {
        match self {
            DType::F32 => (2, 32),
            DType::F16 => (2, 16),
            DType::BF16 => (4, 16),
            DType::F64 => (2, 64),
            DType::U8 => (1, 8),
            DType::U32 => (1, 32),
            DType::I64 => (0, 64),
        }
    }

    /// The element type of a DLPack `(code, bits)` pair, if it is one we support.
    pub fn from_dlpack(code: u8, bits: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.dlpack() == (code, bits))
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        self.dlpack().1 as usize / 8
    }

    /// Lower-case name, as written in graph files and messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::I64 => "i64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a node port.
///
/// Images are `N×H×W×C` float tensors in `[0, 1]`; latents are `N×C×H×W` float tensors; masks are
/// `N×H×W` float tensors in `[0, 1]`; conditioning is `N×T×dim`. Video latents are `N×C×F×H×W`,
/// a type of their own so that an image latent never silently feeds a video node (or the other
/// way round); a video is a `Video` record of its frames (an `F×H×W×3` image batch) and its
/// frame rate. Handles are opaque objects made by one plugin and called by another (a sampler
/// driving a denoiser).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PortType {
    /// Accepts anything; outputs of this type connect anywhere.
    Any,
    /// A boolean.
    Bool,
    /// A signed 64-bit integer.
    Int,
    /// A 64-bit float.
    Float,
    /// A UTF-8 string.
    String,
    /// A list whose items have the given type.
    List {
        /// The items' type.
        item: Box<PortType>,
    },
    /// A raw tensor with an optional element type and a rank.
    Tensor {
        /// Required element type; `None` accepts any.
        dtype: Option<DType>,
        /// Required rank.
        rank: Dim,
    },
    /// An image batch, `N×H×W×C`, float in `[0, 1]`.
    Image,
    /// A mask batch, `N×H×W`, float in `[0, 1]`.
    Mask,
    /// A latent batch, `N×C×H×W`.
    Latent {
        /// Channel count `C`.
        channels: Dim,
    },
    /// A video latent batch, `N×C×F×H×W` (F frames).
    VideoLatent {
        /// Channel count `C`.
        channels: Dim,
    },
    /// A video: a `Video` record with `frames` (an `F×H×W×3` image batch in `[0, 1]`) and `fps`
    /// (see [`crate::sdk::video::Video`]).
    Video,
    /// Text conditioning, `N×T×dim`, of a model family.
    Conditioning {
        /// Embedding width.
        dim: Dim,
        /// The family whose models take it.
        #[serde(default = "any_family")]
        family: Family,
    },
    /// An opaque object implementing `interface` (e.g. `Denoiser`) for a model `family`.
    Handle {
        /// Interface name, e.g. `Denoiser`.
        interface: String,
        /// Model family.
        #[serde(default = "any_family")]
        family: Family,
    },
    /// A record of named fields of a protocol message kind (`DenoiseRequest`, ...).
    Record {
        /// The message kind.
        record: String,
    },
}

fn any_family() -> Family {
    Family::Any
}

impl PortType {
    /// `Tensor{dtype, rank}`.
    pub fn tensor(dtype: Option<DType>, rank: Dim) -> Self {
        PortType::Tensor { dtype, rank }
    }

    /// `Latent{channels}`.
    pub fn latent(channels: Dim) -> Self {
        PortType::Latent { channels }
    }

    /// `VideoLatent{channels}`.
    pub fn video_latent(channels: Dim) -> Self {
        PortType::VideoLatent { channels }
    }

    /// `Conditioning{dim}` of any family.
    pub fn conditioning(dim: Dim) -> Self {
        PortType::Conditioning {
            dim,
            family: Family::Any,
        }
    }

    /// `Conditioning{dim, family}`.
    pub fn conditioning_of(dim: Dim, family: Family) -> Self {
        PortType::Conditioning { dim, family }
    }

    /// `List{item}`.
    pub fn list(item: PortType) -> Self {
        PortType::List {
            item: Box::new(item),
        }
    }

    /// A handle to an object implementing `interface` of any family.
    pub fn handle(interface: &str) -> Self {
        PortType::Handle {
            interface: interface.into(),
            family: Family::Any,
        }
    }

    /// A handle to an object implementing `interface` for `family`.
    pub fn handle_of(interface: &str, family: Family) -> Self {
        PortType::Handle {
            interface: interface.into(),
            family,
        }
    }

    /// The kind name without parameters (`Latent`, `Tensor`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self {
            PortType::Any => "Any",
            PortType::Bool => "Bool",
            PortType::Int => "Int",
            PortType::Float => "Float",
            PortType::String => "String",
            PortType::List { .. } => "List",
            PortType::Tensor { .. } => "Tensor",
            PortType::Image => "Image",
            PortType::Mask => "Mask",
            PortType::Latent { .. } => "Latent",
            PortType::VideoLatent { .. } => "VideoLatent",
            PortType::Video => "Video",
            PortType::Conditioning { .. } => "Conditioning",
            PortType::Handle { .. } => "Handle",
            PortType::Record { .. } => "Record",
        }
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortType::List { item } => write!(f, "List{{{item}}}"),
            PortType::Tensor { dtype, rank } => {
                let dtype = match dtype {
                    Some(d) => d.name().to_string(),
                    None => "any".into(),
                };
                write!(f, "Tensor{{dtype={dtype}, rank={rank}}}")
            }
            PortType::Latent { channels } => write!(f, "Latent{{channels={channels}}}"),
            PortType::VideoLatent { channels } => write!(f, "VideoLatent{{channels={channels}}}"),
            PortType::Conditioning {
                dim,
                family: Family::Any,
            } => write!(f, "Conditioning{{dim={dim}}}"),
            PortType::Conditioning { dim, family } => {
                write!(f, "Conditioning{{dim={dim}, family={family}}}")
            }
            PortType::Handle {
                interface,
                family: Family::Any,
            } => f.write_str(interface),
            PortType::Handle { interface, family } => write!(f, "{interface}{{family={family}}}"),
            PortType::Record { record } => write!(f, "Record{{{record}}}"),
            other => f.write_str(other.kind_name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_types_round_trip_through_json() {
        let types = [
            PortType::latent(Dim::var("C")),
            PortType::list(PortType::Image),
            PortType::handle_of("Denoiser", Family::var("F")),
            PortType::conditioning_of(Dim::Fixed(768), Family::named("sd1")),
            PortType::tensor(Some(DType::F32), Dim::Fixed(5)),
            PortType::video_latent(Dim::Fixed(4)),
            PortType::Video,
        ];
        for t in types {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(
                serde_json::from_str::<PortType>(&json).unwrap(),
                t,
                "{json}"
            );
        }
    }

    #[test]
    fn an_unknown_kind_is_an_error_not_a_guess() {
        let e = serde_json::from_str::<PortType>(r#"{"kind": "hologram"}"#).unwrap_err();
        assert!(e.to_string().contains("hologram"), "{e}");
    }

    #[test]
    fn families_show_in_the_name() {
        let t = PortType::handle_of("Denoiser", Family::named("sd1"));
        assert_eq!(t.to_string(), "Denoiser{family=sd1}");
        assert_eq!(PortType::handle("Vae").to_string(), "Vae");
    }
}
