//! Stable Diffusion 3 and 3.5, diffusers' `SD3Transformer2DModel` (MMDiT): image patches and
//! text tokens run through joint transformer blocks, each stream with its own projections and
//! adaLN-Zero modulation but one attention over both; a timestep-plus-pooled-text vector
//! modulates every block. SD3.5 adds RMS-normed queries and keys (`qk_norm`) and, in its
//! medium model, a second image-only attention in the first blocks (`dual_attention_layers`).
//! Positions are sine-cosine on a `pos_embed_max_size` grid, cropped at its centre to the
//! input's patch grid, so any latent size up to that grid works. The model predicts the
//! flow-matching velocity.

mod config;
pub mod sai;
pub mod text;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use latentflow_kernels::Conv;
use latentflow_kernels::{linear, Linear};
use latentflow_nn::{
    plain_layer_norm, sincos_positions_2d, timestep_features, GeluFeedForward, TimestepEmbedding,
};

pub use config::Sd3Config;

use crate::mmdit::{attend, modulate, Modulator, Qkv};
use crate::{ModelError, Result};

/// The timestep and pooled-text embedding (`CombinedTimestepTextProjEmbeddings`).
struct TimeText {
    timestep: TimestepEmbedding,
    text_1: Linear,
    text_2: Linear,
}

impl TimeText {
    fn new(vb: VarBuilder, dim: usize, pooled: usize) -> candle_core::Result<Self> {
        let t = vb.pp("text_embedder");
        Ok(Self {
            timestep: TimestepEmbedding::new(vb.pp("timestep_embedder"), 256, dim)?,
            text_1: linear(pooled, dim, t.pp("linear_1"))?,
            text_2: linear(dim, dim, t.pp("linear_2"))?,
        })
    }

    fn forward(&self, t: f64, pooled: &Tensor) -> candle_core::Result<Tensor> {
        let b = pooled.dim(0)?;
        let f = timestep_features(&vec![t; b], 256, true, 0.0, pooled.device())?
            .to_dtype(pooled.dtype())?;
        let temb = self.timestep.forward(&f)?;
        let p = self
            .text_2
            .forward(&candle_nn::ops::silu(&self.text_1.forward(pooled)?)?)?;
        temb + p
    }
}

/// One MMDiT block.
struct JointBlock {
    norm1: Modulator,
    /// The context's modulation: six vectors, or (last block) a continuous scale and shift.
    norm1_context: Modulator,
    image: Qkv,
    text: Qkv,
    to_out: Linear,
    to_add_out: Option<Linear>,
    attn2: Option<(Qkv, Linear)>,
    ff: GeluFeedForward,
    ff_context: Option<GeluFeedForward>,
    norm: LayerNorm,
    heads: usize,
}

