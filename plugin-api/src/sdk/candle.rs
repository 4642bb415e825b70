//! Conversions between [`Tensor`] and `candle_core::Tensor`.
//!
//! Export ([`from_candle`]) does not copy CPU tensors: the FFI tensor keeps a clone of the candle
//! tensor alive and points at its storage. Never export a tensor you will later mutate in place
//! (`slice_set`, `Var::set`, ...). Import ([`to_candle`]) takes back, without copying, a tensor
//! this same plugin exported (a wrapper handing its output to the model next to it); any other
//! tensor is copied, because candle owns its storage as a `Vec` and cannot borrow foreign
//! memory. Copies are counted in the plugin's stats.

use candle_core::{DType as CDType, Device, Storage};

use crate::error::NodeError;
use crate::sdk::{stats, Param, Params};
use crate::tensor::{DLDevice, Tensor};
use crate::types::DType;

fn to_our_dtype(d: CDType) -> Result<DType, NodeError> {
    Ok(match d {
        CDType::F32 => DType::F32,
        CDType::F16 => DType::F16,
        CDType::BF16 => DType::BF16,
        CDType::F64 => DType::F64,
        CDType::U8 => DType::U8,
        CDType::U32 => DType::U32,
        CDType::I64 => DType::I64,
        other => {
            return Err(NodeError::failed(format!(
                "candle dtype {other:?} cannot cross the ABI"
            )))
        }
    })
}

fn to_candle_dtype(d: DType) -> CDType {
    match d {
        DType::F32 => CDType::F32,
        DType::F16 => CDType::F16,
        DType::BF16 => CDType::BF16,
        DType::F64 => CDType::F64,
        DType::U8 => CDType::U8,
        DType::U32 => CDType::U32,
        DType::I64 => CDType::I64,
    }
}

/// The `dtype` parameter of model loaders: the dtype a model computes in.
pub fn dtype_param() -> Param {
    Param::choice("dtype", &["f32", "bf16"])
        .default("f32")
        .doc("compute dtype: f32 (the reference's numbers) or bf16 (half the memory; weights stored in bf16 are then held as they are, and results differ from f32 by about 1e-2)")
}

/// The compute dtype named by a node's [`dtype_param`].
pub fn compute_dtype(p: &Params) -> Result<CDType, NodeError> {
    match p.str("dtype")? {
        "f32" => Ok(CDType::F32),
        "bf16" => Ok(CDType::BF16),
        other => Err(NodeError::invalid(format!("dtype `{other}`: f32 or bf16"))),
    }
}

/// The candle device named by a node's `device` parameter ([`Param::device`]): the CPU, or a
/// CUDA device in a `cuda` build; other names are refused with the reason (the host's
/// validation refuses them first, from the node's declared devices).
pub fn compute_device(p: &Params) -> Result<candle_core::Device, NodeError> {
    let name = p.str(crate::device::DEVICE_PARAM)?;
    let spec: crate::DeviceSpec = name.parse().map_err(NodeError::invalid)?;
    match spec {
        crate::DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
        #[cfg(feature = "cuda")]
        crate::DeviceSpec::Cuda(n) => candle_core::Device::new_cuda(n as usize)
            .map_err(|e| NodeError::failed(format!("`{spec}`: {e}"))),
        #[cfg(not(feature = "cuda"))]
        crate::DeviceSpec::Cuda(_) => Err(NodeError::invalid(format!(
            "`{spec}`: this plugin was built without CUDA"
        ))),
        crate::DeviceSpec::Wgpu => Err(NodeError::invalid(
            "candle models do not run on the wgpu device service; the gpu.* nodes do",
        )),
    }
}

fn candle_err(e: candle_core::Error) -> NodeError {
    NodeError::failed(e.to_string())
}

