//! The text encoders of diffusers pipelines, each with its tokenizer: CLIP (one 77-token
//! window, as the SD3 and Flux pipelines tokenize) and T5 (padded to a fixed length, unmasked).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::sd::clip::{ClipOutput, ClipTextModel};
use crate::sd::tokenizer::ClipTokenizer;
use crate::t5::{T5Encoder, TextTokenizer};
use crate::{ModelError, Result};

/// `dir/sub`, which must be a folder; `layout` says what the pipeline folder should hold.
pub fn subfolder(dir: &Path, sub: &str, layout: &str) -> Result<std::path::PathBuf> {
    let p = dir.join(sub);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(ModelError::format(&p, format!("missing: {layout}")))
    }
}

/// CLIP's window: start, 75 tokens, end, padding.
pub const CLIP_TOKENS: usize = 77;

/// A CLIP text encoder with projection and its tokenizer.
pub struct Clip {
    tokenizer: ClipTokenizer,
    model: ClipTextModel,
}

impl Clip {
    /// Loads `model_dir` (a `CLIPTextModelWithProjection` folder) and `tokenizer_dir`.
    pub fn load(model_dir: &Path, tokenizer_dir: &Path, device: &Device) -> Result<Self> {
        let model = ClipTextModel::load(model_dir, device)?;
        Self::new(model, ClipTokenizer::load(tokenizer_dir)?, model_dir)
    }

    /// An encoder and tokenizer already loaded (`source` names the model in errors).
    pub fn new(model: ClipTextModel, tokenizer: ClipTokenizer, source: &Path) -> Result<Self> {
        if model.config.max_position_embeddings < CLIP_TOKENS {
            return Err(ModelError::invalid(format!(
                "{}: {} positions; these pipelines' CLIP encoders take {CLIP_TOKENS} tokens",
                source.display(),
                model.config.max_position_embeddings
            )));
        }
        Ok(Self { tokenizer, model })
    }

    /// The encoder's output for `texts`, each in one 77-token window.
    pub fn run(&self, texts: &[&str], device: &Device) -> Result<ClipOutput> {
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
        self.model.forward(&ids, None)
    }

    /// The penultimate hidden states B×77×D and the projected pooled embeddings B×P (SD3).
    pub fn penultimate_and_projected(
        &self,
        texts: &[&str],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let out = self.run(texts, device)?;
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
    /// An encoder and tokenizer already loaded.
    pub fn new(model: T5Encoder, tokenizer: TextTokenizer) -> Self {
        Self { tokenizer, model }
    }

    /// Loads `model_dir` (a `T5EncoderModel` folder) and `tokenizer_dir`.
    pub fn load(
        model_dir: &Path,
        tokenizer_dir: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            tokenizer: TextTokenizer::from_file(tokenizer_dir, 0)?,
            model: T5Encoder::load(model_dir, None, dtype, device)?,
        })
    }

    /// Width of the hidden states.
    pub fn width(&self) -> usize {
        self.model.config.d_model
    }

    /// The final hidden states B×max_length×D of `texts`, padded and cut to `max_length`
    /// tokens, the padding not masked (as the SD3 and Flux pipelines call T5).
    pub fn encode(&self, texts: &[&str], max_length: usize, device: &Device) -> Result<Tensor> {
        let enc = self.tokenizer.encode(texts, Some(max_length), device)?;
        Ok(self.model.forward(&enc.ids, None)?.to_dtype(DType::F32)?)
    }
}
