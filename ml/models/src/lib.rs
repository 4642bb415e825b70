//! LatentFlow's model families, on candle, with the numbers of their reference
//! implementations (diffusers and transformers): today Stable Diffusion 1.x/2.x — the CLIP
//! tokenizer and text encoder, the UNet, the AutoencoderKL and ControlNet — loaded from
//! diffusers folders or single-file checkpoints.
//!
//! Models know nothing of graphs or plugins: they are built from configs and weights
//! (`latentflow-weights`), run on kernels (`latentflow-kernels`) and blocks (`latentflow-nn`),
//! and offer seams (stage functions, observers) that callers such as DeepCache or feature
//! extraction use instead of patching the forward pass.

pub mod animatediff;
pub mod dit;
pub mod ella;
mod error;
pub mod flux;
pub mod llm;
mod mmdit;
pub mod pixart;
pub mod sd;
pub mod sd3;
pub mod sur;
pub mod t5;
pub mod text_encoders;
pub mod tiramisu;
pub mod unet2d;
pub mod vq;

pub use error::{ModelError, ModelErrorKind, Result};
pub use latentflow_weights::Checked;
