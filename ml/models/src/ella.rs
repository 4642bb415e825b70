//! ELLA's Timestep-Aware Semantic Connector (TSC): a perceiver resampler whose latents and
//! layer norms depend on the diffusion timestep, turning an LLM's token features (T5 for the
//! released SD 1.5 model) into a fixed number of context tokens for the UNet.
//!
//! Checkpoint keys are those of the authors' `ELLA` module (`ella-sd1.5-tsc-t5xl.safetensors`):
//! `time_embedding.linear_{1,2}`, `connector.latents`, `connector.time_aware_linear`,
//! `connector.proj_in`, `connector.perceiver_blocks.{i}.{attn,mlp,ln_1,ln_2,ln_ff}`. The file
//! holds no configuration: every size but the head count is read from the tensors' shapes.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use latentflow_kernels::{linear, Linear};
use latentflow_nn::embeddings::{timestep_features, TimestepEmbedding};
use latentflow_weights::{Header, Weights};

use crate::{ModelError, Result};

/// The sizes of a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EllaConfig {
    /// Sinusoidal timestep channels (320).
    pub time_channel: usize,
    /// Timestep embedding width (768).
    pub time_embed_dim: usize,
    /// Width of the latents and of the output (768, the UNet's cross-attention width).
    pub width: usize,
    /// Perceiver blocks (6).
    pub layers: usize,
    /// Attention heads (8); not recorded in checkpoints.
    pub heads: usize,
    /// Output tokens (64).
    pub num_latents: usize,
    /// Width of the text features (2048 for flan-t5-xl).
    pub input_dim: usize,
}

impl EllaConfig {
    /// The released SD 1.5 connector's sizes.
    pub const SD15: EllaConfig = EllaConfig {
        time_channel: 320,
        time_embed_dim: 768,
        width: 768,
        layers: 6,
        heads: 8,
        num_latents: 64,
        input_dim: 2048,
    };

    /// The sizes stored in a checkpoint's header, with `heads` heads.
    pub fn from_header(h: &Header, path: &Path, heads: usize) -> Result<Self> {
        let shape = |name: &str| -> Result<Vec<usize>> {
            h.shape(name).map(<[usize]>::to_vec).ok_or_else(|| {
                ModelError::format(
                    path,
                    format!("not an ELLA connector: no tensor `{name}` (expected the keys of the authors' ELLA module)"),
                )
            })
        };
        let two = |name: &str| -> Result<(usize, usize)> {
            match shape(name)?.as_slice() {
                [a, b] => Ok((*a, *b)),
                other => Err(ModelError::format(
                    path,
                    format!("`{name}` has shape {other:?}, expected 2 dimensions"),
                )),
            }
        };
        let (num_latents, width) = two("connector.latents")?;
        let (time_embed_dim, time_channel) = two("time_embedding.linear_1.weight")?;
        let (_, input_dim) = two("connector.proj_in.weight")?;
        let mut layers = 0;
        while h.has_prefix(&format!("connector.perceiver_blocks.{layers}.")) {
            layers += 1;
        }
        if layers == 0 {
            return Err(ModelError::format(
                path,
                "an ELLA connector without perceiver blocks",
            ));
        }
        if heads == 0 || width % heads != 0 {
            return Err(ModelError::invalid(format!(
                "ELLA: width {width} does not split into {heads} heads"
            )));
        }
        if time_channel % 2 != 0 {
            return Err(ModelError::format(
                path,
                format!("odd timestep channels {time_channel}"),
            ));
        }
        Ok(Self {
            time_channel,
            time_embed_dim,
            width,
            layers,
            heads,
            num_latents,
            input_dim,
        })
    }
}

/// diffusers-style adaptive layer norm: `LN(x)·(1 + scale) + shift`, `[shift, scale]` from the
/// time embedding (shift first).
struct AdaLayerNorm {
    linear: Linear,
}

impl AdaLayerNorm {
    fn forward(&self, x: &Tensor, temb_silu: &Tensor) -> candle_core::Result<Tensor> {
        let emb = self.linear.forward(temb_silu)?; // B×1×2W
        let w = emb.dim(D::Minus1)? / 2;
        let shift = emb.narrow(D::Minus1, 0, w)?;
        let scale = emb.narrow(D::Minus1, w, w)?;
        layer_norm(x, 1e-6)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)
    }
}

/// Layer norm without affine parameters over the last dimension.
fn layer_norm(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let c = x.broadcast_sub(&mean)?;
    let var = c.sqr()?.mean_keepdim(D::Minus1)?;
    c.broadcast_div(&(var + eps)?.sqrt()?)
}

