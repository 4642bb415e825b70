//! CUDA tensors across plugins (the `cuda` feature): candle CUDA tensors exported without a copy
//! as DLPack `kDLCUDA` tensors, and imported with one device-to-device copy, under the rule of
//! [`crate::tensor`]:
//!
//! 1. the producer records a CUDA event on its stream after its last write and puts it in the
//!    tensor's [`SyncPoint`]; the tensor keeps the candle tensor (its memory) and the event alive;
//! 2. the consumer makes its own stream wait on that event, then copies into memory candle owns
//!    (candle frees what it owns, so a borrowed pointer is never wrapped);
//! 3. the consumer waits for its copy to finish before it returns, so the host may release the
//!    input as soon as the call is over.
//!
//! Each plugin has its own `CudaDevice` on the process's one primary context; device pointers
//! are valid across them. Copies are counted like the CPU path's.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    result, sys, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType as CDType, Device, Storage};

use crate::error::NodeError;
use crate::sdk::stats;
use crate::tensor::{DLDevice, SyncKind, SyncPoint, Tensor};

/// DLPack's device type for CUDA memory.
pub const CUDA_TYPE: i32 = 2;

fn cuda_err(
    what: &str,
) -> impl Fn(candle_core::cuda_backend::cudarc::driver::DriverError) -> NodeError + '_ {
    move |e| NodeError::failed(format!("CUDA {what}: {e}"))
}

fn candle_err(e: candle_core::Error) -> NodeError {
    NodeError::failed(e.to_string())
}

/// What an exported tensor keeps alive: candle's tensor (its memory) and the event recorded after
/// its last write.
struct Exported {
    _tensor: candle_core::Tensor,
    _event: CudaEvent,
    stream: Arc<CudaStream>,
}

impl Drop for Exported {
    fn drop(&mut self) {
        // The last copy may be dropped on any host thread: bind the producer's context, so that
        // candle's stream-ordered free goes to the right device, and let the producer's queued
        // work finish before the memory can be reused.
        let ctx = self.stream.context();
        if ctx.bind_to_thread().is_err() || self.stream.synchronize().is_err() {
            // Nothing to report to: the tensor is gone either way.
        }
    }
}

fn base_ptr<T: CudaDType>(s: &CudaStorage, stream: &Arc<CudaStream>) -> Result<u64, NodeError> {
    let slice = s.as_cuda_slice::<T>().map_err(candle_err)?;
    let (ptr, _read) = slice.device_ptr(stream);
    Ok(ptr)
}

/// Exports a candle CUDA tensor without copying.
pub(crate) fn export(
    t: &candle_core::Tensor,
    dev: &CudaDevice,
    dtype: crate::types::DType,
) -> Result<Tensor, NodeError> {
    let stream = dev.cuda_stream();
    let (ptr, shape, strides, offset) = {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*storage else {
            return Err(NodeError::failed("a CUDA tensor without CUDA storage"));
        };
        let ptr = match t.dtype() {
            CDType::F32 => base_ptr::<f32>(cs, &stream)?,
            CDType::F16 => base_ptr::<half::f16>(cs, &stream)?,
            CDType::BF16 => base_ptr::<half::bf16>(cs, &stream)?,
            CDType::F64 => base_ptr::<f64>(cs, &stream)?,
            CDType::U8 => base_ptr::<u8>(cs, &stream)?,
            CDType::U32 => base_ptr::<u32>(cs, &stream)?,
            CDType::I64 => base_ptr::<i64>(cs, &stream)?,
            other => {
                return Err(NodeError::failed(format!(
                    "candle dtype {other:?} cannot cross the ABI"
                )))
            }
        };
        let strides: Vec<i64> = layout.stride().iter().map(|&s| s as i64).collect();
        (
            ptr,
            layout.dims().to_vec(),
            strides,
            (layout.start_offset() * dtype.size()) as u64,
        )
    };
    let event = stream
        .record_event(None)
        .map_err(cuda_err("event record"))?;
    let sync = SyncPoint {
        kind: SyncKind::CUDA_EVENT,
        device: DLDevice {
            device_type: CUDA_TYPE,
            device_id: stream.context().ordinal() as i32,
        },
        handle: event.cu_event() as u64,
        value: 0,
    };
    stats::add_exported();
    // SAFETY: `Exported` keeps candle's allocation alive for as long as the tensor; nothing in
    // this crate dereferences the device pointer on the CPU (byte views check the device).
    let out = unsafe {
        Tensor::from_raw_parts(
            ptr as usize as *const u8,
            dtype,
            &shape,
            Some(&strides),
            offset,
            sync.device,
            Box::new(Exported {
                _tensor: t.clone(),
                _event: event,
                stream: stream.clone(),
            }),
        )
    };
    Ok(out.with_sync(sync))
}

