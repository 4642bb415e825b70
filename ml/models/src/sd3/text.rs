//! SD3's text conditioning, as diffusers' `StableDiffusion3Pipeline.encode_prompt` builds it:
//! CLIP-L's and CLIP-G's penultimate hidden states side by side (77 tokens), zero-padded to
//! T5's width and followed by T5's tokens (or, without T5, 77 zero tokens), and the two CLIPs'
//! projected pooled embeddings side by side.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::text_encoders::{Clip, CLIP_TOKENS, T5};
use crate::{ModelError, Result};

/// SD3's three text encoders (T5 optional, as in diffusers).
pub struct Sd3Text {
    /// CLIP ViT-L/14 with projection (`text_encoder/`).
    pub clip_l: Clip,
    /// OpenCLIP ViT-bigG/14 with projection (`text_encoder_2/`).
    pub clip_g: Clip,
    /// T5-XXL (`text_encoder_3/`), or none: zeros in its place.
    pub t5: Option<T5>,
    /// The width of the joint text tokens when there is no T5 (the transformer's
    /// `joint_attention_dim`).
    pub joint_width: usize,
    /// Where they came from.
    pub source: PathBuf,
}

/// Text features and pooled embeddings of a batch of prompts.
pub struct Sd3Conditioning {
    /// B×(77 + T)×joint width.
    pub context: Tensor,
    /// B×(CLIP-L projection + CLIP-G projection).
    pub pooled: Tensor,
}

impl Sd3Text {
    /// Loads the encoders of a diffusers SD3 pipeline folder (`text_encoder/`, `tokenizer/`,
    /// `text_encoder_2/`, `tokenizer_2/`, and, when present, `text_encoder_3/`, `tokenizer_3/`);
    /// `joint_width` is the transformer's `joint_attention_dim`.
    pub fn load(dir: &Path, joint_width: usize, device: &Device) -> Result<Self> {
        let need = |sub: &str| {
            crate::text_encoders::subfolder(dir, sub, "an SD3 pipeline folder has text_encoder/, tokenizer/, text_encoder_2/ and tokenizer_2/")
        };
        let clip_l = Clip::load(&need("text_encoder")?, &need("tokenizer")?, device)?;
        let clip_g = Clip::load(&need("text_encoder_2")?, &need("tokenizer_2")?, device)?;
        let t5 = if dir.join("text_encoder_3/config.json").is_file() {
            Some(T5::load(
                &dir.join("text_encoder_3"),
                &need("tokenizer_3")?,
                device,
            )?)
        } else {
            None
        };
        let text = Self {
            clip_l,
            clip_g,
            t5,
            joint_width,
            source: dir.to_path_buf(),
        };
        if let Some(t5) = &text.t5 {
            if t5.width() != joint_width {
                return Err(ModelError::invalid(format!(
                    "{}: T5 is {} wide, the transformer's text tokens {joint_width}",
                    dir.display(),
                    t5.width()
                )));
            }
        }
        Ok(text)
    }

    /// Encodes `texts`, T5 to `max_length` tokens (diffusers' `max_sequence_length`).
    pub fn encode(
        &self,
        texts: &[&str],
        max_length: usize,
        device: &Device,
    ) -> Result<Sd3Conditioning> {
        if texts.is_empty() {
            return Err(ModelError::invalid("no prompts to encode"));
        }
        let (hl, pl) = self.clip_l.penultimate_and_projected(texts, device)?;
        let (hg, pg) = self.clip_g.penultimate_and_projected(texts, device)?;
        let clip = Tensor::cat(&[&hl, &hg], 2)?;
        let b = texts.len();
        let t5 = match &self.t5 {
            Some(t5) => t5.encode(texts, max_length, device)?,
            None => Tensor::zeros((b, CLIP_TOKENS, self.joint_width), DType::F32, device)?,
        };
        let w = t5.dim(2)?;
        let cw = clip.dim(2)?;
        // diffusers pads the CLIP features to T5's width (F.pad with a negative width crops).
        let clip = if cw < w {
            let zeros = Tensor::zeros((b, CLIP_TOKENS, w - cw), DType::F32, device)?;
            Tensor::cat(&[&clip, &zeros], 2)?
        } else {
            clip.narrow(2, 0, w)?
        };
        Ok(Sd3Conditioning {
            context: Tensor::cat(&[&clip, &t5], 1)?,
            pooled: Tensor::cat(&[&pl, &pg], 1)?,
        })
    }
}
