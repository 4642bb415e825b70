//! Finding an adapter and opening the device.

use crate::error::GpuError;

/// How to pick the adapter.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Only adapters whose name contains this (case-insensitive), e.g. `llvmpipe` or `nvidia`.
    /// `LATENTFLOW_WGPU_ADAPTER` sets it from the environment.
    pub adapter: Option<String>,
}

impl OpenOptions {
    /// The options the environment asks for (`LATENTFLOW_WGPU_ADAPTER`).
    pub fn from_env() -> OpenOptions {
        OpenOptions {
            adapter: std::env::var("LATENTFLOW_WGPU_ADAPTER")
                .ok()
                .filter(|s| !s.trim().is_empty()),
        }
    }
}

/// One adapter, as listed for users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    /// The adapter's name (`llvmpipe (LLVM 15.0.6, 256 bits)`, `NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// `Vulkan`, ...
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu`, ...
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}, driver {})",
            self.name, self.backend, self.device_type, self.driver
        )
    }
}

pub(crate) fn summary(info: &wgpu::AdapterInfo) -> AdapterSummary {
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
    }
}

/// Real GPUs before software ones.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

pub(crate) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    wgpu::Instance::new(desc)
}

/// The adapters this machine has (Vulkan), best first.
pub(crate) fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    all.sort_by_key(|a| rank(a.get_info().device_type));
    all
}

/// Picks the adapter the options ask for and opens its device with the adapter's own limits.
pub(crate) fn open(
    options: &OpenOptions,
) -> Result<(wgpu::Adapter, wgpu::Device, wgpu::Queue), GpuError> {
    let instance = instance();
    let all = adapters(&instance);
    let found: Vec<String> = all
        .iter()
        .map(|a| summary(&a.get_info()).to_string())
        .collect();
    let wanted = options.adapter.as_deref().map(str::to_lowercase);
    let Some(adapter) = all.into_iter().find(|a| {
        wanted
            .as_ref()
            .is_none_or(|w| a.get_info().name.to_lowercase().contains(w))
    }) else {
        let looked = match &options.adapter {
            Some(w) => format!("no Vulkan adapter named like `{w}` (LATENTFLOW_WGPU_ADAPTER)"),
            None => "no Vulkan adapter".to_string(),
        };
        let have = if found.is_empty() {
            "none found; install a Vulkan driver (on Debian, `apt-get install mesa-vulkan-drivers libvulkan1` gives the software one, lavapipe)".to_string()
        } else {
            format!("found: {}", found.join("; "))
        };
        return Err(GpuError::NoAdapter {
            tried: format!("{looked}; {have}"),
        });
    };
    let info = adapter.get_info();
    let desc = wgpu::DeviceDescriptor {
        label: Some("latentflow"),
        required_limits: adapter.limits(),
        ..Default::default()
    };
    let (device, queue) =
        pollster::block_on(adapter.request_device(&desc)).map_err(|e| GpuError::OpenDevice {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
    Ok((adapter, device, queue))
}
