//! The host-owned GPU device service.
//!
//! The host opens one wgpu instance, adapter, device and queue ([`Service::open`]) and hands
//! plugins a stable function table over it ([`Service::handle`], the plugin API's
//! [`GpuService`](latentflow_plugin_api::gpu::GpuService)): buffers behind generation-checked
//! handles, WGSL kernels compiled once per content, dispatches on buffer handles, reads and
//! writes. Plugins never link wgpu, so there is one resource tracker and one queue order, and
//! the host may move to another wgpu version without breaking a plugin.
//!
//! Every operation a plugin triggers runs inside a wgpu error scope: a bad shader, a binding
//! that does not match or a size over the device's limits is an [`GpuError`], never a panic.

mod abi;
mod buffers;
mod error;
mod kernels;
mod open;
mod service;

pub use error::GpuError;
pub use open::{AdapterSummary, OpenOptions};
pub use service::Service;
