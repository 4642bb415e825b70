//! A refcounted tensor with DLPack's memory layout that crosses library boundaries.
//!
//! The descriptor ([`DLTensor`]) is laid out exactly as DLPack's `DLTensor`. Ownership is a
//! reference count behind a vtable: cloning a [`Tensor`] calls `retain` and dropping it calls
//! `release`, and both function pointers live in the library that created the tensor, so its
//! memory is always freed by the allocator that made it. The host can hand one tensor to many
//! consumers without copying. Tensors are immutable once shared: consumers must not write
//! through `data`.
//!
//! # Device tensors and synchronisation
//!
//! A tensor on a device (DLPack device type 2 = CUDA, 7 = Vulkan, 15 = WebGPU) carries a
//! [`SyncPoint`]: the producer records it (a CUDA event, a timeline value) after its last write
//! and before it returns the tensor. The rules:
//!
//! 1. **A consumer may read** only after waiting on the sync point on the stream or queue it
//!    reads from (`cuStreamWaitEvent` for [`SyncKind::CUDA_EVENT`]). [`SyncKind::NONE`] means the
//!    data is ready now (CPU tensors, or a producer that synchronised).
//! 2. **A consumer that keeps reading asynchronously** records its own sync point after its
//!    last read and keeps its clone of the tensor until that point has completed; only then does
//!    it drop the clone.
//! 3. **The producer frees** the memory when the last reference is released, and never earlier:
//!    the reference count, not stream order, decides. Because of rule 2 the release happens after
//!    every consumer's reads.

use std::ffi::c_void;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use abi_stable::StableAbi;

use crate::types::DType;

/// DLPack device (`DLDevice`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDevice {
    /// DLPack device type: 1 = CPU, 2 = CUDA, ...
    pub device_type: i32,
    /// Device ordinal.
    pub device_id: i32,
}

impl DLDevice {
    /// The host CPU.
    pub const CPU: DLDevice = DLDevice {
        device_type: 1,
        device_id: 0,
    };
    /// DLPack's device type for WebGPU: a buffer of the host's GPU service
    /// ([`crate::gpu`]), its handle in `data`.
    pub const WEBGPU_TYPE: i32 = 15;
    /// The host's GPU service device.
    pub const WEBGPU: DLDevice = DLDevice {
        device_type: DLDevice::WEBGPU_TYPE,
        device_id: 0,
    };
}

/// DLPack element type (`DLDataType`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDataType {
    /// 0 = int, 1 = uint, 2 = float, 4 = bfloat.
    pub code: u8,
    /// Bits per lane.
    pub bits: u8,
    /// Lanes (1 for scalars).
    pub lanes: u16,
}

impl From<DType> for DLDataType {
    fn from(d: DType) -> DLDataType {
        let (code, bits) = d.dlpack();
        DLDataType {
            code,
            bits,
            lanes: 1,
        }
    }
}

/// DLPack tensor descriptor (`DLTensor`). `shape` and `strides` point into memory owned by the
/// tensor's manager; strides are in elements, and null strides mean compact row-major.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct DLTensor {
    /// Start of the allocation (device pointer for device tensors).
    pub data: *mut c_void,
    /// Where the memory lives.
    pub device: DLDevice,
    /// Number of dimensions.
    pub ndim: i32,
    /// Element type.
    pub dtype: DLDataType,
    /// `ndim` sizes.
    pub shape: *mut i64,
    /// `ndim` strides in elements, or null for compact row-major.
    pub strides: *mut i64,
    /// Offset of the first element from `data`, in bytes.
    pub byte_offset: u64,
}

/// What kind of synchronisation a [`SyncPoint`] holds. An open set: values this crate does not
/// know are treated as "not ready, cannot wait" by consumers.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyncKind(pub u32);

impl SyncKind {
    /// The data is ready now.
    pub const NONE: SyncKind = SyncKind(0);
    /// `handle` is a `CUevent` recorded after the producer's last write.
    pub const CUDA_EVENT: SyncKind = SyncKind(1);
    /// `handle` is a `CUstream`; the data is ready once the work queued on it so far completes.
    pub const CUDA_STREAM: SyncKind = SyncKind(2);
    /// `handle` is a Vulkan timeline semaphore owned by the host's device service; ready once it
    /// reaches `value`.
    pub const VK_TIMELINE: SyncKind = SyncKind(3);
}

