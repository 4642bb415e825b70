//! What a plugin declares about each node type: ports, parameters, capabilities.
//!
//! Descriptors cross the boundary as JSON (the manifest), so fields and kinds can be added in
//! later versions without breaking plugins already built: a field a host does not know is
//! ignored, a missing one takes its default, and a node that uses a kind the host does not know
//! is refused alone.

use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

use crate::types::PortType;

/// One input or output port of a node type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortDesc {
    /// Port name, unique among the node's inputs (or outputs).
    pub name: String,
    /// The port's type.
    pub ty: PortType,
    /// Whether an input may be left unconnected (ignored for outputs).
    #[serde(default)]
    pub optional: bool,
    /// One-line documentation.
    #[serde(default)]
    pub doc: String,
}

/// The kind of value a parameter takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Parameter name.
    pub name: String,
    /// Value kind.
    pub kind: ParamKind,
    /// Default value as JSON text; `None` makes the parameter required.
    #[serde(default)]
    pub default: Option<String>,
    /// Inclusive lower bound for `Int`, `Float` and `Seed`.
    #[serde(default)]
    pub min: Option<f64>,
    /// Inclusive upper bound for `Int`, `Float` and `Seed`.
    #[serde(default)]
    pub max: Option<f64>,
    /// Allowed values for `Enum`.
    #[serde(default)]
    pub choices: Vec<String>,
    /// One-line documentation.
    #[serde(default)]
    pub doc: String,
}

/// Behavioural facts the executor relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// Same inputs and params always give bit-identical outputs. Non-deterministic nodes are never
    /// served from the cache unless they take a `Seed` parameter.
    pub deterministic: bool,
    /// The node keeps state between calls (the host keeps its instance alive across runs).
    pub stateful: bool,
    /// The node has side effects outside its outputs (writes files); it always runs when its
    /// inputs or params change and is never skipped for lack of consumers.
    pub side_effects: bool,
    /// Devices the node can run on: a bit set of [`Capabilities::CPU`], [`Capabilities::CUDA`]
    /// and [`Capabilities::WGPU`]. A node without `CPU` is refused at validation on a machine
    /// that lacks its device.
    pub devices: u32,
    /// The plugin refines the node's output types from its parameters before anything runs
    /// (`PluginMod::infer`): a model loader says which family the file holds.
    pub infers_types: bool,
}

impl Capabilities {
    /// Runs on the CPU.
    pub const CPU: u32 = 1;
    /// Runs on CUDA devices.
    pub const CUDA: u32 = 2;
    /// Runs on the host's GPU device service ([`crate::gpu`]).
    pub const WGPU: u32 = 4;
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            deterministic: true,
            stateful: false,
            side_effects: false,
            devices: Capabilities::CPU,
            infers_types: false,
        }
    }
}

/// Everything the host knows about a node type before creating one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeDescriptor {
    /// `family.name`, e.g. `core.save_image`.
    pub type_id: String,
    /// Semantic version of this node type's behaviour.
    pub version: String,
    /// Human-readable name.
    #[serde(default)]
    pub display_name: String,
    /// Documentation (Markdown).
    #[serde(default)]
    pub doc: String,
    /// Input ports, in call order.
    #[serde(default)]
    pub inputs: Vec<PortDesc>,
    /// Output ports, in return order.
    #[serde(default)]
    pub outputs: Vec<PortDesc>,
    /// Parameter schema.
    #[serde(default)]
    pub params: Vec<ParamSpec>,
    /// Capabilities.
    #[serde(default)]
    pub caps: Capabilities,
    /// Buffers whose size follows from the parameters alone: the host refuses an oversized
    /// one at validation, before anything runs (the node still checks at run time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocates: Vec<SizeRule>,
}

/// A buffer a node allocates, sized by its parameters: `bytes_each` times the product of
/// `dims`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeRule {
    /// What is allocated, for the message (`an image of shape`).
    pub what: String,
    /// The dimensions, outermost first.
    pub dims: Vec<Extent>,
    /// Bytes per element.
    pub bytes_each: u64,
}

/// One extent (dimension) of a [`SizeRule`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extent {
    /// A fixed size.
    Fixed(u64),
    /// The value of an integer parameter.
    Param(String),
    /// An integer parameter divided by another (rounding down; a divisor below 1 counts as 1),
    /// e.g. a latent's height from the image height and the downscale factor.
    Ratio(String, String),
}

impl Extent {
    /// The integer parameter `name`.
    pub fn param(name: &str) -> Self {
        Extent::Param(name.to_string())
    }

    /// Parameter `name` divided by parameter `by`.
    pub fn ratio(name: &str, by: &str) -> Self {
        Extent::Ratio(name.to_string(), by.to_string())
    }
}

/// A plugin's self-description, returned by its root module as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginManifest {
    /// Plugin name, e.g. `core`.
    pub name: String,
    /// Plugin version (semver).
    pub version: String,
    /// The plugin-api version the plugin was built against.
    #[serde(default)]
    pub api_version: String,
    /// Node types it provides (JSON objects; each is parsed on its own, so one node of a kind
    /// this host does not know does not hide the others).
    pub nodes: Vec<serde_json::Value>,
}

/// Counters a plugin keeps about its own work, shown by the host under `--verbose`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// Bytes copied when importing FFI tensors into the plugin's own tensor library.
    pub bytes_copied_in: u64,
    /// Tensors exported without copying.
    pub tensors_exported: u64,
    /// Tensors imported without copying (the plugin's own tensors handed back).
    pub tensors_reused: u64,
}
