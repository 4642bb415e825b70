//! The T5 encoder stack: RMS norms without mean, unscaled attention with a bucketed relative
//! position bias (computed once, by the first block, and shared), gated or plain feed-forward.
//!
//! Unlike candle-transformers' encoder this one takes the padding mask: padded positions are
//! hidden from every query, as in transformers. Without it every token's features change with
//! the amount of padding.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};
use latentflow_kernels::{linear_no_bias, Linear};
use latentflow_nn::RmsNorm;
use latentflow_weights::Weights;

use super::config::{Activation, FeedForward, T5Config};
use crate::{Checked, ModelError, Result};

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm: RmsNorm,
}

enum Ff {
    Dense {
        wi: Linear,
        act: Activation,
    },
    Gated {
        wi0: Linear,
        wi1: Linear,
        act: Activation,
    },
}

struct Block {
    attn: Attention,
    ff: Ff,
    wo: Linear,
    ff_norm: RmsNorm,
}

/// transformers' `T5EncoderModel`.
pub struct T5Encoder {
    /// Its configuration.
    pub config: T5Config,
    embed: Embedding,
    /// Bucket → per-head bias (`relative_attention_bias` of block 0).
    relative_bias: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    dtype: DType,
}

fn act(a: Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    match a {
        Activation::Relu => x.relu(),
        Activation::GeluTanh => x.gelu(),
        Activation::Gelu => x.gelu_erf(),
        Activation::Silu => x.silu(),
    }
}

/// The bucket of `relative = key − query` (bidirectional, as transformers' encoder computes it,
/// the logarithmic part in f32 so bucket edges agree).
pub fn relative_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let ratio = (n as f32 / max_exact as f32).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32)
            * (half - max_exact) as f32;
        let large = (max_exact + ratio as i64).min(half - 1);
        bucket += large;
    }
    bucket as u32
}

impl T5Encoder {
    /// Builds the encoder from `vb` computing in `dtype`; `source` names the weights in errors.
    /// The token embedding may be stored as `shared.weight` or `encoder.embed_tokens.weight`.
    pub fn new(config: T5Config, vb: VarBuilder, dtype: DType, source: &Path) -> Result<Self> {
        config
            .check()
            .map_err(|e| ModelError::format(source, format!("T5 config: {e}")))?;
        Self::build(config, vb, dtype)
            .map_err(|e| ModelError::mismatch(source.to_path_buf(), "T5 encoder", e))
    }

