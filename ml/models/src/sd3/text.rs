//! SD3's text conditioning, as diffusers' `StableDiffusion3Pipeline.encode_prompt` builds it:
//! CLIP-L's and CLIP-G's penultimate hidden states side by side (77 tokens), zero-padded to
//! T5's width and followed by T5's tokens (or, without T5, 77 zero tokens), and the two CLIPs'
//! projected pooled embeddings side by side.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::sd::clip::ClipTextModel;
use crate::sd::tokenizer::ClipTokenizer;
use crate::t5::{T5Encoder, TextTokenizer};
use crate::{ModelError, Result};

/// CLIP's window: start, 75 tokens, end, padding.
const CLIP_TOKENS: usize = 77;

/// A CLIP text encoder with projection and its tokenizer.
pub struct Clip {
    tokenizer: ClipTokenizer,
    model: ClipTextModel,
}

impl Clip {
    /// Loads `model_dir` (a `CLIPTextModelWithProjection` folder) and `tokenizer_dir`.
    pub fn load(model_dir: &Path, tokenizer_dir: &Path, device: &Device) -> Result<Self> {
        let model = ClipTextModel::load(model_dir, device)?;
        if model.config.max_position_embeddings < CLIP_TOKENS {
            return Err(ModelError::invalid(format!(
                "{}: {} positions; SD3's CLIP encoders take {CLIP_TOKENS} tokens",
                model_dir.display(),
                model.config.max_position_embeddings
            )));
        }
        Ok(Self {
            tokenizer: ClipTokenizer::load(tokenizer_dir)?,
            model,
        })
    }

    /// The penultimate hidden states B×77×D and the projected pooled embeddings B×P.
    fn encode(&self, texts: &[&str], device: &Device) -> Result<(Tensor, Tensor)> {
        let t = &self.tokenizer;
        let mut ids = Vec::with_capacity(texts.len() * CLIP_TOKENS);
        for text in texts {
            let mut row = vec![t.bos];
            row.extend(
                self.tokenizer
                    .encode(text)?
                    .into_iter()
                    .take(CLIP_TOKENS - 2),
            );
            row.push(t.eos);
            row.resize(CLIP_TOKENS, t.pad);
            ids.extend(row);
        }
        let ids = Tensor::from_vec(ids, (texts.len(), CLIP_TOKENS), device)?;
        let out = self.model.forward(&ids, None)?;
        let hidden = out.hidden[out.hidden.len() - 2].clone();
        Ok((hidden, self.model.project(&out.pooled)?))
    }

    /// Width of the hidden states.
    pub fn width(&self) -> usize {
        self.model.config.hidden_size
    }
}

/// T5-XXL and its tokenizer.
pub struct T5 {
    tokenizer: TextTokenizer,
    model: T5Encoder,
}

impl T5 {
    /// Loads `model_dir` (a `T5EncoderModel` folder) and `tokenizer_dir`.
    pub fn load(model_dir: &Path, tokenizer_dir: &Path, device: &Device) -> Result<Self> {
        Ok(Self {
            tokenizer: TextTokenizer::from_file(tokenizer_dir, 0)?,
            model: T5Encoder::load(model_dir, None, DType::F32, device)?,
        })
    }

    /// Width of the hidden states.
    pub fn width(&self) -> usize {
        self.model.config.d_model
    }
}

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
        let need = |sub: &str| -> Result<PathBuf> {
            let p = dir.join(sub);
            if p.is_dir() {
                Ok(p)
            } else {
                Err(ModelError::format(
                    &p,
                    "missing: an SD3 pipeline folder has text_encoder/, tokenizer/, text_encoder_2/ and tokenizer_2/",
                ))
            }
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
        let (hl, pl) = self.clip_l.encode(texts, device)?;
        let (hg, pg) = self.clip_g.encode(texts, device)?;
        let clip = Tensor::cat(&[&hl, &hg], 2)?;
        let b = texts.len();
        let t5 = match &self.t5 {
            Some(t5) => {
                let enc = t5.tokenizer.encode(texts, Some(max_length), device)?;
                t5.model.forward(&enc.ids, None)?.to_dtype(DType::F32)?
            }
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
