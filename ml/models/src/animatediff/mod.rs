//! AnimateDiff: motion modules (diffusers' `MotionAdapter`, or the original checkpoints'
//! layout) applied to any SD 1.x UNet with `UNetMotionModel.from_unet2d` semantics.
//!
//! A motion module is a temporal transformer after every layer of the UNet's down and up blocks
//! (and, optionally, after the mid block's transformer): GroupNorm over (C, F, H, W) of each
//! sample, then attention along the frames at every pixel, two self-attentions with a
//! sinusoidal position table added to their normalised inputs, a GEGLU feed-forward, and a
//! residual. [`MotionUNet::forward`] runs the SD UNet on the B·F frames with the modules as its
//! layer hook, the time embedding and the text context repeated per frame, so everything else
//! that hooks into the UNet (LoRA-merged weights, DeepCache's stages) composes.
//!
//! Videos longer than the modules' position table run with FreeNoise's [`ContextWindows`]:
//! the attentions over overlapping windows of frames, blended with per-window weights.

mod config;
mod keys;
mod motion;
mod unet;
mod windows;

pub use config::MotionAdapterConfig;
pub use keys::{original_name, Layout};
pub use motion::{MotionAdapter, MotionModule};
pub use unet::MotionUNet;
pub use windows::{ContextWindows, Span, Weighting};
