//! Buffers with owned references, tensors to and from the device, and kernel launches.

use latentflow_plugin_api::abi_stable::std_types::RResult;
use latentflow_plugin_api::gpu::{GpuBinding, GpuBuffer, GpuGroups, GpuLimits};
use latentflow_plugin_api::{DType, GpuRef, NodeError, Tensor};

/// Invocations per workgroup of the one-dimensional kernels.
pub(crate) const WORKGROUP: u32 = 256;

fn ok<T>(r: RResult<T, NodeError>) -> Result<T, NodeError> {
    r.into_result()
}

/// The host's GPU service with the helpers the kernels use.
pub struct Gpu {
    service: GpuRef,
    limits: GpuLimits,
}

/// A buffer reference owned by this side, released on drop.
pub(crate) struct Owned<'a> {
    gpu: &'a Gpu,
    pub(crate) buffer: GpuBuffer,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        self.gpu.service.buffer_release(self.buffer);
    }
}

impl Gpu {
    /// Wraps the host's service (from [`HostServices::gpu`](latentflow_plugin_api::HostServices::gpu)).
    pub fn new(service: GpuRef) -> Gpu {
        let limits = service.limits();
        Gpu { service, limits }
    }

    /// The adapter in one line.
    pub fn describe(&self) -> String {
        self.service.describe().into()
    }

    /// The device's limits.
    pub fn limits(&self) -> GpuLimits {
        self.limits
    }

    /// A zero-filled buffer of `bytes` bytes, checked against the device's binding limit (every
    /// buffer made here is bound whole by some kernel).
    pub(crate) fn alloc(&self, bytes: u64) -> Result<Owned<'_>, NodeError> {
        if bytes > self.limits.max_binding_bytes {
            return Err(NodeError::too_large(format!(
                "a GPU tensor of {bytes} bytes is over this device's largest binding ({} bytes)",
                self.limits.max_binding_bytes
            )));
        }
        Ok(Owned {
            gpu: self,
            buffer: ok(self.service.buffer_create(bytes))?,
        })
    }

    /// A small parameter buffer holding `words` (u32 or f32 bit patterns).
    pub(crate) fn params(&self, words: &[u32]) -> Result<Owned<'_>, NodeError> {
        let b = self.alloc(4 * words.len() as u64)?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        ok(self
            .service
            .buffer_write(b.buffer, 0, bytes.as_slice().into()))?;
        Ok(b)
    }

    /// Wraps an owned buffer into a device tensor (the tensor takes its own reference).
    pub(crate) fn tensor(&self, b: &Owned<'_>, shape: &[usize]) -> Result<Tensor, NodeError> {
        let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        ok(self
            .service
            .tensor(b.buffer, DType::F32.into(), dims.as_slice().into()))
    }

    /// Compiles (cached by the host) and dispatches `entry` of `source`.
    pub(crate) fn launch(
        &self,
        source: &str,
        entry: &str,
        bindings: &[(u32, GpuBuffer)],
        groups: GpuGroups,
    ) -> Result<(), NodeError> {
        let kernel = ok(self.service.compile(source.into(), entry.into()))?;
        let b: Vec<GpuBinding> = bindings
            .iter()
            .map(|&(binding, buffer)| GpuBinding { binding, buffer })
            .collect();
        ok(self.service.dispatch(kernel, b.as_slice().into(), groups))
    }

    /// Workgroups for `count` one-dimensional items: x up to the device's limit, y beyond.
    pub(crate) fn groups_for(&self, count: u64) -> Result<GpuGroups, NodeError> {
        let max = u64::from(self.limits.max_workgroups_per_dimension.max(1));
        let y = count.div_ceil(max).max(1);
        let x = count.div_ceil(y).max(1);
        if y > max {
            return Err(NodeError::too_large(format!(
                "{count} workgroups are more than this device can dispatch"
            )));
        }
        Ok(GpuGroups {
            x: x as u32,
            y: y as u32,
            z: 1,
        })
    }

    /// The buffer of an f32 device tensor, and its element count.
    pub(crate) fn input(&self, t: &Tensor, what: &str) -> Result<GpuBuffer, NodeError> {
        let b = t.gpu_buffer().ok_or_else(|| {
            if t.device() == latentflow_plugin_api::DLDevice::WEBGPU {
                NodeError::invalid(format!(
                    "{what} is a strided or offset view of a GPU buffer; the kernels take compact tensors"
                ))
            } else {
                NodeError::invalid(format!(
                    "{what} is not on the GPU (device type {}); move it with gpu.upload first",
                    t.device().device_type
                ))
            }
        })?;
        if t.dtype() != Some(DType::F32) {
            return Err(NodeError::invalid(format!(
                "{what} is {}, and the GPU kernels take f32",
                t.dtype().map_or("an unknown type", DType::name)
            )));
        }
        Ok(b)
    }

    /// A CPU tensor's f32 values on the device (other element types are converted to f32).
    pub fn upload(&self, t: &Tensor) -> Result<Tensor, NodeError> {
        if t.gpu_buffer().is_some() {
            return Ok(t.clone());
        }
        let values = t.to_f32_vec().map_err(|e| NodeError::invalid(e.0))?;
        let shape = t.shape();
        let b = self.alloc(4 * values.len() as u64)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        ok(self
            .service
            .buffer_write(b.buffer, 0, bytes.as_slice().into()))?;
        self.tensor(&b, &shape)
    }

    /// A device tensor's values back on the CPU.
    pub fn download(&self, t: &Tensor) -> Result<Tensor, NodeError> {
        let b = self.input(t, "the tensor")?;
        let bytes = ok(self.service.buffer_read(b, 0, 4 * t.numel() as u64))?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::from_vec(values, &t.shape()).map_err(|e| NodeError::failed(e.0))
    }

    /// A new device tensor of `shape`, written by `f` (given its buffer).
    pub(crate) fn output(
        &self,
        shape: &[usize],
        f: impl FnOnce(GpuBuffer) -> Result<(), NodeError>,
    ) -> Result<Tensor, NodeError> {
        let n = shape
            .iter()
            .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| NodeError::too_large(format!("shape {shape:?} is too large")))?;
        let out = self.alloc(n)?;
        f(out.buffer)?;
        self.tensor(&out, shape)
    }
}
