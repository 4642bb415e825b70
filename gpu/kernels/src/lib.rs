//! WGSL compute kernels run through the host's GPU device service.
//!
//! Everything here talks to the host's service through the plugin API's stable table
//! ([`GpuRef`]); nothing links wgpu. Tensors are f32 device tensors (DLPack device type
//! WebGPU, see [`latentflow_plugin_api::gpu`]): [`Gpu::upload`] moves a CPU tensor to the
//! device, [`Gpu::download`] brings one back, and the operations make new device tensors.
//!
//! The kernels are the f32 CPU path's operations: element-wise maps, softmax over the last
//! dimension, GroupNorm (+SiLU), batched matrix products and attention. Their results equal
//! the CPU path within the bounds their tests state (accumulation order differs).

mod buffer;
mod ops;

pub use buffer::Gpu;
pub use ops::{Binary, Unary};

pub use latentflow_plugin_api::GpuRef;
