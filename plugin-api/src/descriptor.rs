//! What a plugin declares about each node type: ports, parameters, capabilities.

use abi_stable::std_types::{ROption, RString, RVec};
use abi_stable::StableAbi;

use crate::types::PortType;

/// One input or output port of a node type.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct PortDesc {
    /// Port name, unique among the node's inputs (or outputs).
    pub name: RString,
    /// The port's type.
    pub ty: PortType,
    /// Whether an input may be left unconnected (ignored for outputs).
    pub optional: bool,
    /// One-line documentation.
    pub doc: RString,
}

/// The kind of value a parameter takes.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `true` or `false`.
    Bool,
    /// A whole number.
    Int,
    /// A number.
    Float,
    /// Any string.
    String,
    /// One of the spec's `choices`.
    Enum,
    /// A file system path (relative paths resolve against the graph file's folder).
    Path,
    /// A seed: a whole number, or `random`, which the host replaces by one derived from the run seed.
    Seed,
    /// Any JSON value.
    Json,
}

impl ParamKind {
    /// Lower-case name used in messages and in the JSON Schema.
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Bool => "bool",
            ParamKind::Int => "int",
            ParamKind::Float => "float",
            ParamKind::String => "string",
            ParamKind::Enum => "enum",
            ParamKind::Path => "path",
            ParamKind::Seed => "seed",
            ParamKind::Json => "json",
        }
    }
}

/// The schema of one parameter.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Parameter name.
    pub name: RString,
    /// Value kind.
    pub kind: ParamKind,
    /// Default value as JSON; `None` makes the parameter required.
    pub default: ROption<RString>,
    /// Inclusive lower bound for `Int`, `Float` and `Seed`.
    pub min: ROption<f64>,
    /// Inclusive upper bound for `Int`, `Float` and `Seed`.
    pub max: ROption<f64>,
    /// Allowed values for `Enum`.
    pub choices: RVec<RString>,
    /// One-line documentation.
    pub doc: RString,
}

/// Behavioural facts the executor relies on.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Same inputs and params always give bit-identical outputs. Non-deterministic nodes are never
    /// served from the cache unless they take a `Seed` parameter.
    pub deterministic: bool,
    /// The node keeps state between calls (the host keeps its instance alive across runs).
    pub stateful: bool,
    /// The node has side effects outside its outputs (writes files); it always runs when its
    /// inputs or params change and is never skipped for lack of consumers.
    pub side_effects: bool,
    /// Devices the node can run on: a bit set of [`Capabilities::CPU`] and [`Capabilities::CUDA`].
    pub devices: u32,
}

impl Capabilities {
    /// Runs on the CPU.
    pub const CPU: u32 = 1;
    /// Runs on CUDA devices.
    pub const CUDA: u32 = 2;
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            deterministic: true,
            stateful: false,
            side_effects: false,
            devices: Capabilities::CPU,
        }
    }
}

/// Everything the host knows about a node type before creating one.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct NodeDescriptor {
    /// `family.name`, e.g. `core.save_image`.
    pub type_id: RString,
    /// Semantic version of this node type's behaviour.
    pub version: RString,
    /// Human-readable name.
    pub display_name: RString,
    /// Documentation (Markdown).
    pub doc: RString,
    /// Input ports, in call order.
    pub inputs: RVec<PortDesc>,
    /// Output ports, in return order.
    pub outputs: RVec<PortDesc>,
    /// Parameter schema.
    pub params: RVec<ParamSpec>,
    /// Capabilities.
    pub caps: Capabilities,
}

/// A plugin's self-description, returned by its root module.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginManifest {
    /// Plugin name, e.g. `core`.
    pub name: RString,
    /// Plugin version (semver).
    pub version: RString,
    /// Node types it provides.
    pub nodes: RVec<NodeDescriptor>,
}

/// Counters a plugin keeps about its own work, shown by the host under `--verbose`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// Bytes copied when importing FFI tensors into the plugin's own tensor library.
    pub bytes_copied_in: u64,
    /// Tensors exported without copying.
    pub tensors_exported: u64,
}
