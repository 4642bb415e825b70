//! The safe SDK: write nodes in plain Rust and export them with [`export_plugin!`].
//!
//! ```ignore
//! use latentflow_plugin_api::sdk::prelude::*;
//!
//! fn add() -> NodeDef {
//!     NodeDef::new("demo.add", |_ctx, inputs, params| {
//!         let a = inputs.int("a")?;
//!         Ok(vec![Value::Int(a + params.int("offset")?)])
//!     })
//!     .doc("Adds a constant to an integer.")
//!     .input("a", PortType::Int, "the number")
//!     .output("sum", PortType::Int, "a + offset")
//!     .param(Param::int("offset").default(1))
//! }
//!
//! latentflow_plugin_api::export_plugin!(PluginDef::new("demo", env!("CARGO_PKG_VERSION")).node(add()));
//! ```
//!
//! [`export_plugin!`]: crate::export_plugin

mod context;
pub mod denoiser;
pub mod files;
pub mod hooks;
mod inputs;
mod node;
mod params;
mod plugin;
pub mod stats;
pub mod video;

#[cfg(feature = "candle")]
pub mod candle;
#[cfg(feature = "cuda")]
pub mod cuda;

pub use context::{human_bytes, Ctx};
pub use inputs::Inputs;
pub use node::{NodeDef, NodeImpl};
pub use params::{Param, Params};
pub use plugin::{guard, PluginDef};

/// Everything a plugin author usually needs.
pub mod prelude {
    pub use super::{Ctx, Inputs, NodeDef, NodeImpl, Param, Params, PluginDef};
    pub use crate::{
        DType, Dim, Extent, Family, NodeError, ObjectHandle, PortType, Record, Tensor, Value,
    };
    pub use crate::{HostRef, ObjectImpl, Reply};
}

/// Result type of node code.
pub type Result<T, E = crate::NodeError> = std::result::Result<T, E>;

/// Exports a plugin: pass an expression that builds a [`PluginDef`]. It is evaluated once, on the
/// host's first call into the library.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:expr) => {
        #[doc(hidden)]
        pub fn __latentflow_plugin_def() -> &'static $crate::sdk::PluginDef {
            static PLUGIN: ::std::sync::OnceLock<$crate::sdk::PluginDef> =
                ::std::sync::OnceLock::new();
            PLUGIN.get_or_init(|| $plugin)
        }

        #[doc(hidden)]
        pub extern "C" fn __latentflow_manifest() -> $crate::abi_stable::std_types::RResult<
            $crate::abi_stable::std_types::RString,
            $crate::NodeError,
        > {
            $crate::sdk::guard(|| __latentflow_plugin_def().manifest_json().map(Into::into)).into()
        }

        #[doc(hidden)]
        pub extern "C" fn __latentflow_infer(
            type_id: $crate::abi_stable::std_types::RStr<'_>,
            params: $crate::abi_stable::std_types::RStr<'_>,
        ) -> $crate::abi_stable::std_types::RResult<
            $crate::abi_stable::std_types::RString,
            $crate::NodeError,
        > {
            $crate::sdk::guard(|| {
                __latentflow_plugin_def()
                    .infer(type_id.as_str(), params.as_str())
                    .map(Into::into)
            })
            .into()
        }

        #[doc(hidden)]
        pub extern "C" fn __latentflow_stats() -> $crate::PluginStats {
            $crate::sdk::stats::snapshot()
        }

        #[doc(hidden)]
        pub extern "C" fn __latentflow_create_node(
            type_id: $crate::abi_stable::std_types::RStr<'_>,
            params: $crate::abi_stable::std_types::RStr<'_>,
        ) -> $crate::abi_stable::std_types::RResult<$crate::NodeBox, $crate::NodeError> {
            $crate::sdk::guard(|| {
                __latentflow_plugin_def().create(type_id.as_str(), params.as_str())
            })
            .into()
        }

        #[doc(hidden)]
        pub fn __latentflow_root_module() -> $crate::PluginModRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::PluginMod {
                manifest: __latentflow_manifest,
                stats: __latentflow_stats,
                create_node: __latentflow_create_node,
                infer: __latentflow_infer,
            }
            .leak_into_prefix()
        }

        /// The library header the host reads (what `abi_stable::export_root_module` generates).
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __LATENTFLOW_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            pub extern "C" fn erased() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__latentflow_root_module)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::PluginModRef>(
                    erased,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_name_matches_abi_stable() {
        // The literal in `export_plugin!` must equal the symbol abi_stable looks for.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
