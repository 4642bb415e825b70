//! Where a node computes: the names graphs use for devices (`cpu`, `cuda:N`, `wgpu`).
//!
//! Model loaders take a `device` parameter ([`crate::sdk::candle::device_param`]); a graph's
//! top-level `device:` sets it for every loader that does not set it itself. The host checks,
//! before anything runs, that the name parses, that the node can run there (its
//! [`Capabilities::devices`](crate::Capabilities)) and that this machine has the device.

use std::fmt;
use std::str::FromStr;

use crate::descriptor::Capabilities;

/// The name of the device parameter of model loaders; the host fills it from the graph's
/// `device:` when a node does not set it, and checks it before anything runs.
pub const DEVICE_PARAM: &str = "device";

/// A device as a graph names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The host CPU.
    Cpu,
    /// CUDA device `N` (`cuda` is `cuda:0`).
    Cuda(u32),
    /// The host's GPU device service (wgpu).
    Wgpu,
}

impl DeviceSpec {
    /// The [`Capabilities::devices`] bit a node needs to run here.
    pub fn capability(self) -> u32 {
        match self {
            DeviceSpec::Cpu => Capabilities::CPU,
            DeviceSpec::Cuda(_) => Capabilities::CUDA,
            DeviceSpec::Wgpu => Capabilities::WGPU,
        }
    }

    /// The device kinds in a capability bit set, as words (`cpu, cuda`).
    pub fn kinds(devices: u32) -> String {
        let mut out = Vec::new();
        for (bit, name) in [
            (Capabilities::CPU, "cpu"),
            (Capabilities::CUDA, "cuda"),
            (Capabilities::WGPU, "wgpu"),
        ] {
            if devices & bit != 0 {
                out.push(name);
            }
        }
        match out.as_slice() {
            [] => "no device".into(),
            [one] => one.to_string(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Wgpu => f.write_str("wgpu"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<DeviceSpec, String> {
        let bad = || format!("`{s}` is not a device: write cpu, cuda, cuda:N or wgpu");
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "wgpu" | "webgpu" | "vulkan" => Ok(DeviceSpec::Wgpu),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("CUDA", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            (" wgpu ", DeviceSpec::Wgpu),
        ] {
            assert_eq!(s.parse::<DeviceSpec>(), Ok(d));
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("cpu, cuda, cuda:N or wgpu"), "{e}");
        }
        assert_eq!(
            DeviceSpec::kinds(Capabilities::CPU | Capabilities::WGPU),
            "cpu and wgpu"
        );
        assert_eq!(DeviceSpec::kinds(Capabilities::CPU), "cpu");
    }
}