/// torch's `nn.MultiheadAttention` (packed `in_proj`, scaled by 1/√head width, no mask).
pub struct MultiheadAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl MultiheadAttention {
    /// `in_proj_weight`, `in_proj_bias` and `out_proj` under `vb`, for width `e`.
    pub fn new(vb: VarBuilder, e: usize, heads: usize) -> candle_core::Result<Self> {
        let w = vb.get((3 * e, e), "in_proj_weight")?;
        let b = vb.get(3 * e, "in_proj_bias")?;
        let part = |i: usize| -> candle_core::Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, i * e, e)?.contiguous()?,
                Some(b.narrow(0, i * e, e)?.contiguous()?),
            ))
        };
        Ok(Self {
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            out: linear(e, e, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// Attention of `q` (B×Lq×E) over `kv` (B×Lk×E), batch first.
    pub fn forward(&self, q: &Tensor, kv: &Tensor) -> candle_core::Result<Tensor> {
        let (b, lq, e) = q.dims3()?;
        let lk = kv.dim(1)?;
        let dh = e / self.heads;
        let split = |t: Tensor, l: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        let qh = split((self.q.forward(q)? * (dh as f64).powf(-0.5))?, lq)?;
        let kh = split(self.k.forward(kv)?, lk)?;
        let vh = split(self.v.forward(kv)?, lk)?;
        let o = latentflow_kernels::attention(&qh, &kh, &vh, Default::default())?
            .transpose(1, 2)?
            .reshape((b, lq, e))?;
        self.out.forward(&o)
    }
}

struct Block {
    attn: MultiheadAttention,
    c_fc: Linear,
    c_proj: Linear,
    ln_1: AdaLayerNorm,
    ln_2: AdaLayerNorm,
    ln_ff: AdaLayerNorm,
}

/// The connector: timestep embedding plus perceiver resampler.
pub struct Ella {
    /// Its sizes.
    pub config: EllaConfig,
    time_embedding: TimestepEmbedding,
    latents: Tensor,
    time_aware_linear: Linear,
    proj_in: Linear,
    blocks: Vec<Block>,
}

impl Ella {
    /// Builds the connector from `vb`.
    pub fn new(config: EllaConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
        Self::build(config, vb)
            .map_err(|e| ModelError::mismatch(source.to_path_buf(), "ELLA connector", e))
    }

    fn build(c: EllaConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let time_embedding =
            TimestepEmbedding::new(vb.pp("time_embedding"), c.time_channel, c.time_embed_dim)?;
        let con = vb.pp("connector");
        let ada = |vb: VarBuilder| -> candle_core::Result<AdaLayerNorm> {
            Ok(AdaLayerNorm {
                linear: linear(c.time_embed_dim, 2 * c.width, vb.pp("linear"))?,
            })
        };
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let b = con.pp(format!("perceiver_blocks.{i}"));
            blocks.push(Block {
                attn: MultiheadAttention::new(b.pp("attn"), c.width, c.heads)?,
                c_fc: linear(c.width, 4 * c.width, b.pp("mlp.c_fc"))?,
                c_proj: linear(4 * c.width, c.width, b.pp("mlp.c_proj"))?,
                ln_1: ada(b.pp("ln_1"))?,
                ln_2: ada(b.pp("ln_2"))?,
                ln_ff: ada(b.pp("ln_ff"))?,
            });
        }
        Ok(Self {
            config: c,
            time_embedding,
            latents: con.get((c.num_latents, c.width), "latents")?,
            time_aware_linear: linear(c.time_embed_dim, c.width, con.pp("time_aware_linear"))?,
            proj_in: linear(c.input_dim, c.width, con.pp("proj_in"))?,
            blocks,
        })
    }

    /// Loads a connector `.safetensors` file (sizes from its header, `heads` heads), in f32.
    pub fn load(path: &Path, heads: usize, device: &Device) -> Result<Self> {
        let header = Header::read(path)?;
        let config = EllaConfig::from_header(&header, path, heads)?;
        let vb = Weights::file(path)?.var_builder(DType::F32, device)?;
        Self::new(config, vb, path)
    }

    /// The context for the UNet, B×num_latents×width, from text features B×L×input_dim at
    /// timestep `t` (the same for every row). Every token given is attended: there is no mask,
    /// as in the authors' module.
    pub fn forward(&self, features: &Tensor, t: f64) -> Result<Tensor> {
        let c = &self.config;
        let (b, l, d) = features.dims3()?;
        if d != c.input_dim || l == 0 {
            return Err(ModelError::shape(
                "ELLA text features",
                format!(
                    "B×L×{} with L ≥ 1 (the connector's input width)",
                    c.input_dim
                ),
                features.dims(),
            ));
        }
        let dev = features.device();
        let x = features.to_dtype(DType::F32)?;
        let e0 = timestep_features(&[t], c.time_channel, true, 0.0, dev)?.unsqueeze(1)?; // 1×1×C
        let temb = self.time_embedding.forward(&e0)?.repeat((b, 1, 1))?; // B×1×E
        let temb_silu = candle_nn::ops::silu(&temb)?;
        let mut latents = self
            .latents
            .unsqueeze(0)?
            .repeat((b, 1, 1))?
            .broadcast_add(&self.time_aware_linear.forward(&temb_silu)?)?;
        let x = self.proj_in.forward(&x)?;
        for blk in &self.blocks {
            let normed = blk.ln_1.forward(&latents, &temb_silu)?;
            let kv = Tensor::cat(&[&normed, &blk.ln_2.forward(&x, &temb_silu)?], 1)?;
            latents = (latents + blk.attn.forward(&normed, &kv)?)?;
            let h = blk.ln_ff.forward(&latents, &temb_silu)?;
            let h = blk.c_fc.forward(&h)?.relu()?.sqr()?;
            latents = (latents + blk.c_proj.forward(&h)?)?;
        }
        Ok(latents)
    }
}
