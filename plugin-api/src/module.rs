//! The root module every plugin exports, and the node instance interface.
//!
//! The root module is an `abi_stable` prefix type: later minor versions of `plugin-api` may
//! append fields, and the host checks the whole layout when it loads a library. Load it with
//! `abi_stable::library::lib_header_from_path` and `init_root_module` (never
//! `RootModule::load_from_*`, which caches one module per type and would break hot reload).

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use crate::abi_value::AbiValue;
use crate::descriptor::PluginStats;
use crate::error::NodeError;
use crate::host::HostRef;

/// A node instance, created by [`PluginMod::create_node`] with fixed parameters.
#[sabi_trait]
pub trait Node: Send + Sync {
    /// Runs the node on `inputs` (one value per declared input, none for unconnected optional
    /// inputs) and returns one value per declared output.
    #[sabi(last_prefix_field)]
    fn run(&self, host: HostRef<'_>, inputs: RVec<AbiValue>) -> RResult<RVec<AbiValue>, NodeError>;
}

/// An owned node instance.
pub type NodeBox = Node_TO<'static, RBox<()>>;

/// The root module of a plugin library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's [`crate::PluginManifest`] as JSON.
    pub manifest: extern "C" fn() -> RResult<RString, NodeError>,

    /// Counters for `--verbose` diagnostics.
    pub stats: extern "C" fn() -> PluginStats,

    /// Creates an instance of node type `type_id` with `params` (a JSON object already validated
    /// against the descriptor's parameter schema).
    pub create_node:
        extern "C" fn(type_id: RStr<'_>, params: RStr<'_>) -> RResult<NodeBox, NodeError>,

    /// The output port types of node type `type_id` with `params`, as a JSON list, refined
    /// beyond the descriptor's (a loader names the family of the model file). Called during
    /// validation, before anything runs, for nodes whose capabilities say `infers_types`; it
    /// must be cheap (read headers and configs, never weights). An error is a validation error.
    #[sabi(last_prefix_field)]
    pub infer: extern "C" fn(type_id: RStr<'_>, params: RStr<'_>) -> RResult<RString, NodeError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "latentflow_plugin";
    const NAME: &'static str = "latentflow_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The `plugin-api` version this crate implements, which a plugin embeds when it is built.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
