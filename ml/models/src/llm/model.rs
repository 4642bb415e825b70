//! The decoder stack of Llama-style models, run as an encoder: every layer's hidden state is
//! available, the causal mask is combined with a padding mask (right padding), and only the
//! layers up to the one asked for are run.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, Embedding, VarBuilder};
use latentflow_kernels::{linear_b, linear_no_bias, Linear};
use latentflow_nn::RmsNorm;
use latentflow_weights::Weights;

use super::config::{DecoderConfig, Rope};
use crate::{Checked, ModelError, Result};

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A Llama / Mistral / Qwen2 / Qwen3 decoder without its language-model head.
pub struct Decoder {
    /// Its configuration.
    pub config: DecoderConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    inv_freq: Vec<f32>,
    dtype: DType,
}

/// RoPE inverse frequencies, as transformers computes them (f32).
fn inv_freq(rope: Rope, dim: usize) -> Vec<f32> {
    let theta = match rope {
        Rope::Default { theta } | Rope::Llama3 { theta, .. } => theta,
    };
    let base: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / (theta as f32).powf(i as f32 / dim as f32))
        .collect();
    match rope {
        Rope::Default { .. } => base,
        Rope::Llama3 {
            factor,
            low,
            high,
            original,
            ..
        } => {
            let (factor, low, high, original) =
                (factor as f32, low as f32, high as f32, original as f32);
            let low_wavelen = original / low;
            let high_wavelen = original / high;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    if wavelen < high_wavelen || wavelen > low_wavelen {
                        scaled
                    } else {
                        let smooth = (original / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    }
                })
                .collect()
        }
    }
}

fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, d)?;
    let x2 = x.narrow(D::Minus1, d, d)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

impl Decoder {
    /// Builds the decoder from `vb` (weights under `model.` or at the root) computing in
    /// `dtype`; `source` names the weights in errors.
    pub fn new(config: DecoderConfig, vb: VarBuilder, dtype: DType, source: &Path) -> Result<Self> {
        config
            .check()
            .map_err(|e| ModelError::format(source, format!("LLM config: {e}")))?;
        let rope = config
            .rope()
            .map_err(|e| ModelError::format(source, format!("LLM config: {e}")))?;
        Self::build(config, vb, dtype, rope)
            .map_err(|e| ModelError::mismatch(source.to_path_buf(), "LLM", e))
    }

