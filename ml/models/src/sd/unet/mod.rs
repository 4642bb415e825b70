//! diffusers' `UNet2DConditionModel`: its config, its blocks, the forward pass as stages, and
//! feature taps.

mod blocks;
pub mod config;
mod features;
mod forward;

pub use blocks::{DownBlock, Layer, MidBlock, UpBlock};
pub use config::{PerBlock, Plan, UNetConfig};
pub use forward::{Cond, Extras, LayerHook, Site, Stop, UNet, UpLayerHook};
