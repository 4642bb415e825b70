//! PixArt-α and PixArt-Σ, diffusers' `PixArtTransformer2DModel`: a text-conditioned diffusion
//! transformer over latent patches. One timestep embedding (with the resolution and aspect
//! ratio for PixArt-α 1024) is projected once to six modulation vectors that every block adds
//! to its own learned table (adaLN-single); each block is modulated self-attention, a
//! cross-attention to the projected T5 features under their padding mask, and a modulated
//! MLP. Any latent size that splits into patches works.

mod config;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use latentflow_kernels::{linear, Linear};
use latentflow_nn::{
    plain_layer_norm, timestep_features, Attention, GeluFeedForward, PatchEmbed, PatchEmbedConfig,
    TimestepEmbedding,
};

pub use config::PixArtConfig;

use crate::{ModelError, Result};

/// The pixel size conditions of PixArt-α 1024: height and width, and height / width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeCondition {
    /// Image height in pixels.
    pub height: f64,
    /// Image width in pixels.
    pub width: f64,
    /// height / width.
    pub aspect_ratio: f64,
}

/// `PixArtAlphaCombinedTimestepSizeEmbeddings` and the `AdaLayerNormSingle` projection.
struct AdaLnSingle {
    timestep: TimestepEmbedding,
    sizes: Option<(TimestepEmbedding, TimestepEmbedding)>,
    linear: Linear,
}

impl AdaLnSingle {
    fn new(vb: VarBuilder, dim: usize, sizes: bool) -> candle_core::Result<Self> {
        let e = vb.pp("emb");
        let sizes = if sizes {
            Some((
                TimestepEmbedding::new(e.pp("resolution_embedder"), 256, dim / 3)?,
                TimestepEmbedding::new(e.pp("aspect_ratio_embedder"), 256, dim / 3)?,
            ))
        } else {
            None
        };
        Ok(Self {
            timestep: TimestepEmbedding::new(e.pp("timestep_embedder"), 256, dim)?,
            sizes,
            linear: linear(dim, 6 * dim, vb.pp("linear"))?,
        })
    }

    /// (the six modulations B×6·dim, the embedded timestep B×dim) for `b` samples.
    fn forward(
        &self,
        t: f64,
        b: usize,
        size: Option<SizeCondition>,
        dev: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let dtype = self.linear.weight().dtype();
        let f = |v: &[f64]| timestep_features(v, 256, true, 0.0, dev)?.to_dtype(dtype);
        let mut emb = self.timestep.forward(&f(&vec![t; b])?)?;
        if let Some((res, aspect)) = &self.sizes {
            let s = size.ok_or_else(|| {
                candle_core::Error::Msg(
                    "this PixArt model takes the image's resolution and aspect ratio".into(),
                )
            })?;
            let hw: Vec<f64> = (0..b).flat_map(|_| [s.height, s.width]).collect();
            let r = res.forward(&f(&hw)?)?.reshape((b, ()))?;
            let a = aspect.forward(&f(&vec![s.aspect_ratio; b])?)?;
            emb = emb.broadcast_add(&Tensor::cat(&[r, a], 1)?)?;
        }
        let six = self.linear.forward(&candle_nn::ops::silu(&emb)?)?;
        Ok((six, emb))
    }
}

/// `PixArtAlphaTextProjection`: linear, GELU (tanh), linear.
struct CaptionProjection {
    linear_1: Linear,
    linear_2: Linear,
}

impl Module for CaptionProjection {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.gelu()?)
    }
}

/// One block: modulated self-attention, cross-attention, modulated MLP.
struct Block {
    table: Tensor,
    norm1: LayerNorm,
    attn1: Attention,
    attn2: Attention,
    norm2: LayerNorm,
    ff: GeluFeedForward,
}

