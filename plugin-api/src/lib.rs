//! The stable ABI of LatentFlow node plugins, and a safe SDK for writing them.
//!
//! A plugin is a `cdylib` that exports one root module ([`module::PluginMod`]). The host loads it,
//! checks its layout against its own copy of this crate, reads the JSON
//! [`descriptor::PluginManifest`] and creates [`module::Node`] instances that it runs with
//! [`value::Value`]s: scalars, strings, lists, records, DLPack-layout [`tensor::Tensor`]s and
//! opaque [`object::ObjectHandle`]s.
//!
//! Plugin authors use the [`sdk`]: declare nodes with [`sdk::NodeDef`], read typed inputs and
//! parameters, return outputs, and export everything with [`export_plugin!`]. Every call into the
//! plugin is wrapped in `catch_unwind`, so a panicking node fails that node only. Models talk to
//! samplers through typed protocols ([`sdk::denoiser`], [`sdk::hooks`]).
//!
//! # Compatibility
//!
//! The ABI version is this crate's version; the host and a plugin must share the major and,
//! while the major is 0, the minor (0.2.x plugins load in 0.2.y hosts). A plugin built against
//! another version is refused at load time with one line naming both versions, before any of its
//! code runs. Within a version line:
//!
//! - the root module ([`module::PluginMod`]) and the host services ([`host::HostServices`]) only
//!   gain fields and methods at their ends (abi_stable prefix types), so a newer plugin in an
//!   older host still loads, and what it cannot use is reported;
//! - values ([`abi_value::AbiValue`]) are a non-exhaustive enum and error kinds
//!   ([`error::ErrorKind`]) an open set, so new kinds never break an older peer: an unknown
//!   value is an error for that call, an unknown error kind reads as a failure;
//! - descriptors and port types cross as JSON: unknown fields are ignored, missing ones take
//!   their defaults, and a node using a port type the host does not know is refused on its own;
//! - tensors ([`tensor::Tensor`]) keep DLPack's layout plus flags and a [`tensor::SyncPoint`]
//!   whose rules (who may read when, who frees) are documented in [`tensor`].
//!
//! Version 0.2 (ABI v2) changed, all at once: JSON descriptors with model families in port
//! types, type inference before running, non-exhaustive values with records, typed denoiser and
//! sampler-hook protocols, open error kinds, the tensor sync point, and the allocation limit.

// `#[sabi_trait]` expands to impls inside a const block, which rustc now lints.
#![allow(non_local_definitions)]
#![deny(missing_docs)]

pub mod abi_value;
pub mod descriptor;
pub mod device;
pub mod error;
pub mod gpu;
pub mod host;
pub mod module;
pub mod object;
pub mod sdk;
pub mod tensor;
pub mod types;
pub mod value;

pub use abi_stable;
pub use descriptor::{
    Capabilities, Extent, NodeDescriptor, ParamKind, ParamSpec, PluginManifest, PluginStats,
    PortDesc, SizeRule,
};
pub use device::DeviceSpec;
pub use error::{ErrorKind, NodeError};
pub use gpu::{
    GpuBinding, GpuBuffer, GpuGroups, GpuKernel, GpuLimits, GpuRef, GpuService, GpuService_TO,
};
pub use host::{HostRef, HostServices, HostServices_TO, LogLevel};
pub use module::{Node, NodeBox, Node_TO, PluginMod, PluginModRef, API_VERSION};
pub use object::{Object, ObjectHandle, ObjectImpl, Object_TO, Reply};
pub use tensor::{
    DLDataType, DLDevice, DLTensor, Element, SyncKind, SyncPoint, Tensor, TensorError,
};
pub use types::{DType, Dim, Family, PortType};
pub use value::{Record, Value};
