//! DiT (Peebles & Xie), diffusers' `DiTTransformer2DModel`: a class-conditional diffusion
//! transformer over latent patches. Every block has its own timestep-and-label embedding driving
//! adaLN-Zero (shift, scale and gate for the attention and the MLP); the output is unpatchified
//! to the latent's own grid, so any size that splits into patches works (diffusers' own
//! unpatchify assumes a square grid). Models with learned sigma return the variance channels
//! after the noise.

mod config;
mod labels;

use std::path::{Path, PathBuf};

use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use latentflow_kernels::{linear, Linear};
use latentflow_nn::{
    plain_layer_norm, AdaLayerNormZero, Attention, GeluFeedForward, PatchEmbed, PatchEmbedConfig,
    TimestepLabelEmbedding,
};

pub use config::DiTConfig;
pub use labels::ClassNames;

use crate::{ModelError, Result};

/// One DiT block: adaLN-Zero self-attention and MLP.
struct Block {
    emb: TimestepLabelEmbedding,
    norm1: AdaLayerNormZero,
    attn: Attention,
    norm2: LayerNorm,
    ff: GeluFeedForward,
}

impl Block {
    fn new(vb: VarBuilder, c: &DiTConfig) -> candle_core::Result<Self> {
        let dim = c.dim();
        Ok(Self {
            emb: TimestepLabelEmbedding::new(vb.pp("norm1.emb"), c.classes(), dim)?,
            norm1: AdaLayerNormZero::new(vb.pp("norm1"), dim)?,
            attn: Attention::with_bias(
                vb.pp("attn1"),
                dim,
                dim,
                c.num_attention_heads,
                c.attention_head_dim,
                c.attention_bias,
            )?,
            norm2: plain_layer_norm(dim, c.norm_eps, vb.dtype(), vb.device())?,
            ff: GeluFeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// `x` B×L×dim, one timestep and label per sample.
    fn forward(&self, x: &Tensor, t: &[f64], labels: &[u32]) -> candle_core::Result<Tensor> {
        let e = self.emb.forward(t, labels)?;
        let (h, m) = self.norm1.forward(x, &e)?;
        let a = self.attn.forward(&h, None, None)?;
        let x = (x + a.broadcast_mul(&m.gate_msa.unsqueeze(1)?)?)?;
        let n = self
            .norm2
            .forward(&x)?
            .broadcast_mul(&(m.scale_mlp + 1.0)?.unsqueeze(1)?)?
            .broadcast_add(&m.shift_mlp.unsqueeze(1)?)?;
        let f = self.ff.forward(&n)?;
        x + f.broadcast_mul(&m.gate_mlp.unsqueeze(1)?)?
    }
}

/// A loaded DiT.
pub struct DiT {
    /// Its config.
    pub config: DiTConfig,
    patch: PatchEmbed,
    blocks: Vec<Block>,
    norm_out: LayerNorm,
    proj_out_1: Linear,
    proj_out_2: Linear,
    /// Where the weights came from.
    pub source: PathBuf,
}

impl DiT {
    /// Loads a diffusers `DiTTransformer2DModel` folder (`config.json` and weights, sharded or
    /// not), or a pipeline folder holding one in `transformer/`, to compute in `dtype` (`F32`,
    /// or `BF16`: weights stored in bf16 are then held as they are).
    pub fn load(path: &Path, dtype: candle_core::DType, device: &Device) -> Result<Self> {
        let (config, vb, dir) = crate::transformer_parts::<DiTConfig>(path, "DiT", dtype, device)?;
        Self::new(config, vb, &dir)
    }

    /// The model folder of `path`: itself when it has a config, else its `transformer/`.
    pub fn folder(path: &Path) -> Result<PathBuf> {
        crate::transformer_folder(path, "DiT")
    }

    /// Builds the model from a checked config; `source` names the weights in messages.
    pub fn new(config: DiTConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
        let build = || -> candle_core::Result<Self> {
            let c = &config;
            let dim = c.dim();
            let patch = PatchEmbed::new(
                vb.pp("pos_embed"),
                PatchEmbedConfig {
                    patch: c.patch_size,
                    in_channels: c.in_channels,
                    dim,
                    base_size: c.sample_size / c.patch_size,
                    interpolation_scale: 1.0,
                    layer_norm: false,
                },
            )?;
            let blocks = (0..c.num_layers)
                .map(|i| Block::new(vb.pp(format!("transformer_blocks.{i}")), c))
                .collect::<candle_core::Result<_>>()?;
            Ok(Self {
                patch,
                blocks,
                norm_out: plain_layer_norm(dim, 1e-6, vb.dtype(), vb.device())?,
                proj_out_1: linear(dim, 2 * dim, vb.pp("proj_out_1"))?,
                proj_out_2: linear(
                    dim,
                    c.patch_size * c.patch_size * c.out(),
                    vb.pp("proj_out_2"),
                )?,
                config: c.clone(),
                source: source.to_path_buf(),
            })
        };
        build().map_err(|e| ModelError::mismatch(source.to_path_buf(), "DiT", e))
    }

    /// The "no class" label (classifier-free guidance's unconditional input).
    pub fn null_label(&self) -> u32 {
        self.config.classes() as u32
    }

    /// Checks a latent against the model: B×in_channels×H×W, H and W multiples of the patch.
    pub fn check_input(&self, x: &Tensor, labels: &[u32]) -> Result<()> {
        let c = &self.config;
        let dims = x.dims();
        let p = c.patch_size;
        match dims {
            [b, ch, h, w]
                if *ch == c.in_channels && h % p == 0 && w % p == 0 && *h > 0 && *w > 0 =>
            {
                if labels.len() != *b {
                    return Err(ModelError::invalid(format!(
                        "{} class labels for a batch of {b}",
                        labels.len()
                    )));
                }
                if let Some(l) = labels.iter().find(|&&l| l > self.null_label()) {
                    return Err(ModelError::invalid(format!(
                        "class label {l} is out of range: this DiT knows 0..{} ({} is no class)",
                        c.classes() - 1,
                        c.classes()
                    )));
                }
                Ok(())
            }
            _ => Err(ModelError::shape(
                "DiT input",
                format!("B×{}×H×W with H and W multiples of {p}", c.in_channels),
                dims,
            )),
        }
    }

    /// The prediction B×out_channels×H×W (noise, then the variance with learned sigma) for
    /// latents `x` B×C×H×W at timestep `t`, one class label per sample.
    /// Inputs of any float dtype are computed in the model's; the result is f32.
    pub fn forward(&self, x: &Tensor, t: f64, labels: &[u32]) -> Result<Tensor> {
        self.check_input(x, labels)?;
        let out = self.run(&x.to_dtype(self.dtype())?, t, labels)?;
        Ok(out.to_dtype(candle_core::DType::F32)?)
    }

    /// The compute dtype (the weights').
    pub fn dtype(&self) -> candle_core::DType {
        self.proj_out_1.weight().dtype()
    }

    fn run(&self, x: &Tensor, t: f64, labels: &[u32]) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, _, hh, ww) = x.dims4()?;
        let p = c.patch_size;
        let (gh, gw) = (hh / p, ww / p);
        let ts = vec![t; b];
        let mut h = self.patch.forward(x)?;
        for block in &self.blocks {
            h = block.forward(&h, &ts, labels)?;
        }
        let cond = self.blocks[0].emb.forward(&ts, labels)?;
        let mods = self.proj_out_1.forward(&candle_nn::ops::silu(&cond)?)?;
        let dim = c.dim();
        let (shift, scale) = (mods.narrow(1, 0, dim)?, mods.narrow(1, dim, dim)?);
        let h = self
            .norm_out
            .forward(&h)?
            .broadcast_mul(&(scale + 1.0)?.unsqueeze(1)?)?
            .broadcast_add(&shift.unsqueeze(1)?)?;
        let h = self.proj_out_2.forward(&h)?;
        let out = c.out();
        // B×(gh·gw)×(p·p·out) → B×out×(gh·p)×(gw·p).
        h.reshape((b, gh, gw, p, p, out))?
            .permute((0, 5, 1, 3, 2, 4))?
            .contiguous()?
            .reshape((b, out, gh * p, gw * p))
    }
}
