//! The host's GPU device service: buffers, WGSL compute kernels and dispatch, through a stable
//! table.
//!
//! The host owns the only GPU instance, device and queue (wgpu). wgpu's objects are not
//! FFI-stable and two wgpu cores on one queue are unsound, so plugins never link wgpu: they ask
//! the host for buffers, hand it WGSL source and dispatch kernels on buffer handles. A plugin
//! reaches the service with [`HostServices::gpu`](crate::host::HostServices::gpu).
//!
//! # Handles and ownership
//! A [`GpuBuffer`] is a generation-checked handle: a released buffer's handle is refused from then
//! on, never aliased to a later buffer. [`GpuService::buffer_create`] returns one reference owned
//! by the caller; [`GpuService::buffer_retain`] adds one and [`GpuService::buffer_release`] drops
//! one. The host frees the memory when none remain.
//!
//! # Tensors on the device
//! [`GpuService::tensor`] wraps a buffer into a [`Tensor`] with DLPack device type
//! [`DLDevice::WEBGPU_TYPE`] (15) whose `data` is the buffer handle, not an address. The tensor
//! holds its own reference, released by the host when the last copy of the tensor is dropped, so
//! device tensors cross plugins exactly like CPU ones. Read the handle back with
//! [`Tensor::gpu_buffer`].
//!
//! # Ordering
//! All work goes through the host's one queue, in submission order: a kernel dispatched after
//! another sees its writes, and a buffer written by a node is ready for every later node.
//! Device tensors therefore carry [`SyncPoint::READY`](crate::tensor::SyncPoint::READY).
//! [`GpuService::buffer_read`] waits for the work queued so far.
//!
//! # Errors
//! A kernel that does not compile, a binding that does not match, a size over the device's
//! limits: each is a [`NodeError`] for the calling node, never a host panic.

use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, RResult, RSlice, RStr, RString, RVec};
use abi_stable::StableAbi;

use crate::error::NodeError;
use crate::tensor::{DLDataType, Tensor};

/// A host-owned GPU buffer: slot index in the low 32 bits, generation in the high 32.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GpuBuffer(pub u64);

/// A compiled compute kernel (a WGSL module and its entry point), cached by the host by content.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GpuKernel(pub u64);

/// One storage-buffer binding of a dispatch: `@group(0) @binding(binding)` gets `buffer`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuBinding {
    /// The WGSL binding number in group 0.
    pub binding: u32,
    /// The buffer bound there, whole.
    pub buffer: GpuBuffer,
}

/// How many workgroups a dispatch runs along each dimension.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuGroups {
    /// Along x.
    pub x: u32,
    /// Along y.
    pub y: u32,
    /// Along z.
    pub z: u32,
}

impl GpuGroups {
    /// `x` workgroups along x, one along y and z.
    pub fn x(x: u32) -> GpuGroups {
        GpuGroups { x, y: 1, z: 1 }
    }
}

/// The limits of the host's device that a kernel author plans tiles and dispatches with.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuLimits {
    /// The largest buffer, in bytes.
    pub max_buffer_bytes: u64,
    /// The largest storage-buffer binding, in bytes.
    pub max_binding_bytes: u64,
    /// The most workgroups along one dispatch dimension.
    pub max_workgroups_per_dimension: u32,
    /// The most invocations in one workgroup.
    pub max_invocations_per_workgroup: u32,
    /// The most bytes of workgroup memory.
    pub max_workgroup_memory_bytes: u32,
}

/// The host's GPU device service. See the module documentation for handles and ordering.
#[sabi_trait]
pub trait GpuService: Send + Sync {
    /// The adapter, in one line: name, backend, device type, driver.
    fn describe(&self) -> RString;

    /// The device's limits.
    fn limits(&self) -> GpuLimits;

    /// A zero-filled buffer of `bytes` bytes (rounded up to a multiple of 4), usable as storage
    /// and copy source and destination. Sizes over the device's limits are refused.
    fn buffer_create(&self, bytes: u64) -> RResult<GpuBuffer, NodeError>;

    /// The size of a buffer in bytes.
    fn buffer_size(&self, buffer: GpuBuffer) -> RResult<u64, NodeError>;

    /// Writes `data` at byte `offset` (both multiples of 4), ordered after the work queued so far.
    fn buffer_write(
        &self,
        buffer: GpuBuffer,
        offset: u64,
        data: RSlice<'_, u8>,
    ) -> RResult<(), NodeError>;

    /// Reads `bytes` bytes from byte `offset` (both multiples of 4), after the work queued so far
    /// has finished.
    fn buffer_read(
        &self,
        buffer: GpuBuffer,
        offset: u64,
        bytes: u64,
    ) -> RResult<RVec<u8>, NodeError>;

    /// Adds one reference to a buffer.
    fn buffer_retain(&self, buffer: GpuBuffer) -> RResult<(), NodeError>;

    /// Drops one reference; the memory is freed when none remain. Stale handles are ignored.
    fn buffer_release(&self, buffer: GpuBuffer);

    /// Compiles the WGSL compute entry point `entry` of `source` (cached by content: compiling
    /// the same source twice is cheap). A shader that does not validate is an error naming the
    /// line and the reason.
    fn compile(&self, source: RStr<'_>, entry: RStr<'_>) -> RResult<GpuKernel, NodeError>;

    /// Runs `kernel` over `groups` workgroups with `bindings` (all in group 0, storage buffers).
    /// Queued in order; returns once it is submitted, not when it has finished.
    fn dispatch(
        &self,
        kernel: GpuKernel,
        bindings: RSlice<'_, GpuBinding>,
        groups: GpuGroups,
    ) -> RResult<(), NodeError>;

    /// Waits until all work queued so far has finished.
    fn wait(&self) -> RResult<(), NodeError>;

    /// A device tensor over `buffer` (compact, row-major, from byte 0) holding its own reference.
    /// The shape's bytes must fit in the buffer.
    #[sabi(last_prefix_field)]
    fn tensor(
        &self,
        buffer: GpuBuffer,
        dtype: DLDataType,
        shape: RSlice<'_, u64>,
    ) -> RResult<Tensor, NodeError>;
}

/// How plugins hold the host's GPU service (shared, `'static`: the host never unloads it).
pub type GpuRef = GpuService_TO<'static, RArc<()>>;