impl JointBlock {
    fn new(vb: VarBuilder, c: &Sd3Config, last: bool, dual: bool) -> candle_core::Result<Self> {
        let dim = c.dim();
        let hd = c.attention_head_dim;
        let rms = c.qk_rms();
        let attn = vb.pp("attn");
        let image = Qkv::new(
            &attn,
            dim,
            hd,
            rms,
            ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
        )?;
        let text = Qkv::new(
            &attn,
            dim,
            hd,
            rms,
            [
                "add_q_proj",
                "add_k_proj",
                "add_v_proj",
                "norm_added_q",
                "norm_added_k",
            ],
        )?;
        let attn2 = if dual {
            let a2 = vb.pp("attn2");
            Some((
                Qkv::new(
                    &a2,
                    dim,
                    hd,
                    rms,
                    ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                )?,
                linear(dim, dim, a2.pp("to_out.0"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            norm1: Modulator::new(vb.pp("norm1"), dim, if dual { 9 } else { 6 })?,
            norm1_context: Modulator::new(vb.pp("norm1_context"), dim, if last { 2 } else { 6 })?,
            image,
            text,
            to_out: linear(dim, dim, attn.pp("to_out.0"))?,
            to_add_out: if last {
                None
            } else {
                Some(linear(dim, dim, attn.pp("to_add_out"))?)
            },
            attn2,
            ff: GeluFeedForward::new(vb.pp("ff"), dim)?,
            ff_context: if last {
                None
            } else {
                Some(GeluFeedForward::new(vb.pp("ff_context"), dim)?)
            },
            norm: plain_layer_norm(dim, 1e-6, vb.dtype(), vb.device())?,
            heads: c.num_attention_heads,
        })
    }

    /// The image tokens `x` and the text tokens `ctx` after the block (no text after the last).
    fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        temb: &Tensor,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let x_in = x;
        let m = self.norm1.forward(temb)?;
        let nx = modulate(&self.norm, x, &m[0], &m[1])?;
        let mc = self.norm1_context.forward(temb)?;
        // The last block's context norm is continuous: scale first, then shift.
        let nc = if mc.len() == 2 {
            modulate(&self.norm, ctx, &mc[1], &mc[0])?
        } else {
            modulate(&self.norm, ctx, &mc[0], &mc[1])?
        };
        let [qi, ki, vi] = self.image.forward(&nx, self.heads)?;
        let [qt, kt, vt] = self.text.forward(&nc, self.heads)?;
        let cat = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 2);
        let joint = attend(&cat(&qi, &qt)?, &cat(&ki, &kt)?, &cat(&vi, &vt)?)?;
        let li = x.dim(1)?;
        let lt = ctx.dim(1)?;
        let attn_x = self.to_out.forward(&joint.narrow(1, 0, li)?)?;
        let mut x = (x + attn_x.broadcast_mul(&m[2])?)?;
        if let Some((qkv, out)) = &self.attn2 {
            // MMDiT-X: an image-only attention on the block's input, modulated anew.
            let n2 = modulate(&self.norm, x_in, &m[6], &m[7])?;
            let [q, k, v] = qkv.forward(&n2, self.heads)?;
            let a2 = out.forward(&attend(&q, &k, &v)?)?;
            x = (x + a2.broadcast_mul(&m[8])?)?;
        }
        let nf = modulate(&self.norm, &x, &m[3], &m[4])?;
        x = (&x + self.ff.forward(&nf)?.broadcast_mul(&m[5])?)?;
        let ctx = match (&self.to_add_out, &self.ff_context) {
            (Some(out), Some(ff)) => {
                let a = out.forward(&joint.narrow(1, li, lt)?)?;
                let c = (ctx + a.broadcast_mul(&mc[2])?)?;
                let n = modulate(&self.norm, &c, &mc[3], &mc[4])?;
                Some((&c + ff.forward(&n)?.broadcast_mul(&mc[5])?)?)
            }
            _ => None,
        };
        Ok((x, ctx))
    }
}

/// A loaded SD3 transformer.
pub struct Sd3 {
    /// Its config.
    pub config: Sd3Config,
    proj: Conv,
    positions: Tensor,
    time_text: TimeText,
    context: Linear,
    blocks: Vec<JointBlock>,
    norm_out: Modulator,
    norm: LayerNorm,
    proj_out: Linear,
    /// Where the weights came from.
    pub source: PathBuf,
}

impl Sd3 {
    /// Loads a diffusers `SD3Transformer2DModel` folder (`config.json`, weights sharded or
    /// not), or a pipeline folder holding one in `transformer/`, to compute in `dtype` (`F32`,
    /// or `BF16`: weights stored in bf16 are then held as they are).
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (config, vb, dir) = crate::transformer_parts::<Sd3Config>(path, "SD3", dtype, device)?;
        Self::new(config, vb, &dir)
    }

    /// Loads a single file in Stability AI's layout (`sd3_medium.safetensors`); `config` (a
    /// diffusers transformer folder or its `config.json`) gives the architecture, else it is
    /// read off the file's shapes (64-wide heads unless its RMS norms say otherwise). `dtype`
    /// as for [`Sd3::load`].
    pub fn load_file(
        file: &Path,
        config: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let files = latentflow_weights::TensorFiles::open(&[file.to_path_buf()])?;
        let config = crate::single_file_config(file, config, || sai::config(&files, file))?;
        if sai::prefix(&files).is_none() {
            return Err(ModelError::format(
                file,
                "not an SD3 transformer in Stability AI's layout (no joint_blocks.0.x_block.attn.qkv.weight); a diffusers transformer is a folder",
            ));
        }
        let tensors = sai::tensors(&files, &config, dtype, file)?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Self::new(config, vb, file)
    }

    /// The model folder of `path`: itself when it has a config, else its `transformer/`.
    pub fn folder(path: &Path) -> Result<PathBuf> {
        crate::transformer_folder(path, "SD3")
    }

    /// Builds the model from a checked config; `source` names the weights in messages.
    pub fn new(config: Sd3Config, vb: VarBuilder, source: &Path) -> Result<Self> {
        let build = || -> candle_core::Result<Self> {
            let c = &config;
            let dim = c.dim();
            let p = c.patch_size;
            let conv = candle_nn::Conv2dConfig {
                stride: p,
                ..Default::default()
            };
            let pe = vb.pp("pos_embed");
            let proj = Conv::new(c.in_channels, dim, p, conv, pe.pp("proj"))?;
            let side = c.pos_embed_max_size.unwrap_or(c.sample_size / p);
            let positions = if pe.contains_tensor("pos_embed") {
                pe.get((1, side * side, dim), "pos_embed")?.squeeze(0)?
            } else {
                sincos_positions_2d(dim, side, side, c.sample_size / p, 1.0, vb.device())?
                    .to_dtype(vb.dtype())?
            };
            let blocks = (0..c.num_layers)
                .map(|i| {
                    JointBlock::new(
                        vb.pp(format!("transformer_blocks.{i}")),
                        c,
                        i + 1 == c.num_layers,
                        c.dual_attention_layers.contains(&i),
                    )
                })
                .collect::<candle_core::Result<_>>()?;
            Ok(Self {
                proj,
                positions,
                time_text: TimeText::new(vb.pp("time_text_embed"), dim, c.pooled_projection_dim)?,
                context: linear(
                    c.joint_attention_dim,
                    c.caption_projection_dim,
                    vb.pp("context_embedder"),
                )?,
                blocks,
                norm_out: Modulator::new(vb.pp("norm_out"), dim, 2)?,
                norm: plain_layer_norm(dim, 1e-6, vb.dtype(), vb.device())?,
                proj_out: linear(dim, p * p * c.out(), vb.pp("proj_out"))?,
                config: c.clone(),
                source: source.to_path_buf(),
            })
        };
        build().map_err(|e| ModelError::mismatch(source.to_path_buf(), "SD3", e))
    }