/// When a tensor's data may be read: see the module documentation for the rules.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncPoint {
    /// What `handle` and `value` mean.
    pub kind: SyncKind,
    /// The device the handle belongs to.
    pub device: DLDevice,
    /// An event, stream or semaphore handle (kind-specific).
    pub handle: u64,
    /// A timeline value (kind-specific; 0 otherwise).
    pub value: u64,
}

impl SyncPoint {
    /// Ready now.
    pub const READY: SyncPoint = SyncPoint {
        kind: SyncKind::NONE,
        device: DLDevice::CPU,
        handle: 0,
        value: 0,
    };
}

/// DLPack's flag: consumers must not write.
pub const FLAG_READ_ONLY: u64 = 1;
/// DLPack's flag: the producer made a copy for this consumer.
pub const FLAG_IS_COPIED: u64 = 1 << 1;

/// Reference-count operations of a tensor, implemented by the library that created it.
#[repr(C)]
#[derive(StableAbi)]
pub struct TensorVTable {
    /// Adds one reference to `manager`.
    pub retain: unsafe extern "C" fn(manager: *mut c_void),
    /// Drops one reference to `manager`, freeing it when none remain.
    pub release: unsafe extern "C" fn(manager: *mut c_void),
}

/// A refcounted, immutable tensor in DLPack layout.
///
/// Create one with [`Tensor::from_vec`] or [`Tensor::from_bytes`] (or, with the `candle` feature,
/// from a `candle_core::Tensor` without copying).
#[repr(C)]
#[derive(StableAbi)]
pub struct Tensor {
    dl: DLTensor,
    /// DLPack flags ([`FLAG_READ_ONLY`], ...).
    flags: u64,
    /// When the data may be read.
    sync: SyncPoint,
    manager: *mut c_void,
    vtable: &'static TensorVTable,
}

// SAFETY: the memory is immutable once the tensor exists and the refcount is atomic; the manager
// of every tensor made by this crate is `Send + Sync`.
unsafe impl Send for Tensor {}
// SAFETY: see `Send`.
unsafe impl Sync for Tensor {}

impl Clone for Tensor {
    fn clone(&self) -> Self {
        // SAFETY: `manager` is live while `self` is, and `retain` belongs to its creator.
        unsafe { (self.vtable.retain)(self.manager) };
        Tensor {
            dl: DLTensor { ..self.dl },
            flags: self.flags,
            sync: self.sync,
            manager: self.manager,
            vtable: self.vtable,
        }
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        // SAFETY: each `Tensor` value holds exactly one reference.
        unsafe { (self.vtable.release)(self.manager) }
    }
}

/// Element types that [`Tensor::from_vec`] accepts.
pub trait Element: Copy + Send + Sync + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(impl Element for $t { const DTYPE: DType = DType::$d; })*};
}
element!(f32 => F32, f64 => F64, u8 => U8, u32 => U32, i64 => I64);

/// The manager behind every tensor this crate creates: a refcount, the shape and strides the
/// descriptor points into, and whatever keeps the data alive.
struct Manager {
    refs: AtomicUsize,
    _shape: Box<[i64]>,
    _strides: Box<[i64]>,
    keep: Box<dyn std::any::Any + Send + Sync>,
}

unsafe extern "C" fn manager_retain(manager: *mut c_void) {
    // SAFETY: `manager` came from `Box::into_raw` in `Tensor::from_raw_parts` and is live.
    let m = unsafe { &*(manager as *const Manager) };
    m.refs.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn manager_release(manager: *mut c_void) {
    // SAFETY: as in `manager_retain`.
    let m = unsafe { &*(manager as *const Manager) };
    if m.refs.fetch_sub(1, Ordering::Release) == 1 {
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: this was the last reference.
        drop(unsafe { Box::from_raw(manager as *mut Manager) });
    }
}

static MANAGER_VTABLE: TensorVTable = TensorVTable {
    retain: manager_retain,
    release: manager_release,
};

/// Errors from building or reading a tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorError(pub String);

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TensorError {}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        // Saturating: callers check that real shapes fit (`Tensor::fits`); a shape that does not
        // must never panic here.
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1].max(1));
    }
    strides
}