    fn build(config: T5Config, vb: VarBuilder, dtype: DType) -> candle_core::Result<Self> {
        let c = &config;
        let embed_name = if vb.contains_tensor("shared.weight") {
            "shared"
        } else {
            "encoder.embed_tokens"
        };
        let embed = embedding(c.vocab_size, c.d_model, vb.pp(embed_name))?;
        let enc = vb.pp("encoder");
        let inner = c.num_heads * c.d_kv;
        let eps = c.layer_norm_epsilon;
        let relative_bias = embedding(
            c.relative_attention_num_buckets,
            c.num_heads,
            enc.pp("block.0.layer.0.SelfAttention.relative_attention_bias"),
        )?;
        let mut blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let b = enc.pp(format!("block.{i}"));
            let a = b.pp("layer.0.SelfAttention");
            let attn = Attention {
                q: linear_no_bias(c.d_model, inner, a.pp("q"))?,
                k: linear_no_bias(c.d_model, inner, a.pp("k"))?,
                v: linear_no_bias(c.d_model, inner, a.pp("v"))?,
                o: linear_no_bias(inner, c.d_model, a.pp("o"))?,
                norm: RmsNorm::new(c.d_model, eps, b.pp("layer.0.layer_norm"))?,
            };
            let f = b.pp("layer.1.DenseReluDense");
            let ff = match c.feed_forward() {
                FeedForward::Dense(act) => Ff::Dense {
                    wi: linear_no_bias(c.d_model, c.d_ff, f.pp("wi"))?,
                    act,
                },
                FeedForward::Gated(act) => Ff::Gated {
                    wi0: linear_no_bias(c.d_model, c.d_ff, f.pp("wi_0"))?,
                    wi1: linear_no_bias(c.d_model, c.d_ff, f.pp("wi_1"))?,
                    act,
                },
            };
            blocks.push(Block {
                attn,
                ff,
                wo: linear_no_bias(c.d_ff, c.d_model, f.pp("wo"))?,
                ff_norm: RmsNorm::new(c.d_model, eps, b.pp("layer.1.layer_norm"))?,
            });
        }
        let final_norm = RmsNorm::new(c.d_model, eps, enc.pp("final_layer_norm"))?;
        Ok(Self {
            config,
            embed,
            relative_bias,
            blocks,
            final_norm,
            dtype,
        })
    }

    /// Loads a transformers T5 folder (`config.json` and its weights, sharded or not) or, with
    /// `config`, a single `.safetensors` file; each weight is read once and converted to
    /// `dtype` (`F32` or `BF16`) once.
    pub fn load(path: &Path, config: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg_path, weights) = if path.is_dir() {
            (
                config
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| path.join("config.json")),
                Weights::folder(path)?,
            )
        } else {
            let cfg = match config {
                Some(c) if c.is_dir() => c.join("config.json"),
                Some(c) => c.to_path_buf(),
                None => path
                    .parent()
                    .map(|p| p.join("config.json"))
                    .unwrap_or_else(|| "config.json".into()),
            };
            (cfg, Weights::file(path)?)
        };
        let config = T5Config::from_file(&cfg_path)?;
        Self::new(config, weights.var_builder(dtype, device)?, dtype, path)
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The relative position bias, 1×heads×L×L.
    fn position_bias(&self, l: usize, device: &Device) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let buckets: Vec<u32> = (0..l as i64)
            .flat_map(|q| {
                (0..l as i64).map(move |k| {
                    relative_bucket(
                        k - q,
                        c.relative_attention_num_buckets,
                        c.relative_attention_max_distance,
                    )
                })
            })
            .collect();
        let ids = Tensor::from_vec(buckets, (l, l), device)?;
        // L×L×heads → 1×heads×L×L
        self.relative_bias
            .forward(&ids)?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }

    /// Encodes token ids (B×L, u32) with a mask (B×L, 1 = token, 0 = padding; `None`: all
    /// tokens). Returns the final-normed hidden states B×L×D in the compute dtype; padded
    /// positions hold whatever transformers would put there (they attend to the tokens).
    pub fn forward(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if l == 0 {
            return Err(ModelError::invalid("T5: no tokens to encode"));
        }
        if let Some(m) = mask {
            if m.dims() != [b, l] {
                return Err(ModelError::shape(
                    "T5 attention mask",
                    format!("{b}×{l}"),
                    m.dims(),
                ));
            }
        }
        let c = &self.config;
        let dev = ids.device();
        let mut bias = self.position_bias(l, dev)?.to_dtype(DType::F32)?;
        if let Some(m) = mask {
            // transformers: (1 − mask) · finfo.min, added to the position bias.
            let add =
                ((1.0 - m.to_dtype(DType::F32)?)? * f32::MIN as f64)?.reshape((b, 1, 1, l))?;
            bias = bias.broadcast_add(&add)?;
        }
        let mut x = self.embed.forward(ids)?.to_dtype(self.dtype)?;
        let heads = c.num_heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, heads, c.d_kv))?
                .transpose(1, 2)?
                .contiguous()
        };
        for block in &self.blocks {
            let a = &block.attn;
            let h = a.norm.forward(&x)?;
            let q = split(a.q.forward(&h)?)?;
            let k = split(a.k.forward(&h)?)?;
            let v = split(a.v.forward(&h)?)?;
            // Scores in f32: T5 does not scale them, so in bf16 their rounding would move the
            // softmax by percents.
            let scores = q
                .to_dtype(DType::F32)?
                .matmul(&k.to_dtype(DType::F32)?.t()?)?
                .broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(self.dtype)?;
            let o = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, l, heads * c.d_kv))?;
            x = (x + a.o.forward(&o)?)?;
            let h = block.ff_norm.forward(&x)?;
            let h = match &block.ff {
                Ff::Dense { wi, act: f } => act(*f, &wi.forward(&h)?)?,
                Ff::Gated { wi0, wi1, act: f } => {
                    (act(*f, &wi0.forward(&h)?)? * wi1.forward(&h)?)?
                }
            };
            x = (x + block.wo.forward(&h)?)?;
        }
        Ok(self.final_norm.forward(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::relative_bucket;

    #[test]
    fn buckets_follow_transformers() {
        // Values of transformers' `_relative_position_bucket` (bidirectional, 32 buckets,
        // max distance 128).
        let cases = [
            (0, 0),
            (1, 17),
            (-1, 1),
            (7, 23),
            (-7, 7),
            (8, 24),
            (-8, 8),
            (12, 25),
            (-20, 10),
            (127, 31),
            (-500, 15),
        ];
        for (rel, want) in cases {
            assert_eq!(relative_bucket(rel, 32, 128), want, "relative {rel}");
        }
    }
}
