//! The compute devices this process has: the CPU always, the GPU device service when an adapter
//! is found. The service is opened on first use and shared by every node of every run.

use std::sync::{Arc, OnceLock};

use latentflow_gpu::{OpenOptions, Service};
use latentflow_plugin_api::abi_stable::std_types::RResult;
use latentflow_plugin_api::{GpuRef, NodeError};

static GPU: OnceLock<Result<Arc<Service>, String>> = OnceLock::new();

/// The process's GPU device service, opened on the first call (the adapter named by
/// `LATENTFLOW_WGPU_ADAPTER`, else the best one). An error says what was tried and found.
pub fn gpu() -> Result<Arc<Service>, String> {
    GPU.get_or_init(|| Service::open(&OpenOptions::from_env()).map_err(|e| e.to_string()))
        .clone()
}

/// The GPU service as plugins receive it through the host services.
pub fn gpu_for_plugins() -> RResult<GpuRef, NodeError> {
    match gpu() {
        Ok(s) => RResult::ROk(s.handle()),
        Err(e) => RResult::RErr(NodeError::failed(e)),
    }
}

/// What a plugin running in an isolated worker gets: the device service lives in the host.
pub fn gpu_unavailable_isolated() -> RResult<GpuRef, NodeError> {
    RResult::RErr(NodeError::failed(
        "the GPU device service is not available to a plugin that runs in an isolated worker (`--isolate`); run that plugin in the host process",
    ))
}

/// One device, as `latentflow devices` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// How a graph names it: `cpu`, `wgpu`.
    pub name: String,
    /// What it is.
    pub detail: String,
    /// Whether the GPU device service would use it (the CPU is always usable).
    pub selected: bool,
}

/// The CPU and every Vulkan adapter, marking the one the GPU service opens.
pub fn list() -> Vec<DeviceInfo> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = vec![DeviceInfo {
        name: "cpu".into(),
        detail: format!("{} threads ({})", threads, std::env::consts::ARCH),
        selected: true,
    }];
    let chosen = gpu().ok().map(|s| s.adapter().clone());
    for a in Service::list_adapters() {
        out.push(DeviceInfo {
            name: "wgpu".into(),
            selected: chosen.as_ref() == Some(&a),
            detail: a.to_string(),
        });
    }
    out
}
