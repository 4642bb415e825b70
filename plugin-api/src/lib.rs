//! The stable ABI of LatentFlow node plugins, and a safe SDK for writing them.
//!
//! A plugin is a `cdylib` that exports one root module ([`module::PluginMod`]). The host loads it,
//! checks its layout against its own copy of this crate, reads the [`descriptor::PluginManifest`]
//! and creates [`module::Node`] instances that it runs with [`value::Value`]s: scalars, strings,
//! lists, DLPack-layout [`tensor::Tensor`]s and opaque [`object::ObjectHandle`]s.
//!
//! Plugin authors use the [`sdk`]: declare nodes with [`sdk::NodeDef`], read typed inputs and
//! parameters, return outputs, and export everything with [`export_plugin!`]. Every call into the
//! plugin is wrapped in `catch_unwind`, so a panicking node fails that node only.

// `#[sabi_trait]` expands to impls inside a const block, which rustc now lints.
#![allow(non_local_definitions)]
#![deny(missing_docs)]

pub mod descriptor;
pub mod error;
pub mod host;
pub mod module;
pub mod object;
pub mod sdk;
pub mod tensor;
pub mod types;
pub mod value;

pub use abi_stable;
pub use descriptor::{
    Capabilities, NodeDescriptor, ParamKind, ParamSpec, PluginManifest, PluginStats, PortDesc,
};
pub use error::{ErrorKind, NodeError};
pub use host::{HostRef, HostServices, HostServices_TO, LogLevel};
pub use module::{Node, NodeBox, Node_TO, PluginMod, PluginModRef, API_VERSION};
pub use object::{Object, ObjectHandle, ObjectImpl, Object_TO};
pub use tensor::{DLDataType, DLDevice, DLTensor, Element, Tensor, TensorError};
pub use types::{DType, Dim, PortType};
pub use value::Value;
