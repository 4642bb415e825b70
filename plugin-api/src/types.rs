//! Parameterised port types and the rules for connecting them.
//!
//! A port type is more than a name: `Latent{channels=4}` and `Latent{channels=16}` are different
//! types, and the host refuses an edge between them before anything runs. Dimensions may be fixed,
//! free (`Any`), taken from one of the node's parameters (`Param`), or a type variable shared by
//! several ports of one node (`Var`), so that a generic node such as "add two latents" states that
//! its output has the channel count of its inputs.

use std::fmt;

use abi_stable::std_types::{RBox, ROption, RString};
use abi_stable::StableAbi;

/// A dimension inside a port type (a channel count, a rank, an embedding width).
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// Any value is accepted.
    Any,
    /// Exactly this value.
    Fixed(i64),
    /// The value of the node's integer parameter with this name.
    Param(RString),
    /// A type variable: every port of the node that names the same variable has the same value.
    Var(RString),
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

/// Element types a tensor port can require.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
        [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::F64,
            DType::U8,
            DType::U32,
            DType::I64,
        ]
        .into_iter()
        .find(|d| d.dlpack() == (code, bits))
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
/// `N×H×W` float tensors in `[0, 1]`; conditioning is `N×T×dim`. Handles are opaque objects made by
/// one plugin and called by another (a sampler driving a denoiser).
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq, Hash)]
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
    List(RBox<PortType>),
    /// A raw tensor with an optional element type and a rank.
    Tensor {
        /// Required element type; `None` accepts any.
        dtype: ROption<DType>,
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
    /// Text conditioning, `N×T×dim`.
    Conditioning {
        /// Embedding width.
        dim: Dim,
    },
    /// An opaque object implementing `interface` (e.g. `Denoiser`) for a model `family`
    /// (e.g. `sd1`); an empty family means any.
    Handle {
        /// Interface name, e.g. `Denoiser`.
        interface: RString,
        /// Model family, e.g. `sd1`; empty accepts any.
        family: RString,
    },
}

impl PortType {
    /// `Tensor{dtype, rank}`.
    pub fn tensor(dtype: Option<DType>, rank: Dim) -> Self {
        PortType::Tensor {
            dtype: dtype.into(),
            rank,
        }
    }

    /// `Latent{channels}`.
    pub fn latent(channels: Dim) -> Self {
        PortType::Latent { channels }
    }

    /// `Conditioning{dim}`.
    pub fn conditioning(dim: Dim) -> Self {
        PortType::Conditioning { dim }
    }

    /// `List{item}`.
    pub fn list(item: PortType) -> Self {
        PortType::List(RBox::new(item))
    }

    /// A handle to an object implementing `interface` for `family` (empty: any family).
    pub fn handle(interface: &str, family: &str) -> Self {
        PortType::Handle {
            interface: interface.into(),
            family: family.into(),
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
            PortType::List(_) => "List",
            PortType::Tensor { .. } => "Tensor",
            PortType::Image => "Image",
            PortType::Mask => "Mask",
            PortType::Latent { .. } => "Latent",
            PortType::Conditioning { .. } => "Conditioning",
            PortType::Handle { .. } => "Handle",
        }
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortType::List(item) => write!(f, "List{{{}}}", &**item),
            PortType::Tensor { dtype, rank } => {
                let dtype = match dtype {
                    ROption::RSome(d) => d.name().to_string(),
                    ROption::RNone => "any".into(),
                };
                write!(f, "Tensor{{dtype={dtype}, rank={rank}}}")
            }
            PortType::Latent { channels } => write!(f, "Latent{{channels={channels}}}"),
            PortType::Conditioning { dim } => write!(f, "Conditioning{{dim={dim}}}"),
            PortType::Handle { interface, family } if family.is_empty() => {
                write!(f, "{interface}")
            }
            PortType::Handle { interface, family } => write!(f, "{interface}{{family={family}}}"),
            other => f.write_str(other.kind_name()),
        }
    }
}
