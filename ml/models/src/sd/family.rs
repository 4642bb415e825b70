//! Model families: which conditioning a denoiser takes. Graphs carry the family in handle and
//! conditioning types (`Denoiser{family=sd1}`), so that feeding one family's conditioning to
//! another's model is refused before anything runs.

use std::path::Path;

use latentflow_weights::Header;

use super::checkpoint;
use super::unet::UNetConfig;
use crate::Result;

/// A Stable Diffusion family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// SD 1.x: CLIP ViT-L text encoder (and UNets of the same layout).
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H text encoder, 1024-wide cross-attention.
    Sd2,
    /// SDXL: two text encoders, pooled embeddings and time ids.
    Sdxl,
}

impl Family {
    /// The name used in port types: `sd1`, `sd2`, `sdxl`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
        }
    }

    /// The name used in messages.
    pub fn display_name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
        }
    }

    /// The family a UNet config describes.
    pub fn of_unet(config: &UNetConfig) -> Family {
        let widths = match &config.cross_attention_dim {
            super::unet::PerBlock::One(w) => vec![*w],
            super::unet::PerBlock::Each(w) => w.clone(),
        };
        if config.other_str("addition_embed_type") == Some("text_time") {
            Family::Sdxl
        } else if widths.contains(&1024) {
            Family::Sd2
        } else {
            Family::Sd1
        }
    }

    /// The family of a model path without loading it: a diffusers pipeline or `unet/` folder
    /// (its config), or a single-file checkpoint (its keys).
    pub fn detect(path: &Path) -> Result<Family> {
        if path.is_dir() {
            let unet = if path.join("unet/config.json").is_file() {
                path.join("unet/config.json")
            } else {
                path.join("config.json")
            };
            let config: UNetConfig = latentflow_weights::read_config(&unet)?;
            return Ok(Family::of_unet(&config));
        }
        checkpoint::family(path, &Header::read(path)?)
    }
}
