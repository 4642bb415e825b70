//! CLIP text encoder (transformers' `CLIPTextModel`).
//!
//! Gives every layer's hidden state so callers can skip final layers (clip skip), and the pooled
//! output (the final-normed state at the end-of-text token).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, LayerNormConfig, VarBuilder};
use latentflow_kernels::{attention, Attend};
use latentflow_kernels::{linear, Linear};
use latentflow_weights::Weights;

use super::config::ClipConfig;
use crate::{Checked, ModelError, Result};

struct Layer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The text encoder.
pub struct ClipTextModel {
    /// Its configuration.
    pub config: ClipConfig,
    token: Embedding,
    position: Embedding,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
    projection: Option<Linear>,
}

/// Hidden states of one forward pass.
pub struct ClipOutput {
    /// Input to layer 0 (embeddings), then the output of every layer, without the final norm.
    pub hidden: Vec<Tensor>,
    /// The final layer norm of the last layer run: B×L×D (the conditioning).
    pub last: Tensor,
    /// Final-normed state at each sequence's end-of-text token: B×D.
    pub pooled: Tensor,
}

impl ClipTextModel {
    /// Builds the model; weights may be stored with or without the `text_model.` prefix.
    /// `source` names the weights in errors.
    pub fn new(config: ClipConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
        Self::build(config, vb)
            .map_err(|e| ModelError::mismatch(source.to_path_buf(), "text encoder", e))
    }

    fn build(config: ClipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let projection = if vb.contains_tensor("text_projection.weight") {
            Some(latentflow_kernels::linear_no_bias(
                config.hidden_size,
                config.projection_dim,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let c = &config;
        let ln = |vb: VarBuilder| {
            layer_norm(
                c.hidden_size,
                LayerNormConfig {
                    eps: c.layer_norm_eps,
                    ..Default::default()
                },
                vb,
            )
        };
        let emb = vb.pp("embeddings");
        let token = embedding(c.vocab_size, c.hidden_size, emb.pp("token_embedding"))?;
        let position = embedding(
            c.max_position_embeddings,
            c.hidden_size,
            emb.pp("position_embedding"),
        )?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let vb = vb.pp(format!("encoder.layers.{i}"));
            let a = vb.pp("self_attn");
            let h = c.hidden_size;
            layers.push(Layer {
                ln1: ln(vb.pp("layer_norm1"))?,
                q: linear(h, h, a.pp("q_proj"))?,
                k: linear(h, h, a.pp("k_proj"))?,
                v: linear(h, h, a.pp("v_proj"))?,
                out: linear(h, h, a.pp("out_proj"))?,
                ln2: ln(vb.pp("layer_norm2"))?,
                fc1: linear(h, c.intermediate_size, vb.pp("mlp.fc1"))?,
                fc2: linear(c.intermediate_size, h, vb.pp("mlp.fc2"))?,
            });
        }
        let final_ln = ln(vb.pp("final_layer_norm"))?;
        Ok(Self {
            config,
            token,
            position,
            layers,
            final_ln,
            projection,
        })
    }

    /// The pooled state through `text_projection` (`text_embeds`), for an encoder that has one.
    pub fn project(&self, pooled: &Tensor) -> Result<Tensor> {
        match &self.projection {
            Some(p) => Ok(p.forward(pooled)?),
            None => Err(ModelError::invalid(
                "this text encoder has no text_projection (a CLIPTextModelWithProjection has)",
            )),
        }
    }

    /// Loads `config.json` and the weights of a transformers `text_encoder/` folder.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = ClipConfig::from_file(&dir.join("config.json"))?;
        let w = Weights::folder(dir)?;
        Self::new(config, w.var_builder(DType::F32, device)?, dir)
    }

    fn act(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.config.hidden_act.as_str() {
            "gelu" => x.gelu_erf(),
            _ => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        }
    }

    /// Encodes token ids (B×L, u32). Runs `layers` layers (all when `None`).
    pub fn forward(&self, ids: &Tensor, layers: Option<usize>) -> Result<ClipOutput> {
        let (b, l) = ids.dims2()?;
        let c = &self.config;
        if l > c.max_position_embeddings {
            return Err(ModelError::invalid(format!(
                "{l} tokens; the text encoder takes at most {}",
                c.max_position_embeddings
            )));
        }
        let pos = Tensor::arange(0u32, l as u32, ids.device())?;
        let mut x = self
            .token
            .forward(ids)?
            .broadcast_add(&self.position.forward(&pos)?)?;
        let mask = causal_mask(l, ids.device())?;
        let heads = c.num_attention_heads;
        let dh = c.hidden_size / heads;
        let scale = (dh as f64).powf(-0.5);
        let mut hidden = vec![x.clone()];
        let n = layers.unwrap_or(self.layers.len()).min(self.layers.len());
        for layer in &self.layers[..n] {
            let h = layer.ln1.forward(&x)?;
            let split = |t: Tensor| {
                t.reshape((b, l, heads, dh))
                    .and_then(|t| t.transpose(1, 2))
                    .and_then(|t| t.contiguous())
            };
            let q = split((layer.q.forward(&h)? * scale)?)?;
            let k = split(layer.k.forward(&h)?)?;
            let v = split(layer.v.forward(&h)?)?;
            let attend = Attend {
                mask: Some(&mask),
                probabilities: None,
            };
            let o =
                attention(&q, &k, &v, attend)?
                    .transpose(1, 2)?
                    .reshape((b, l, c.hidden_size))?;
            x = (x + layer.out.forward(&o)?)?;
            let h = layer.ln2.forward(&x)?;
            let h = layer.fc2.forward(&self.act(&layer.fc1.forward(&h)?)?)?;
            x = (x + h)?;
            hidden.push(x.clone());
        }
        let last = self.final_ln.forward(&x)?;
        let pooled = self.pool(&last, ids)?;
        Ok(ClipOutput {
            hidden,
            last,
            pooled,
        })
    }

    /// The final layer norm (applied to a skipped layer's state, as diffusers does for clip skip).
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.final_ln.forward(x)?)
    }

    fn pool(&self, last: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let rows = ids.to_vec2::<u32>()?;
        let eos = self.config.eos_token_id;
        let mut picked = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            // transformers: legacy configs (eos_token_id 2) take the highest id; others the
            // first end-of-text token.
            let at = if eos == 2 {
                let max = row.iter().copied().max().unwrap_or(0);
                row.iter().position(|&t| t == max).unwrap_or(0)
            } else {
                row.iter().position(|&t| t == eos).unwrap_or(row.len() - 1)
            };
            picked.push(last.i((i, at))?);
        }
        Ok(Tensor::stack(&picked, 0)?)
    }
}

fn causal_mask(l: usize, device: &Device) -> candle_core::Result<Tensor> {
    let m: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (l, l), device)
}