/// Exports a candle tensor. CPU tensors are shared without copying; device tensors are copied to
/// the CPU first (device tensors cross the ABI in a later version).
pub fn from_candle(t: &candle_core::Tensor) -> Result<Tensor, NodeError> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = t.device() {
        return super::cuda::export(t, dev, to_our_dtype(t.dtype())?);
    }
    let t = if t.device().is_cpu() {
        t.clone()
    } else {
        t.to_device(&Device::Cpu).map_err(candle_err)?
    };
    let dtype = to_our_dtype(t.dtype())?;
    let (ptr, shape, strides, offset) = {
        let (storage, layout) = t.storage_and_layout();
        let ptr = match &*storage {
            Storage::Cpu(cpu) => match cpu {
                candle_core::CpuStorage::F32(v) => v.as_ptr() as *const u8,
                candle_core::CpuStorage::F16(v) => v.as_ptr() as *const u8,
                candle_core::CpuStorage::BF16(v) => v.as_ptr() as *const u8,
                candle_core::CpuStorage::F64(v) => v.as_ptr() as *const u8,
                candle_core::CpuStorage::U8(v) => v.as_ptr(),
                candle_core::CpuStorage::U32(v) => v.as_ptr() as *const u8,
                candle_core::CpuStorage::I64(v) => v.as_ptr() as *const u8,
                _ => return Err(NodeError::failed("unsupported candle storage dtype")),
            },
            _ => return Err(NodeError::failed("tensor is not on the CPU after the copy")),
        };
        let strides: Vec<i64> = layout.stride().iter().map(|&s| s as i64).collect();
        (
            ptr,
            layout.dims().to_vec(),
            strides,
            (layout.start_offset() * dtype.size()) as u64,
        )
    };
    stats::add_exported();
    // SAFETY: the clone of `t` kept by the manager keeps candle's storage alive; candle tensors
    // are immutable unless mutated in place, which the module docs forbid for exported tensors.
    Ok(unsafe {
        Tensor::from_raw_parts(
            ptr,
            dtype,
            &shape,
            Some(&strides),
            offset,
            DLDevice::CPU,
            Box::new(t),
        )
    })
}

/// Imports a tensor into candle on `device`: the original candle tensor when this plugin made
/// it (no copy), else a copy.
pub fn to_candle(t: &Tensor, device: &Device) -> Result<candle_core::Tensor, NodeError> {
    #[cfg(feature = "cuda")]
    if t.device().device_type == super::cuda::CUDA_TYPE {
        return super::cuda::import(t, device);
    }
    if let Some(own) = t.local_owner::<candle_core::Tensor>() {
        if own.device().same_device(device) && own.dims() == t.shape().as_slice() {
            stats::add_reused();
            return Ok(own.clone());
        }
    }
    let dtype = t
        .dtype()
        .ok_or_else(|| NodeError::invalid("tensor has an unsupported element type"))?;
    let bytes = t.to_contiguous_bytes()?;
    stats::add_copied(bytes.len() as u64);
    candle_core::Tensor::from_raw_buffer(&bytes, to_candle_dtype(dtype), &t.shape(), device)
        .map_err(candle_err)
}

/// Imports a tensor as f32 on the CPU, the form most model code computes in (converted when it
/// is stored otherwise).
pub fn to_candle_f32(t: &Tensor) -> Result<candle_core::Tensor, NodeError> {
    to_candle(t, &Device::Cpu)?
        .to_dtype(candle_core::DType::F32)
        .map_err(candle_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy counters are process-wide: the tests that read them run one at a time.
    static COUNTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn round_trip_without_copy_on_export() {
        let _one = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
        let c = candle_core::Tensor::arange(0f32, 12f32, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let before = stats::snapshot();
        let t = from_candle(&c).unwrap();
        assert_eq!(t.shape(), vec![3, 4]);
        assert_eq!(stats::snapshot().bytes_copied_in, before.bytes_copied_in);
        let back = to_candle(&t, &Device::Cpu).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), c.to_vec2::<f32>().unwrap());
        // ABI v2: a plugin's own tensor comes back without a copy (see the next test).
    }

    #[test]
    fn own_tensors_come_back_without_a_copy() {
        let _one = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
        let c = candle_core::Tensor::arange(0f32, 6f32, &Device::Cpu).unwrap();
        let t = from_candle(&c).unwrap();
        let before = stats::snapshot();
        let back = to_candle(&t, &Device::Cpu).unwrap();
        assert_eq!(back.id(), c.id(), "the same candle tensor");
        assert_eq!(stats::snapshot().bytes_copied_in, before.bytes_copied_in);
        // A tensor made another way is copied.
        let other = Tensor::from_vec(vec![1f32, 2.0], &[2]).unwrap();
        let before = stats::snapshot();
        to_candle(&other, &Device::Cpu).unwrap();
        assert_eq!(
            stats::snapshot().bytes_copied_in,
            before.bytes_copied_in + 8
        );
    }

    #[test]
    fn transposed_view_exports_strides() {
        let _one = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
        let c = candle_core::Tensor::arange(0f32, 6f32, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap()
            .t()
            .unwrap();
        let t = from_candle(&c).unwrap();
        assert_eq!(t.shape(), vec![3, 2]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }
}