impl Block {
    fn new(vb: VarBuilder, c: &PixArtConfig) -> candle_core::Result<Self> {
        let dim = c.dim();
        let (h, d, bias) = (
            c.num_attention_heads,
            c.attention_head_dim,
            c.attention_bias,
        );
        Ok(Self {
            table: vb.get((6, dim), "scale_shift_table")?,
            norm1: plain_layer_norm(dim, c.norm_eps, vb.dtype(), vb.device())?,
            attn1: Attention::with_bias(vb.pp("attn1"), dim, dim, h, d, bias)?,
            attn2: Attention::with_bias(vb.pp("attn2"), dim, dim, h, d, bias)?,
            norm2: plain_layer_norm(dim, c.norm_eps, vb.dtype(), vb.device())?,
            ff: GeluFeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// `x` B×L×dim; `six` B×6×dim; `text` B×T×dim with its score bias B×1×1×T.
    fn forward(
        &self,
        x: &Tensor,
        six: &Tensor,
        text: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let m = six.broadcast_add(&self.table.unsqueeze(0)?)?;
        let part = |i: usize| m.narrow(1, i, 1);
        let (shift_msa, scale_msa, gate_msa) = (part(0)?, part(1)?, part(2)?);
        let (shift_mlp, scale_mlp, gate_mlp) = (part(3)?, part(4)?, part(5)?);
        let n = self
            .norm1
            .forward(x)?
            .broadcast_mul(&(scale_msa + 1.0)?)?
            .broadcast_add(&shift_msa)?;
        let a = self.attn1.forward(&n, None, None)?;
        let x = (x + a.broadcast_mul(&gate_msa)?)?;
        let x = (&x + self.attn2.forward_masked(&x, Some(text), bias, None)?)?;
        let n = self
            .norm2
            .forward(&x)?
            .broadcast_mul(&(scale_mlp + 1.0)?)?
            .broadcast_add(&shift_mlp)?;
        let f = self.ff.forward(&n)?;
        x + f.broadcast_mul(&gate_mlp)?
    }
}

/// A loaded PixArt transformer.
pub struct PixArt {
    /// Its config.
    pub config: PixArtConfig,
    patch: PatchEmbed,
    adaln: AdaLnSingle,
    caption: Option<CaptionProjection>,
    blocks: Vec<Block>,
    norm_out: LayerNorm,
    table: Tensor,
    proj_out: Linear,
    /// Where the weights came from.
    pub source: PathBuf,
}

impl PixArt {
    /// Loads a diffusers `PixArtTransformer2DModel` folder (`config.json`, weights sharded or
    /// not), or a pipeline folder holding one in `transformer/`, to compute in `dtype` (`F32`,
    /// or `BF16`: weights stored in bf16 are then held as they are).
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (config, vb, dir) =
            crate::transformer_parts::<PixArtConfig>(path, "PixArt", dtype, device)?;
        Self::new(config, vb, &dir)
    }

    /// The model folder of `path`: itself when it has a config, else its `transformer/`.
    pub fn folder(path: &Path) -> Result<PathBuf> {
        crate::transformer_folder(path, "PixArt")
    }

    /// Builds the model from a checked config; `source` names the weights in messages.
    pub fn new(config: PixArtConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
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
                    interpolation_scale: c.interpolation(),
                    layer_norm: false,
                },
            )?;
            let caption = match c.caption_channels {
                Some(w) => {
                    let vb = vb.pp("caption_projection");
                    Some(CaptionProjection {
                        linear_1: linear(w, dim, vb.pp("linear_1"))?,
                        linear_2: linear(dim, dim, vb.pp("linear_2"))?,
                    })
                }
                None => None,
            };
            let blocks = (0..c.num_layers)
                .map(|i| Block::new(vb.pp(format!("transformer_blocks.{i}")), c))
                .collect::<candle_core::Result<_>>()?;
            Ok(Self {
                patch,
                adaln: AdaLnSingle::new(vb.pp("adaln_single"), dim, c.additional_conditions())?,
                caption,
                blocks,
                norm_out: plain_layer_norm(dim, 1e-6, vb.dtype(), vb.device())?,
                table: vb.get((2, dim), "scale_shift_table")?,
                proj_out: linear(
                    dim,
                    c.patch_size * c.patch_size * c.out(),
                    vb.pp("proj_out"),
                )?,
                config: c.clone(),
                source: source.to_path_buf(),
            })
        };
        build().map_err(|e| ModelError::mismatch(source.to_path_buf(), "PixArt", e))
    }

    /// Checks the inputs: latents B×C×H×W (H, W multiples of the patch), text B×T×width and
    /// its mask B×T.
    pub fn check_input(&self, x: &Tensor, text: &Tensor, mask: Option<&Tensor>) -> Result<()> {
        let c = &self.config;
        let p = c.patch_size;
        let b = match x.dims() {
            [b, ch, h, w]
                if *ch == c.in_channels && *h > 0 && *w > 0 && h % p == 0 && w % p == 0 =>
            {
                *b
            }
            d => {
                return Err(ModelError::shape(
                    "PixArt input",
                    format!("B×{}×H×W with H and W multiples of {p}", c.in_channels),
                    d,
                ))
            }
        };
        match text.dims() {
            [tb, t, w] if *tb == b && *t > 0 && *w == c.text_width() => {}
            d => {
                return Err(ModelError::shape(
                    "PixArt text features",
                    format!("{b}×T×{} (T5 features)", c.text_width()),
                    d,
                ))
            }
        }
        if let Some(m) = mask {
            if m.dims() != [b, text.dim(1)?] {
                return Err(ModelError::shape(
                    "PixArt text mask",
                    format!("{b}×{}", text.dim(1)?),
                    m.dims(),
                ));
            }
        }
        Ok(())
    }

    /// The prediction B×out×H×W for latents `x` at timestep `t`, the T5 features `text`
    /// B×T×width and their mask B×T (1 = token; `None`: all tokens), and the size condition
    /// when the model takes one.
    pub fn forward(
        &self,
        x: &Tensor,
        t: f64,
        text: &Tensor,
        mask: Option<&Tensor>,
        size: Option<SizeCondition>,
    ) -> Result<Tensor> {
        self.check_input(x, text, mask)?;
        let d = self.dtype();
        let out = self.run(&x.to_dtype(d)?, t, &text.to_dtype(d)?, mask, size)?;
        Ok(out.to_dtype(DType::F32)?)
    }

    /// The compute dtype (the weights'); inputs of any float dtype are taken, the result is f32.
    pub fn dtype(&self) -> DType {
        self.proj_out.weight().dtype()
    }

    fn run(
        &self,
        x: &Tensor,
        t: f64,
        text: &Tensor,
        mask: Option<&Tensor>,
        size: Option<SizeCondition>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, _, hh, ww) = x.dims4()?;
        let p = c.patch_size;
        let dim = c.dim();
        let (gh, gw) = (hh / p, ww / p);
        // diffusers' (1 − mask)·−10000, B×1×1×T.
        let bias = mask
            .map(|m| {
                m.to_dtype(DType::F32)?
                    .affine(10000.0, -10000.0)?
                    .reshape((b, 1, 1, ()))
            })
            .transpose()?;
        let text = match &self.caption {
            Some(proj) => proj.forward(text)?,
            None => text.clone(),
        };
        let mut h = self.patch.forward(x)?;
        let (six, emb) = self.adaln.forward(t, b, size, x.device())?;
        let six = six.reshape((b, 6, dim))?;
        for block in &self.blocks {
            h = block.forward(&h, &six, &text, bias.as_ref())?;
        }
        let m = self.table.unsqueeze(0)?.broadcast_add(&emb.unsqueeze(1)?)?;
        let (shift, scale) = (m.narrow(1, 0, 1)?, m.narrow(1, 1, 1)?);
        let h = self
            .norm_out
            .forward(&h)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)?;
        let h = self.proj_out.forward(&h)?;
        let out = c.out();
        h.reshape((b, gh, gw, p, p, out))?
            .permute((0, 5, 1, 3, 2, 4))?
            .contiguous()?
            .reshape((b, out, gh * p, gw * p))
    }
}
