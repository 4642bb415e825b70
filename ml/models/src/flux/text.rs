//! Flux's text conditioning, as diffusers' `FluxPipeline.encode_prompt` builds it: CLIP-L's
//! pooled output (one 77-token window) and T5's final hidden states (padded to
//! `max_sequence_length`, unmasked).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::text_encoders::{Clip, T5};
use crate::{ModelError, Result};

/// Flux's two text encoders.
pub struct FluxText {
    /// CLIP ViT-L/14 (`text_encoder/`, `tokenizer/`): the pooled embedding.
    pub clip: Clip,
    /// T5-XXL (`text_encoder_2/`, `tokenizer_2/`): the tokens.
    pub t5: T5,
    /// Where they came from.
    pub source: PathBuf,
}

/// T5 features and CLIP's pooled embedding of a batch of prompts.
pub struct FluxConditioning {
    /// B×max_length×T5 width.
    pub context: Tensor,
    /// B×CLIP width.
    pub pooled: Tensor,
}

impl FluxText {
    /// Loads the encoders of a diffusers Flux pipeline folder, T5 computing in `t5_dtype`
    /// (bf16 halves T5-XXL's 19 GB of f32; CLIP stays f32).
    pub fn load(dir: &Path, t5_dtype: DType, device: &Device) -> Result<Self> {
        let need = |sub: &str| {
            crate::text_encoders::subfolder(dir, sub, "a Flux pipeline folder has text_encoder/, tokenizer/, text_encoder_2/ and tokenizer_2/")
        };
        Ok(Self {
            clip: Clip::load(&need("text_encoder")?, &need("tokenizer")?, device)?,
            t5: T5::load(
                &need("text_encoder_2")?,
                &need("tokenizer_2")?,
                t5_dtype,
                device,
            )?,
            source: dir.to_path_buf(),
        })
    }

    /// Encodes `texts`, T5 to `max_length` tokens (diffusers' `max_sequence_length`).
    pub fn encode(
        &self,
        texts: &[&str],
        max_length: usize,
        device: &Device,
    ) -> Result<FluxConditioning> {
        if texts.is_empty() {
            return Err(ModelError::invalid("no prompts to encode"));
        }
        let pooled = self.clip.run(texts, device)?.pooled;
        Ok(FluxConditioning {
            context: self.t5.encode(texts, max_length, device)?,
            pooled,
        })
    }
}
