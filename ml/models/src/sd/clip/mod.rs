//! The CLIP text encoder: configuration and model.

pub mod config;
pub mod model;

pub use config::ClipConfig;
pub use model::{ClipOutput, ClipTextModel};
