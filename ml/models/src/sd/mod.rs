//! Stable Diffusion 1.x/2.x: diffusers' `UNet2DConditionModel`, `AutoencoderKL` and
//! `ControlNetModel`, transformers' `CLIPTextModel` and CLIP tokenizer, the single-file (LDM)
//! key layout, LoRA, DeepCache, DAAM attention maps and segmentation heads on UNet features.

pub mod checkpoint;
pub mod clip;
pub mod controlnet;
pub mod daam;
pub mod deepcache;
pub mod family;
pub mod loader;
pub mod lora;
pub mod open_clip;
pub mod prompt;
pub mod sdxl_text;
pub mod seghead;
pub mod text;
pub mod tokenizer;
pub mod unet;
pub mod vae;

pub use family::Family;
pub use loader::{LoadedUNet, PredictionType, Source};
pub use text::{encode_prompt, TextEncoder};