    /// The positions' grid side.
    fn side(&self) -> usize {
        let c = &self.config;
        c.pos_embed_max_size.unwrap_or(c.sample_size / c.patch_size)
    }

    /// Checks the inputs: latents B×C×H×W (H, W multiples of the patch, the patch grid within
    /// the positions' grid), text B×T×joint_attention_dim, pooled B×pooled_projection_dim.
    pub fn check_input(&self, x: &Tensor, text: &Tensor, pooled: &Tensor) -> Result<()> {
        let c = &self.config;
        let p = c.patch_size;
        let side = self.side();
        let b = match x.dims() {
            [b, ch, h, w]
                if *ch == c.in_channels
                    && *h > 0
                    && *w > 0
                    && h % p == 0
                    && w % p == 0
                    && h / p <= side
                    && w / p <= side =>
            {
                *b
            }
            d => {
                return Err(ModelError::shape(
                    "SD3 input",
                    format!(
                        "B×{}×H×W with H and W multiples of {p}, at most {} (the positions' grid is {side}×{side} patches)",
                        c.in_channels,
                        side * p
                    ),
                    d,
                ))
            }
        };
        match text.dims() {
            [tb, t, w] if *tb == b && *t > 0 && *w == c.joint_attention_dim => {}
            d => {
                return Err(ModelError::shape(
                    "SD3 text features",
                    format!("{b}×T×{}", c.joint_attention_dim),
                    d,
                ))
            }
        }
        if pooled.dims() != [b, c.pooled_projection_dim] {
            return Err(ModelError::shape(
                "SD3 pooled text embedding",
                format!("{b}×{}", c.pooled_projection_dim),
                pooled.dims(),
            ));
        }
        Ok(())
    }

    /// The velocity B×out×H×W for latents `x` at timestep `t` (σ·1000), the text features
    /// `text` B×T×joint_attention_dim and the pooled embedding `pooled`.
    /// Inputs of any float dtype are computed in the model's; the result is f32.
    pub fn forward(&self, x: &Tensor, t: f64, text: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        self.check_input(x, text, pooled)?;
        let d = self.dtype();
        let out = self.run(&x.to_dtype(d)?, t, &text.to_dtype(d)?, &pooled.to_dtype(d)?)?;
        Ok(out.to_dtype(DType::F32)?)
    }

    /// The compute dtype (the weights').
    pub fn dtype(&self) -> DType {
        self.positions.dtype()
    }

    fn run(
        &self,
        x: &Tensor,
        t: f64,
        text: &Tensor,
        pooled: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, _, hh, ww) = x.dims4()?;
        let p = c.patch_size;
        let dim = c.dim();
        let (gh, gw) = (hh / p, ww / p);
        let side = self.side();
        let (top, left) = ((side - gh) / 2, (side - gw) / 2);
        let pos = self
            .positions
            .reshape((side, side, dim))?
            .narrow(0, top, gh)?
            .narrow(1, left, gw)?
            .reshape((gh * gw, dim))?;
        let mut h = self
            .proj
            .forward(x)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .broadcast_add(&pos.unsqueeze(0)?)?
            .contiguous()?;
        let temb = self.time_text.forward(t, pooled)?;
        let mut ctx = self.context.forward(text)?;
        for block in &self.blocks {
            let (nh, nc) = block.forward(&h, &ctx, &temb)?;
            h = nh;
            if let Some(nc) = nc {
                ctx = nc;
            }
        }
        let m = self.norm_out.forward(&temb)?;
        let h = modulate(&self.norm, &h, &m[1], &m[0])?;
        let h = self.proj_out.forward(&h)?;
        let out = c.out();
        h.reshape((b, gh, gw, p, p, out))?
            .permute((0, 5, 1, 3, 2, 4))?
            .contiguous()?
            .reshape((b, out, gh * p, gw * p))
    }
}
