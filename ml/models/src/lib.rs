//! LatentFlow's model families, on candle, with the numbers of their reference
//! implementations (diffusers and transformers): Stable Diffusion 1.x/2.x and SDXL (CLIP, the
//! UNet, the AutoencoderKL, ControlNet), AnimateDiff, the diffusion transformers (DiT, PixArt,
//! SD3, Flux), T5 and LLM text encoders, and the models behind the seed papers' methods —
//! loaded from diffusers folders or single-file checkpoints.
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

/// A transformer's checked config, its weights as an f32 var builder and its folder, from a
/// transformer folder or a pipeline folder (`what` names the model in errors).
pub(crate) fn transformer_parts<C: Checked + serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<(C, candle_nn::VarBuilder<'static>, std::path::PathBuf)> {
    let dir = transformer_folder(path, what)?;
    let config = C::from_file(&dir.join("config.json"))?;
    let vb = latentflow_weights::Weights::folder(&dir)?.var_builder(dtype, device)?;
    Ok((config, vb, dir))
}

/// The config of a single-file checkpoint: from `given` (a diffusers folder holding
/// `config.json` or `transformer/config.json`, or the file itself) when there is one, else `derive`d from the file and
/// checked (`file` names it in errors).
pub(crate) fn single_file_config<C: Checked + serde::de::DeserializeOwned>(
    file: &std::path::Path,
    given: Option<&std::path::Path>,
    derive: impl FnOnce() -> Result<C>,
) -> Result<C> {
    Ok(match given {
        Some(c) if c.is_dir() => {
            C::from_file(&transformer_folder(c, "config")?.join("config.json"))?
        }
        Some(c) => C::from_file(c)?,
        None => {
            let c = derive()?;
            c.check()
                .map_err(|e| ModelError::format(file, e.to_string()))?;
            c
        }
    })
}

/// The transformer folder of `path`: itself when it has a `config.json`, else its
/// `transformer/` (a diffusers pipeline folder); `what` names the model in the error.
pub(crate) fn transformer_folder(path: &std::path::Path, what: &str) -> Result<std::path::PathBuf> {
    if path.join("config.json").is_file() {
        Ok(path.to_path_buf())
    } else if path.join("transformer/config.json").is_file() {
        Ok(path.join("transformer"))
    } else {
        Err(ModelError::format(
            path.to_path_buf(),
            format!("not a {what} folder (no config.json, nor transformer/config.json)"),
        ))
    }
}