fn to_cdtype(d: crate::types::DType) -> CDType {
    use crate::types::DType as D;
    match d {
        D::F32 => CDType::F32,
        D::F16 => CDType::F16,
        D::BF16 => CDType::BF16,
        D::F64 => CDType::F64,
        D::U8 => CDType::U8,
        D::U32 => CDType::U32,
        D::I64 => CDType::I64,
    }
}

/// Makes `stream` wait until the producer's writes are done.
fn wait_for(t: &Tensor, stream: &CudaStream) -> Result<(), NodeError> {
    let s = t.sync();
    match s.kind {
        SyncKind::NONE => Ok(()),
        // SAFETY: the producer keeps the event alive as long as the tensor, which `t` holds.
        SyncKind::CUDA_EVENT => unsafe {
            result::stream::wait_event(
                stream.cu_stream(),
                s.handle as usize as sys::CUevent,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(cuda_err("stream wait")),
        // SAFETY: a stream handle in a sync point stays valid while its tensor lives.
        SyncKind::CUDA_STREAM => {
            unsafe { result::stream::synchronize(s.handle as usize as sys::CUstream) }
                .map_err(cuda_err("stream synchronisation"))
        }
        other => Err(NodeError::invalid(format!(
            "a CUDA tensor with a sync point of kind {} cannot be waited on",
            other.0
        ))),
    }
}

fn copy_in<T: CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    src: u64,
    len: usize,
    dev: &CudaDevice,
    stream: &Arc<CudaStream>,
) -> Result<CudaStorage, NodeError> {
    // SAFETY: every element is written by the copy below before anything reads it.
    let mut dst: CudaSlice<T> =
        unsafe { stream.alloc::<T>(len) }.map_err(cuda_err("allocation"))?;
    {
        let (dst_ptr, _write) = dst.device_ptr_mut(stream);
        // SAFETY: `src` points at `len` elements of `T` on this context's device (checked by the
        // caller from the tensor's shape, dtype and device) that stay alive while the input
        // tensor does; `dst` has room for them.
        unsafe {
            result::memcpy_dtod_async(
                dst_ptr,
                src,
                len * std::mem::size_of::<T>(),
                stream.cu_stream(),
            )
        }
        .map_err(cuda_err("device-to-device copy"))?;
    }
    // Rule 3: done before returning, so the input may be released.
    stream
        .synchronize()
        .map_err(cuda_err("stream synchronisation"))?;
    Ok(CudaStorage::wrap_cuda_slice(dst, dev.clone()))
}

/// Imports a `kDLCUDA` tensor onto `device` with one device-to-device copy.
pub(crate) fn import(t: &Tensor, device: &Device) -> Result<candle_core::Tensor, NodeError> {
    let Device::Cuda(dev) = device else {
        return Err(NodeError::invalid(
            "a CUDA tensor given to a model on the CPU; this build copies between devices only on the GPU",
        ));
    };
    let at = t.device();
    let stream = dev.cuda_stream();
    // candle's streams are per-thread streams: the raw waits below act on the context current on
    // this thread, so make it this device's first.
    stream
        .context()
        .bind_to_thread()
        .map_err(cuda_err("context"))?;
    let ordinal = stream.context().ordinal();
    if at.device_id as usize != ordinal {
        return Err(NodeError::invalid(format!(
            "a tensor on cuda:{} given to a model on cuda:{ordinal}",
            at.device_id
        )));
    }
    if !t.is_contiguous() {
        return Err(NodeError::invalid(
            "a strided CUDA tensor cannot be imported; make it contiguous first",
        ));
    }
    let dtype = t
        .dtype()
        .ok_or_else(|| NodeError::invalid("tensor has an unsupported element type"))?;
    wait_for(t, &stream)?;
    let src = t.dl().data as usize as u64 + t.dl().byte_offset;
    let n = t.numel();
    if n == 0 {
        return candle_core::Tensor::zeros(t.shape(), to_cdtype(dtype), device).map_err(candle_err);
    }
    use crate::types::DType as D;
    let storage = match dtype {
        D::F32 => copy_in::<f32>(src, n, dev, &stream)?,
        D::F16 => copy_in::<half::f16>(src, n, dev, &stream)?,
        D::BF16 => copy_in::<half::bf16>(src, n, dev, &stream)?,
        D::F64 => copy_in::<f64>(src, n, dev, &stream)?,
        D::U8 => copy_in::<u8>(src, n, dev, &stream)?,
        D::U32 => copy_in::<u32>(src, n, dev, &stream)?,
        D::I64 => copy_in::<i64>(src, n, dev, &stream)?,
    };
    stats::add_copied((n * dtype.size()) as u64);
    Ok(candle_core::Tensor::from_storage(
        Storage::Cuda(storage),
        t.shape(),
        BackpropOp::none(),
        false,
    ))
}