    fn build(
        config: DecoderConfig,
        vb: VarBuilder,
        dtype: DType,
        rope: Rope,
    ) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("model.embed_tokens.weight") {
            vb.pp("model")
        } else {
            vb
        };
        let c = &config;
        let (h, dh) = (c.hidden_size, c.head_width());
        let (qh, kvh) = (c.num_attention_heads, c.kv_heads());
        let bias = c.qkv_bias();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let m = l.pp("mlp");
            let norm = |vb: VarBuilder, d: usize| RmsNorm::new(d, c.rms_norm_eps, vb);
            layers.push(Layer {
                input_norm: norm(l.pp("input_layernorm"), h)?,
                q: linear_b(h, qh * dh, bias, a.pp("q_proj"))?,
                k: linear_b(h, kvh * dh, bias, a.pp("k_proj"))?,
                v: linear_b(h, kvh * dh, bias, a.pp("v_proj"))?,
                o: linear_no_bias(qh * dh, h, a.pp("o_proj"))?,
                q_norm: c.qk_norm().then(|| norm(a.pp("q_norm"), dh)).transpose()?,
                k_norm: c.qk_norm().then(|| norm(a.pp("k_norm"), dh)).transpose()?,
                post_norm: norm(l.pp("post_attention_layernorm"), h)?,
                gate: linear_no_bias(h, c.intermediate_size, m.pp("gate_proj"))?,
                up: linear_no_bias(h, c.intermediate_size, m.pp("up_proj"))?,
                down: linear_no_bias(c.intermediate_size, h, m.pp("down_proj"))?,
            });
        }
        Ok(Self {
            embed: embedding(c.vocab_size, h, vb.pp("embed_tokens"))?,
            norm: RmsNorm::new(h, c.rms_norm_eps, vb.pp("norm"))?,
            inv_freq: inv_freq(rope, dh),
            layers,
            dtype,
            config,
        })
    }

    /// Loads a transformers folder (`config.json` and its weights, sharded or not) in `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = DecoderConfig::from_file(&dir.join("config.json"))?;
        let w = Weights::folder(dir)?;
        Self::new(config, w.var_builder(dtype, device)?, dtype, dir)
    }

    /// The number of entries of transformers' `hidden_states`: the embeddings, then one per
    /// layer (the last one final-normed).
    pub fn hidden_states(&self) -> usize {
        self.layers.len() + 1
    }

    /// `hidden_states[layer]` as transformers numbers them (negative: from the end, so −1 is
    /// the final-normed output and −2 the output of the second-to-last layer, unnormed) for ids
    /// B×L (u32) with a mask B×L (1 = token, 0 = right padding). B×L×D in the compute dtype.
    pub fn hidden_state(&self, ids: &Tensor, mask: Option<&Tensor>, layer: i64) -> Result<Tensor> {
        let n = self.hidden_states() as i64;
        let at = if layer < 0 { n + layer } else { layer };
        if !(0..n).contains(&at) {
            return Err(ModelError::invalid(format!(
                "hidden state {layer}: this model has {n} (0 = embeddings … {} = last layer; −1 = last)",
                n - 1
            )));
        }
        let at = at as usize;
        let (b, l) = ids.dims2()?;
        if l == 0 {
            return Err(ModelError::invalid("LLM: no tokens to encode"));
        }
        if let Some(m) = mask {
            if m.dims() != [b, l] {
                return Err(ModelError::shape(
                    "LLM attention mask",
                    format!("{b}×{l}"),
                    m.dims(),
                ));
            }
        }
        let dev = ids.device();
        let c = &self.config;
        if let Some(w) = c.window().filter(|&w| l > w) {
            return Err(ModelError::invalid(format!(
                "{l} tokens exceed this model's sliding attention window of {w}; shorten the prompt"
            )));
        }
        let mut x = self.embed.forward(ids)?.to_dtype(self.dtype)?;
        if at == 0 {
            return Ok(x);
        }
        // Causal + padding: query i sees keys j ≤ i that are tokens.
        let keep: Vec<f32> = match mask {
            Some(m) => m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            None => vec![1.0; b * l],
        };
        let mut add = vec![0f32; b * l * l];
        for bi in 0..b {
            for i in 0..l {
                for j in 0..l {
                    if j > i || keep[bi * l + j] == 0.0 {
                        add[(bi * l + i) * l + j] = f32::MIN;
                    }
                }
            }
        }
        let bias = Tensor::from_vec(add, (b, 1, l, l), dev)?.to_dtype(self.dtype)?;
        let dh = c.head_width();
        let half = self.inv_freq.len();
        let mut freqs = Vec::with_capacity(l * dh);
        for p in 0..l {
            let row: Vec<f32> = self.inv_freq.iter().map(|f| p as f32 * f).collect();
            freqs.extend_from_slice(&row);
            freqs.extend_from_slice(&row);
        }
        let freqs = Tensor::from_vec(freqs, (1, 1, l, 2 * half), dev)?;
        let cos = freqs.cos()?.to_dtype(self.dtype)?;
        let sin = freqs.sin()?.to_dtype(self.dtype)?;
        let rope = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.broadcast_mul(&cos)? + rotate_half(t)?.broadcast_mul(&sin)?
        };
        let (qh, kvh) = (c.num_attention_heads, c.kv_heads());
        let groups = qh / kvh;
        let scale = (dh as f64).powf(-0.5);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let heads =
                |t: Tensor, n: usize, norm: &Option<RmsNorm>| -> candle_core::Result<Tensor> {
                    let t = t.reshape((b, l, n, dh))?;
                    let t = match norm {
                        Some(nm) => nm.forward(&t)?,
                        None => t,
                    };
                    t.transpose(1, 2)?.contiguous()
                };
            let q = rope(&heads(layer.q.forward(&h)?, qh, &layer.q_norm)?)?;
            let k = rope(&heads(layer.k.forward(&h)?, kvh, &layer.k_norm)?)?;
            let v = heads(layer.v.forward(&h)?, kvh, &None)?;
            let repeat = |t: Tensor| -> candle_core::Result<Tensor> {
                if groups == 1 {
                    return Ok(t);
                }
                t.unsqueeze(2)?
                    .expand((b, kvh, groups, l, dh))?
                    .reshape((b, qh, l, dh))
            };
            let (k, v) = (repeat(k)?, repeat(v)?);
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
                .to_dtype(self.dtype)?;
            let o = probs
                .matmul(&v.contiguous()?)?
                .transpose(1, 2)?
                .reshape((b, l, qh * dh))?;
            x = (x + layer.o.forward(&o)?)?;
            let h = layer.post_norm.forward(&x)?;
            let h = layer
                .down
                .forward(&(layer.gate.forward(&h)?.silu()? * layer.up.forward(&h)?)?)?;
            x = (x + h)?;
            if i + 1 == at {
                if at == self.layers.len() {
                    return Ok(self.norm.forward(&x)?);
                }
                return Ok(x);
            }
        }
        Ok(self.norm.forward(&x)?)
    }
}