impl Tensor {
    /// Whether `shape` can describe a tensor: every dimension and the product of all of them
    /// (zeros counted as ones, as strides see them) fit an `i64`.
    pub fn fits(shape: &[usize]) -> bool {
        shape
            .iter()
            .try_fold(1i64, |acc, &d| {
                acc.checked_mul(i64::try_from(d.max(1)).ok()?)
            })
            .is_some()
    }
}

fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// Wraps memory kept alive by `keep`.
    ///
    /// # Safety
    /// `data` must point to memory that stays valid and unmodified while `keep` lives, and every
    /// element addressed by `shape`, `strides` and `byte_offset` must lie inside it.
    pub unsafe fn from_raw_parts(
        data: *const u8,
        dtype: DType,
        shape: &[usize],
        strides: Option<&[i64]>,
        byte_offset: u64,
        device: DLDevice,
        keep: Box<dyn std::any::Any + Send + Sync>,
    ) -> Tensor {
        let mut shape: Box<[i64]> = shape.iter().map(|&d| d as i64).collect();
        let mut strides: Box<[i64]> = match strides {
            Some(s) => s.into(),
            None => contiguous_strides(&shape).into(),
        };
        let (code, bits) = dtype.dlpack();
        let dl = DLTensor {
            data: data as *mut c_void,
            device,
            ndim: shape.len() as i32,
            dtype: DLDataType {
                code,
                bits,
                lanes: 1,
            },
            shape: shape.as_mut_ptr(),
            strides: strides.as_mut_ptr(),
            byte_offset,
        };
        let manager = Box::new(Manager {
            refs: AtomicUsize::new(1),
            _shape: shape,
            _strides: strides,
            keep,
        });
        Tensor {
            dl,
            flags: FLAG_READ_ONLY,
            sync: SyncPoint::READY,
            manager: Box::into_raw(manager) as *mut c_void,
            vtable: &MANAGER_VTABLE,
        }
    }

    /// A tensor over a buffer of the host's GPU service (compact, row-major): `data` holds the
    /// handle, not an address, and `keep` is dropped with the last copy (the host releases its
    /// buffer reference there). Only the host's GPU service makes these; plugins ask it with
    /// [`GpuService::tensor`](crate::gpu::GpuService::tensor).
    ///
    /// # Safety
    /// `keep` must hold a reference to `buffer` for as long as it lives, and `shape` must fit the
    /// buffer and [`Tensor::fits`]: consumers trust both.
    pub unsafe fn from_gpu_buffer(
        buffer: crate::gpu::GpuBuffer,
        dtype: DType,
        shape: &[usize],
        keep: Box<dyn std::any::Any + Send + Sync>,
    ) -> Tensor {
        // SAFETY: the device is not the CPU, so nothing in this crate dereferences `data`; every
        // byte view checks the device first.
        unsafe {
            Tensor::from_raw_parts(
                buffer.0 as usize as *const u8,
                dtype,
                shape,
                None,
                0,
                DLDevice::WEBGPU,
                keep,
            )
        }
    }

    /// The GPU service buffer of a device tensor, when it is one (compact and from byte 0, as
    /// the service makes them).
    pub fn gpu_buffer(&self) -> Option<crate::gpu::GpuBuffer> {
        (self.dl.device.device_type == DLDevice::WEBGPU_TYPE
            && self.dl.byte_offset == 0
            && self.is_contiguous())
        .then_some(crate::gpu::GpuBuffer(self.dl.data as usize as u64))
    }

    /// A CPU tensor owning `data`, compact row-major.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor, TensorError> {
        let n = element_count(shape).ok_or_else(|| TensorError("shape overflows".into()))?;
        if n != data.len() {
            return Err(TensorError(format!(
                "shape {shape:?} needs {n} elements, got {}",
                data.len()
            )));
        }
        let ptr = data.as_ptr() as *const u8;
        // SAFETY: the Vec's heap buffer does not move when the Vec is boxed, and it is kept alive
        // and never mutated by the manager.
        Ok(unsafe {
            Tensor::from_raw_parts(ptr, T::DTYPE, shape, None, 0, DLDevice::CPU, Box::new(data))
        })
    }

    /// A CPU tensor from raw little-endian bytes of `dtype`, compact row-major.
    pub fn from_bytes(
        bytes: Vec<u8>,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Tensor, TensorError> {
        let n = element_count(shape).ok_or_else(|| TensorError("shape overflows".into()))?;
        if n.checked_mul(dtype.size()) != Some(bytes.len()) {
            return Err(TensorError(format!(
                "shape {shape:?} of {dtype} needs {} bytes, got {}",
                n * dtype.size(),
                bytes.len()
            )));
        }
        if dtype.size() > 1 && !(bytes.as_ptr() as usize).is_multiple_of(dtype.size()) {
            // A Vec<u8> is only byte-aligned in principle; re-home the data in aligned storage.
            let words: Vec<u64> = bytes
                .chunks(8)
                .map(|c| {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    u64::from_ne_bytes(w)
                })
                .collect();
            let ptr = words.as_ptr() as *const u8;
            // SAFETY: as in `from_vec`; u64 storage is aligned for every supported dtype.
            return Ok(unsafe {
                Tensor::from_raw_parts(ptr, dtype, shape, None, 0, DLDevice::CPU, Box::new(words))
            });
        }
        let ptr = bytes.as_ptr();
        // SAFETY: as in `from_vec`.
        Ok(unsafe {
            Tensor::from_raw_parts(ptr, dtype, shape, None, 0, DLDevice::CPU, Box::new(bytes))
        })
    }

    /// The raw DLPack descriptor.
    pub fn dl(&self) -> &DLTensor {
        &self.dl
    }

    /// DLPack flags.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// When the data may be read.
    pub fn sync(&self) -> SyncPoint {
        self.sync
    }

    /// The same tensor with a sync point the producer recorded after its last write.
    pub fn with_sync(mut self, sync: SyncPoint) -> Tensor {
        self.sync = sync;
        self
    }

    /// What keeps the data alive, when this tensor was made by this very library (its manager
    /// is this copy of the crate's) and the keeper is a `T`. Lets a library take back its own
    /// tensors without copying them (a candle tensor exported and handed back by the host).
    pub fn local_owner<T: 'static>(&self) -> Option<&T> {
        if !std::ptr::eq(self.vtable, &MANAGER_VTABLE) {
            return None;
        }
        // SAFETY: the vtable is this library's, so `manager` is a live `Manager` made here.
        let m = unsafe { &*(self.manager as *const Manager) };
        m.keep.downcast_ref::<T>()
    }

    /// Sizes of each dimension.
    pub fn shape(&self) -> Vec<usize> {
        self.shape_i64()
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect()
    }

    fn shape_i64(&self) -> &[i64] {
        if self.dl.ndim <= 0 || self.dl.shape.is_null() {
            return &[];
        }
        // SAFETY: the manager owns `ndim` sizes at `shape`.
        unsafe { std::slice::from_raw_parts(self.dl.shape, self.dl.ndim as usize) }
    }

    /// Strides in elements (computed for compact tensors with null strides).
    pub fn strides(&self) -> Vec<i64> {
        if self.dl.strides.is_null() {
            return contiguous_strides(self.shape_i64());
        }
        // SAFETY: the manager owns `ndim` strides at `strides`.
        unsafe { std::slice::from_raw_parts(self.dl.strides, self.dl.ndim.max(0) as usize) }
            .to_vec()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dl.ndim.max(0) as usize
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// Element type, if it is one LatentFlow supports.
    pub fn dtype(&self) -> Option<DType> {
        if self.dl.dtype.lanes != 1 {
            return None;
        }
        DType::from_dlpack(self.dl.dtype.code, self.dl.dtype.bits)
    }

    /// Where the memory lives.
    pub fn device(&self) -> DLDevice {
        self.dl.device
    }

    /// Whether the elements are laid out compact and row-major.
    pub fn is_contiguous(&self) -> bool {
        self.dl.strides.is_null() || {
            let shape = self.shape_i64();
            let expected = contiguous_strides(shape);
            self.strides()
                .iter()
                .zip(&expected)
                .zip(shape)
                .all(|((s, e), d)| *d <= 1 || s == e)
        }
    }

    /// The elements' bytes, when the tensor is a compact CPU tensor.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        let dtype = self.dtype()?;
        if self.dl.device.device_type != DLDevice::CPU.device_type || !self.is_contiguous() {
            return None;
        }
        let len = self.numel() * dtype.size();
        if len == 0 {
            return Some(&[]);
        }
        // SAFETY: the manager keeps `len` bytes alive from `data + byte_offset`.
        Some(unsafe {
            std::slice::from_raw_parts(
                (self.dl.data as *const u8).add(self.dl.byte_offset as usize),
                len,
            )
        })
    }

    /// A compact copy of the elements' bytes (gathers strided CPU tensors).
    pub fn to_contiguous_bytes(&self) -> Result<Vec<u8>, TensorError> {
        if let Some(b) = self.as_bytes() {
            return Ok(b.to_vec());
        }
        let dtype = self
            .dtype()
            .ok_or_else(|| TensorError("unsupported element type".into()))?;
        if self.dl.device.device_type != DLDevice::CPU.device_type {
            return Err(TensorError(match self.dl.device.device_type {
                DLDevice::WEBGPU_TYPE => {
                    "tensor lives on the GPU; bring it back with gpu.download first".to_string()
                }
                t => format!("tensor lives on device type {t}, not the CPU"),
            }));
        }
        let shape = self.shape();
        let strides = self.strides();
        let es = dtype.size();
        let mut out = Vec::with_capacity(self.numel() * es);
        let base = unsafe { (self.dl.data as *const u8).add(self.dl.byte_offset as usize) };
        let mut index = vec![0usize; shape.len()];
        for _ in 0..self.numel() {
            let off: i64 = index
                .iter()
                .zip(&strides)
                .map(|(&i, &s)| i as i64 * s)
                .sum();
            // SAFETY: every index is inside the shape, so the element is inside the allocation.
            let src =
                unsafe { std::slice::from_raw_parts(base.offset(off as isize * es as isize), es) };
            out.extend_from_slice(src);
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(out)
    }

    /// The elements as `f32`, converting from any float or integer element type.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, TensorError> {
        let dtype = self
            .dtype()
            .ok_or_else(|| TensorError("unsupported element type".into()))?;
        let bytes = self.to_contiguous_bytes()?;
        let out = match dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_ne_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            DType::U8 => bytes.iter().map(|&b| b as f32).collect(),
            DType::U32 => bytes
                .chunks_exact(4)
                .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            DType::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_ne_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32())
                .collect(),
        };
        Ok(out)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dtype = self.dtype().map(|d| d.name()).unwrap_or("?");
        write!(f, "Tensor({dtype}, {:?})", self.shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_and_last_drop_frees() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let u = t.clone();
        drop(t);
        assert_eq!(u.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(u.shape(), vec![2, 2]);
        assert!(u.is_contiguous());
    }

    #[test]
    fn rejects_wrong_element_count() {
        assert!(Tensor::from_vec(vec![1.0f32; 3], &[2, 2]).is_err());
    }

    #[test]
    fn strided_gather() {
        let data = vec![0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
        let keep = data.clone();
        let ptr = keep.as_ptr() as *const u8;
        // Transposed view of a 2x3 matrix: shape 3x2, strides (1, 3).
        let t = unsafe {
            Tensor::from_raw_parts(
                ptr,
                DType::F32,
                &[3, 2],
                Some(&[1, 3]),
                0,
                DLDevice::CPU,
                Box::new(keep),
            )
        };
        assert!(!t.is_contiguous());
        assert_eq!(t.to_f32_vec().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        drop(data);
    }
}
