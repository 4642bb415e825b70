//! A `tokenizer.json` tokenizer (what transformers' fast tokenizers read) for T5 and
//! decoder-only LLMs: batches padded to a fixed length or to the longest text, with the mask.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::{ModelError, Result};

/// Token ids and their mask.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// B×L token ids (u32).
    pub ids: Tensor,
    /// B×L mask (f32): 1 for tokens, 0 for padding.
    pub mask: Tensor,
    /// The number of real tokens of each row.
    pub lengths: Vec<usize>,
}

/// A tokenizer read from `tokenizer.json`.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    /// The padding id.
    pub pad: u32,
    /// Special tokens (such as T5's `</s>`) are added by the file's post-processor.
    pub add_special: bool,
}

impl TextTokenizer {
    /// Reads `path` (a `tokenizer.json`, or a folder holding one). The padding id is the file's
    /// own padding token if it has one, else the token `<pad>`, else `pad`.
    pub fn from_file(path: &Path, pad: u32) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !file.is_file() {
            return Err(ModelError::format(
                &file,
                "no tokenizer.json here (a T5 or LLM folder from transformers has one; \
                 SentencePiece `spiece.model` files are not read: convert them with \
                 transformers' `AutoTokenizer.from_pretrained(...).save_pretrained(...)`)",
            ));
        }
        let inner = Tokenizer::from_file(&file)
            .map_err(|e| ModelError::format(&file, format!("tokenizer: {e}")))?;
        let pad = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(pad);
        Ok(Self {
            inner,
            pad,
            add_special: true,
        })
    }

    /// The id of `token`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of one text, special tokens included, no padding or truncation.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, self.add_special)
            .map_err(|e| ModelError::invalid(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes `texts`: truncated and padded (at the end) to `max_length`, or, when it is `None`,
    /// padded to the longest text (nothing is cut).
    pub fn encode(
        &self,
        texts: &[&str],
        max_length: Option<usize>,
        device: &Device,
    ) -> Result<Encoded> {
        if texts.is_empty() {
            return Err(ModelError::invalid("tokenizer: no texts"));
        }
        let mut tok = self.inner.clone();
        let fail = |e: tokenizers::Error| ModelError::invalid(format!("tokenizer: {e}"));
        match max_length {
            Some(0) => return Err(ModelError::invalid("max_length 0: no room for a token")),
            Some(n) => {
                tok.with_truncation(Some(TruncationParams {
                    max_length: n,
                    ..Default::default()
                }))
                .map_err(fail)?;
            }
            None => {
                tok.with_truncation(None).map_err(fail)?;
            }
        }
        tok.with_padding(Some(PaddingParams {
            strategy: match max_length {
                Some(n) => PaddingStrategy::Fixed(n),
                None => PaddingStrategy::BatchLongest,
            },
            direction: PaddingDirection::Right,
            pad_id: self.pad,
            pad_token: self.inner.id_to_token(self.pad).unwrap_or_default(),
            ..Default::default()
        }));
        let encs = tok
            .encode_batch(texts.to_vec(), self.add_special)
            .map_err(fail)?;
        let l = encs.first().map(|e| e.get_ids().len()).unwrap_or(0);
        if l == 0 {
            return Err(ModelError::invalid(
                "tokenizer: the text gives no tokens (and the tokenizer adds none)",
            ));
        }
        let mut ids = Vec::with_capacity(texts.len() * l);
        let mut mask = Vec::with_capacity(texts.len() * l);
        let mut lengths = Vec::with_capacity(texts.len());
        for e in &encs {
            ids.extend_from_slice(e.get_ids());
            mask.extend(e.get_attention_mask().iter().map(|&m| m as f32));
            lengths.push(e.get_attention_mask().iter().filter(|&&m| m != 0).count());
        }
        Ok(Encoded {
            ids: Tensor::from_vec(ids, (texts.len(), l), device)?,
            mask: Tensor::from_vec(mask, (texts.len(), l), device)?,
            lengths,
        })
    }
}
