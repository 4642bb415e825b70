//! SDXL's text conditioning, as diffusers' `StableDiffusionXLPipeline.encode_prompt` builds
//! it: CLIP-L's and OpenCLIP bigG's penultimate hidden states side by side (77 tokens; the
//! refiner has bigG alone), and bigG's projected pooled embedding; an empty prompt may be all
//! zeros instead (`force_zeros_for_empty_prompt`, how SDXL's pipeline treats a missing negative
//! prompt).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::text_encoders::Clip;
use crate::Result;

/// SDXL's two text encoders.
pub struct SdxlText {
    /// CLIP ViT-L/14 (`text_encoder/`, `tokenizer/`); the refiner has none.
    pub clip_l: Option<Clip>,
    /// OpenCLIP ViT-bigG/14 with projection (`text_encoder_2/`, `tokenizer_2/`).
    pub clip_g: Clip,
    /// Where they came from.
    pub source: PathBuf,
}

/// Text features and the pooled embedding of a batch of prompts.
pub struct SdxlConditioning {
    /// B×77×(CLIP-L width + bigG width), or bigG's alone (the refiner).
    pub context: Tensor,
    /// B×projection width.
    pub pooled: Tensor,
}

impl SdxlText {
    /// Loads the encoders of a diffusers SDXL pipeline folder (the refiner's has no
    /// `text_encoder/`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let need = |sub: &str| {
            crate::text_encoders::subfolder(dir, sub, "an SDXL pipeline folder has text_encoder_2/ and tokenizer_2/ (and, but for the refiner, text_encoder/ and tokenizer/)")
        };
        Ok(Self {
            clip_l: if dir.join("text_encoder/config.json").is_file() {
                Some(Clip::load(
                    &need("text_encoder")?,
                    &need("tokenizer")?,
                    device,
                )?)
            } else {
                None
            },
            clip_g: Clip::load(&need("text_encoder_2")?, &need("tokenizer_2")?, device)?,
            source: dir.to_path_buf(),
        })
    }

    /// Encodes `text`; with `zero_empty`, an empty text gives zeros of the same shapes.
    pub fn encode(
        &self,
        text: &str,
        zero_empty: bool,
        device: &Device,
    ) -> Result<SdxlConditioning> {
        let (hg, pooled) = self.clip_g.penultimate_and_projected(&[text], device)?;
        let context = match &self.clip_l {
            Some(clip_l) => {
                let l = clip_l.run(&[text], device)?;
                let hl = l.hidden[l.hidden.len() - 2].clone();
                Tensor::cat(&[&hl, &hg], 2)?
            }
            None => hg,
        };
        if zero_empty && text.is_empty() {
            return Ok(SdxlConditioning {
                context: context.zeros_like()?,
                pooled: pooled.zeros_like()?,
            });
        }
        Ok(SdxlConditioning { context, pooled })
    }
}
