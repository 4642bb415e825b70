//! The plugin-facing table over the service ([`GpuService`] of the plugin API).

use std::sync::Arc;

use latentflow_plugin_api::abi_stable::sabi_trait::TD_Opaque;
use latentflow_plugin_api::abi_stable::std_types::{RArc, RResult, RSlice, RStr, RString, RVec};
use latentflow_plugin_api::gpu::{GpuBinding, GpuBuffer, GpuGroups, GpuKernel, GpuLimits, GpuRef};
use latentflow_plugin_api::tensor::DLDataType;
use latentflow_plugin_api::{DType, GpuService, GpuService_TO, NodeError, Tensor};

use crate::error::GpuError;
use crate::service::Service;

struct Table(Arc<Service>);

/// The reference a device tensor holds; dropping the tensor's last copy releases it.
struct TensorRef {
    service: Arc<Service>,
    handle: u64,
}

impl Drop for TensorRef {
    fn drop(&mut self) {
        self.service.release(self.handle);
    }
}

fn r<T>(v: Result<T, GpuError>) -> RResult<T, NodeError> {
    v.map_err(NodeError::from).into()
}

impl GpuService for Table {
    fn describe(&self) -> RString {
        self.0.adapter().to_string().into()
    }

    fn limits(&self) -> GpuLimits {
        let l = self.0.limits();
        GpuLimits {
            max_buffer_bytes: l.max_buffer_size,
            max_binding_bytes: l.max_storage_buffer_binding_size,
            max_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            max_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_workgroup_memory_bytes: l.max_compute_workgroup_storage_size,
        }
    }

    fn buffer_create(&self, bytes: u64) -> RResult<GpuBuffer, NodeError> {
        r(self.0.create(bytes).map(GpuBuffer))
    }

    fn buffer_size(&self, buffer: GpuBuffer) -> RResult<u64, NodeError> {
        r(self.0.size(buffer.0))
    }

    fn buffer_write(
        &self,
        buffer: GpuBuffer,
        offset: u64,
        data: RSlice<'_, u8>,
    ) -> RResult<(), NodeError> {
        r(self.0.write(buffer.0, offset, data.as_slice()))
    }

    fn buffer_read(
        &self,
        buffer: GpuBuffer,
        offset: u64,
        bytes: u64,
    ) -> RResult<RVec<u8>, NodeError> {
        r(self.0.read(buffer.0, offset, bytes).map(RVec::from))
    }

    fn buffer_retain(&self, buffer: GpuBuffer) -> RResult<(), NodeError> {
        r(self.0.retain(buffer.0))
    }

    fn buffer_release(&self, buffer: GpuBuffer) {
        self.0.release(buffer.0)
    }

    fn compile(&self, source: RStr<'_>, entry: RStr<'_>) -> RResult<GpuKernel, NodeError> {
        r(self
            .0
            .compile(source.as_str(), entry.as_str())
            .map(GpuKernel))
    }

    fn dispatch(
        &self,
        kernel: GpuKernel,
        bindings: RSlice<'_, GpuBinding>,
        groups: GpuGroups,
    ) -> RResult<(), NodeError> {
        let b: Vec<(u32, u64)> = bindings.iter().map(|b| (b.binding, b.buffer.0)).collect();
        r(self
            .0
            .dispatch(kernel.0, &b, [groups.x, groups.y, groups.z]))
    }

    fn wait(&self) -> RResult<(), NodeError> {
        r(self.0.wait())
    }

    fn tensor(
        &self,
        buffer: GpuBuffer,
        dtype: DLDataType,
        shape: RSlice<'_, u64>,
    ) -> RResult<Tensor, NodeError> {
        r(device_tensor(&self.0, buffer.0, dtype, shape.as_slice()))
    }
}

fn device_tensor(
    service: &Arc<Service>,
    handle: u64,
    dtype: DLDataType,
    shape: &[u64],
) -> Result<Tensor, GpuError> {
    let dt = (dtype.lanes == 1)
        .then(|| DType::from_dlpack(dtype.code, dtype.bits))
        .flatten()
        .ok_or_else(|| {
            GpuError::Limit(format!(
                "element type (code {}, {} bits, {} lanes) is not one LatentFlow supports",
                dtype.code, dtype.bits, dtype.lanes
            ))
        })?;
    let dims: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()
        .filter(|d: &Vec<usize>| Tensor::fits(d))
        .ok_or_else(|| GpuError::Limit(format!("shape {shape:?} is too large to address")))?;
    let bytes = dims
        .iter()
        .try_fold(dt.size() as u64, |acc, &d| acc.checked_mul(d as u64));
    let size = service.size(handle)?;
    match bytes {
        Some(b) if b <= size => {}
        _ => {
            return Err(GpuError::Limit(format!(
            "a {dt:?} tensor of shape {shape:?} does not fit GPU buffer {handle:#x} ({size} bytes)"
        )))
        }
    }
    service.retain(handle)?;
    let keep = TensorRef {
        service: service.clone(),
        handle,
    };
    // SAFETY: `keep` holds the reference retained above; the shape fits the buffer (checked
    // against its size) and `Tensor::fits`.
    Ok(unsafe { Tensor::from_gpu_buffer(GpuBuffer(handle), dt, &dims, Box::new(keep)) })
}

impl Service {
    /// The table plugins call, over this service.
    pub fn handle(self: &Arc<Self>) -> GpuRef {
        GpuService_TO::from_ptr(RArc::new(Table(self.clone())), TD_Opaque)
    }
}
