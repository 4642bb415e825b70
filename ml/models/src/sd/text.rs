//! Prompts to conditioning: the tokenizer and text encoder together, with A1111 weighting,
//! 77-token windows for long prompts, and clip skip.

use candle_core::{Device, Tensor};
use latentflow_weights::Store;

use super::clip::ClipTextModel;
use super::tokenizer::ClipTokenizer;
use crate::{ModelError, Result};

/// A text encoder with its tokenizer.
pub struct TextEncoder {
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The model.
    pub model: ClipTextModel,
    /// Its weights (shared with LoRA'd variants).
    pub store: Store,
}

/// Encodes a prompt: weighting, 77-token windows, clip skip. Returns (conditioning, pooled).
pub fn encode_prompt(
    text: &TextEncoder,
    prompt_text: &str,
    clip_skip: usize,
    weighting: bool,
) -> Result<(Tensor, Tensor)> {
    let tok = &text.tokenizer;
    let spans = if weighting {
        super::prompt::parse(prompt_text)
    } else {
        vec![super::prompt::Span {
            text: prompt_text.to_owned(),
            weight: 1.0,
        }]
    };
    let mut tokens = Vec::new();
    for s in &spans {
        tokens.extend(tok.encode(&s.text)?.into_iter().map(|id| (id, s.weight)));
    }
    let len = text.model.config.max_position_embeddings;
    let layers = text.model.config.num_hidden_layers;
    if clip_skip >= layers {
        return Err(ModelError::invalid(format!(
            "clip_skip {clip_skip}: the text encoder has {layers} layers"
        )));
    }
    let windows = super::prompt::windows(&tokens, len, tok.bos, tok.eos, tok.pad);
    let mut encoded = Vec::with_capacity(windows.len());
    let mut pooled = None;
    for (ids, weights) in &windows {
        let ids = Tensor::from_slice(ids, (1, len), &Device::Cpu)?;
        let out = text.model.forward(&ids, Some(layers - clip_skip))?;
        let mut z = out.last;
        if weights.iter().any(|w| *w != 1.0) {
            // A1111: scale each token's embedding, then restore the original mean.
            let before = z.mean_all()?.to_scalar::<f32>()?;
            let w = Tensor::from_slice(weights, (1, len, 1), &Device::Cpu)?;
            z = z.broadcast_mul(&w)?;
            let after = z.mean_all()?.to_scalar::<f32>()?;
            if after != 0.0 {
                z = (z * f64::from(before / after))?;
            }
        }
        encoded.push(z);
        pooled.get_or_insert(out.pooled);
    }
    let cond = Tensor::cat(&encoded, 1)?;
    let pooled = pooled.ok_or_else(|| ModelError::invalid("no token windows"))?;
    Ok((cond, pooled))
}
