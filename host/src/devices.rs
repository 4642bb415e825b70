//! The compute devices this process has: the CPU always, the GPU device service when an adapter
//! is found, CUDA devices when NVIDIA's driver is installed. The service is opened on first use
//! and shared by every node of every run; the CUDA driver is only asked what it has.

use std::sync::{Arc, OnceLock};

use latentflow_gpu::{OpenOptions, Service};
use latentflow_plugin_api::abi_stable::std_types::RResult;
use latentflow_plugin_api::{DeviceSpec, GpuRef, NodeError};

static GPU: OnceLock<Result<Arc<Service>, String>> = OnceLock::new();
static CUDA: OnceLock<Result<Vec<String>, String>> = OnceLock::new();

/// The CUDA devices' names, by ordinal, from NVIDIA's driver; an error says why there are none.
pub fn cuda() -> Result<Vec<String>, String> {
    CUDA.get_or_init(probe_cuda).clone()
}

fn probe_cuda() -> Result<Vec<String>, String> {
    type Init = unsafe extern "C" fn(u32) -> i32;
    type Count = unsafe extern "C" fn(*mut i32) -> i32;
    type Get = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type Name = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;
    // SAFETY: loading NVIDIA's driver library runs only its own initialisers.
    let lib = unsafe { libloading::Library::new("libcuda.so.1") }
        .map_err(|_| "no CUDA driver (libcuda.so.1 is not installed)".to_string())?;
    // The driver stays loaded for the process: unloading it after cuInit is not supported.
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    let missing = |what: &str| format!("the CUDA driver has no {what}");
    // SAFETY: the symbols have the CUDA driver API's C signatures (cuda.h); every pointer passed
    // is valid for the call and `name` has the length given.
    let names = unsafe {
        let init: libloading::Symbol<Init> = lib.get(b"cuInit\0").map_err(|_| missing("cuInit"))?;
        let count: libloading::Symbol<Count> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|_| missing("cuDeviceGetCount"))?;
        let get: libloading::Symbol<Get> = lib
            .get(b"cuDeviceGet\0")
            .map_err(|_| missing("cuDeviceGet"))?;
        let name: libloading::Symbol<Name> = lib
            .get(b"cuDeviceGetName\0")
            .map_err(|_| missing("cuDeviceGetName"))?;
        let r = init(0);
        // CUDA_ERROR_NO_DEVICE: a driver without devices.
        if r == 100 {
            return Ok(Vec::new());
        }
        if r != 0 {
            return Err(format!("the CUDA driver did not start (CUresult {r})"));
        }
        let mut n = 0i32;
        let r = count(&mut n);
        if r != 0 {
            return Err(format!(
                "the CUDA driver did not count devices (CUresult {r})"
            ));
        }
        let mut names = Vec::new();
        for ordinal in 0..n.max(0) {
            let mut dev = 0i32;
            let mut buf = [0 as std::ffi::c_char; 256];
            let label = if get(&mut dev, ordinal) == 0 && name(buf.as_mut_ptr(), 256, dev) == 0 {
                std::ffi::CStr::from_ptr(buf.as_ptr())
                    .to_string_lossy()
                    .into_owned()
            } else {
                "unnamed CUDA device".to_string()
            };
            names.push(label);
        }
        names
    };
    Ok(names)
}

/// Whether this machine has `device`; the error says why not.
pub fn check(device: DeviceSpec) -> Result<(), String> {
    match device {
        DeviceSpec::Cpu => Ok(()),
        DeviceSpec::Wgpu => gpu().map(|_| ()),
        DeviceSpec::Cuda(n) => {
            let have = cuda()?;
            if (n as usize) < have.len() {
                Ok(())
            } else if have.is_empty() {
                Err("the CUDA driver reports no devices".into())
            } else {
                Err(format!(
                    "there is no cuda:{n}; CUDA devices: 0..{}",
                    have.len() - 1
                ))
            }
        }
    }
}

/// The devices found, in one line (for error hints).
pub fn found() -> String {
    let mut parts = vec!["cpu".to_string()];
    match gpu() {
        Ok(s) => parts.push(format!("wgpu ({})", s.adapter().name)),
        Err(_) => parts.push("no wgpu adapter".into()),
    }
    match cuda() {
        Ok(names) if !names.is_empty() => {
            for (i, n) in names.iter().enumerate() {
                parts.push(format!("cuda:{i} ({n})"));
            }
        }
        Ok(_) => parts.push("no CUDA device".into()),
        Err(e) => parts.push(e),
    }
    parts.join(", ")
}

/// The process's GPU device service, opened on the first call (the adapter named by
/// `LATENTFLOW_WGPU_ADAPTER`, else the best one). An error says what was tried and found.
pub fn gpu() -> Result<Arc<Service>, String> {
    GPU.get_or_init(|| Service::open(&OpenOptions::from_env()).map_err(|e| e.to_string()))
        .clone()
}

/// What `HostServices::gpu` returns.
pub type GpuResult = RResult<GpuRef, NodeError>;

/// The GPU service as plugins receive it through the host services.
pub fn gpu_for_plugins() -> GpuResult {
    match gpu() {
        Ok(s) => RResult::ROk(s.handle()),
        Err(e) => RResult::RErr(NodeError::failed(e)),
    }
}

/// What a plugin running in an isolated worker gets: the device service lives in the host.
pub fn gpu_unavailable_isolated() -> GpuResult {
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
    if let Ok(names) = cuda() {
        for (i, n) in names.iter().enumerate() {
            out.push(DeviceInfo {
                name: format!("cuda:{i}"),
                detail: n.clone(),
                selected: true,
            });
        }
    }
    out
}
