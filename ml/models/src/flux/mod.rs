//! FLUX.1, diffusers' `FluxTransformer2DModel`: the latent packed into 2×2-cell tokens, T5
//! tokens and image tokens through double-stream blocks (each stream its own weights, one
//! attention) and then single-stream blocks (one sequence, attention and MLP side by side),
//! rotary positions over three axes (text/frame, row, column), and a conditioning vector from
//! the timestep, CLIP's pooled embedding and, for guidance-distilled models (dev), the guidance
//! scale. The model predicts the flow-matching velocity.

pub mod bfl;
mod config;
pub mod text;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use latentflow_kernels::{linear, Linear};
use latentflow_nn::{plain_layer_norm, timestep_features, GeluFeedForward, TimestepEmbedding};

pub use config::FluxConfig;

use crate::mmdit::{attend, modulate, Modulator, Qkv};
use crate::{ModelError, Result};

/// Timestep, guidance and pooled-text embedding
/// (`CombinedTimestep[Guidance]TextProjEmbeddings`).
struct TimeText {
    timestep: TimestepEmbedding,
    guidance: Option<TimestepEmbedding>,
    text_1: Linear,
    text_2: Linear,
}

impl TimeText {
    fn new(vb: VarBuilder, c: &FluxConfig) -> candle_core::Result<Self> {
        let dim = c.dim();
        let t = vb.pp("text_embedder");
        Ok(Self {
            timestep: TimestepEmbedding::new(vb.pp("timestep_embedder"), 256, dim)?,
            guidance: if c.guidance_embeds {
                Some(TimestepEmbedding::new(
                    vb.pp("guidance_embedder"),
                    256,
                    dim,
                )?)
            } else {
                None
            },
            text_1: linear(c.pooled_projection_dim, dim, t.pp("linear_1"))?,
            text_2: linear(dim, dim, t.pp("linear_2"))?,
        })
    }

    /// `t` and `g` already ×1000, as the model scales them.
    fn forward(&self, t: f64, g: Option<f64>, pooled: &Tensor) -> candle_core::Result<Tensor> {
        let b = pooled.dim(0)?;
        let f = |v: f64| {
            timestep_features(&vec![v; b], 256, true, 0.0, pooled.device())?
                .to_dtype(pooled.dtype())
        };
        let mut emb = self.timestep.forward(&f(t)?)?;
        if let (Some(ge), Some(g)) = (&self.guidance, g) {
            emb = (emb + ge.forward(&f(g)?)?)?;
        }
        let p = self
            .text_2
            .forward(&candle_nn::ops::silu(&self.text_1.forward(pooled)?)?)?;
        emb + p
    }
}

/// Rotary embedding tables (cos, sin), L×head_dim, for position ids L×3.
fn rope(
    ids: &[[f64; 3]],
    axes: &[usize],
    theta: f64,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let width: usize = axes.iter().sum();
    let (mut cos, mut sin) = (
        Vec::with_capacity(ids.len() * width),
        Vec::with_capacity(ids.len() * width),
    );
    for id in ids {
        for (axis, &dim) in axes.iter().enumerate() {
            let pos = id[axis] as f32 as f64;
            for k in (0..dim).step_by(2) {
                let freq = 1.0 / theta.powf(k as f64 / dim as f64);
                let a = pos * freq;
                let (c, s) = (a.cos() as f32, a.sin() as f32);
                cos.extend([c, c]);
                sin.extend([s, s]);
            }
        }
    }
    let l = ids.len();
    Ok((
        Tensor::from_vec(cos, (l, width), device)?,
        Tensor::from_vec(sin, (l, width), device)?,
    ))
}

/// x·cos + rotate(x)·sin with pairs (x₂ᵢ, x₂ᵢ₊₁) rotated to (−x₂ᵢ₊₁, x₂ᵢ); x B×H×L×D.
/// Computed in f32 (the tables' dtype) whatever `x`'s, as diffusers does; returned in `x`'s.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = &x.to_dtype(DType::F32)?;
    let (b, h, l, d) = x.dims4()?;
    let pairs = x.reshape((b, h, l, d / 2, 2))?;
    let re = pairs.narrow(4, 0, 1)?;
    let im = pairs.narrow(4, 1, 1)?;
    let rotated = Tensor::cat(&[&im.neg()?, &re], 4)?.reshape((b, h, l, d))?;
    (x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?.to_dtype(dtype)
}

/// One double-stream block.
struct DoubleBlock {
    norm1: Modulator,
    norm1_context: Modulator,
    image: Qkv,
    text: Qkv,
    to_out: Linear,
    to_add_out: Linear,
    ff: GeluFeedForward,
    ff_context: GeluFeedForward,
    norm: LayerNorm,
    heads: usize,
}

impl DoubleBlock {
    fn new(vb: VarBuilder, c: &FluxConfig) -> candle_core::Result<Self> {
        let dim = c.dim();
        let hd = c.attention_head_dim;
        let attn = vb.pp("attn");
        Ok(Self {
            norm1: Modulator::new(vb.pp("norm1"), dim, 6)?,
            norm1_context: Modulator::new(vb.pp("norm1_context"), dim, 6)?,
            image: Qkv::new(
                &attn,
                dim,
                hd,
                true,
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
            )?,
            text: Qkv::new(
                &attn,
                dim,
                hd,
                true,
                [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ],
            )?,
            to_out: linear(dim, dim, attn.pp("to_out.0"))?,
            to_add_out: linear(dim, dim, attn.pp("to_add_out"))?,
            ff: GeluFeedForward::new(vb.pp("ff"), dim)?,
            ff_context: GeluFeedForward::new(vb.pp("ff_context"), dim)?,
            norm: plain_layer_norm(dim, 1e-6, vb.dtype(), vb.device())?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        temb: &Tensor,
        rope: &(Tensor, Tensor),
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let m = self.norm1.forward(temb)?;
        let mc = self.norm1_context.forward(temb)?;
        let nx = modulate(&self.norm, x, &m[0], &m[1])?;
        let nc = modulate(&self.norm, ctx, &mc[0], &mc[1])?;
        let [qi, ki, vi] = self.image.forward(&nx, self.heads)?;
        let [qt, kt, vt] = self.text.forward(&nc, self.heads)?;
        // Text first, then the image.
        let cat = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 2);
        let q = apply_rope(&cat(&qt, &qi)?, &rope.0, &rope.1)?;
        let k = apply_rope(&cat(&kt, &ki)?, &rope.0, &rope.1)?;
        let joint = attend(&q, &k, &cat(&vt, &vi)?)?;
        let lt = ctx.dim(1)?;
        let li = x.dim(1)?;
        let a = self.to_out.forward(&joint.narrow(1, lt, li)?)?;
        let x = (x + a.broadcast_mul(&m[2])?)?;
        let n = modulate(&self.norm, &x, &m[3], &m[4])?;
        let x = (&x + self.ff.forward(&n)?.broadcast_mul(&m[5])?)?;
        let a = self.to_add_out.forward(&joint.narrow(1, 0, lt)?)?;
        let c = (ctx + a.broadcast_mul(&mc[2])?)?;
        let n = modulate(&self.norm, &c, &mc[3], &mc[4])?;
        let c = (&c + self.ff_context.forward(&n)?.broadcast_mul(&mc[5])?)?;
        Ok((x, c))
    }
}

/// One single-stream block over `[text; image]`.
struct SingleBlock {
    norm: Modulator,
    qkv: Qkv,
    proj_mlp: Linear,
    proj_out: Linear,
    layer_norm: LayerNorm,
    heads: usize,
}

impl SingleBlock {
    fn new(vb: VarBuilder, c: &FluxConfig) -> candle_core::Result<Self> {
        let dim = c.dim();
        let mlp = dim * 4;
        Ok(Self {
            norm: Modulator::new(vb.pp("norm"), dim, 3)?,
            qkv: Qkv::new(
                &vb.pp("attn"),
                dim,
                c.attention_head_dim,
                true,
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
            )?,
            proj_mlp: linear(dim, mlp, vb.pp("proj_mlp"))?,
            proj_out: linear(dim + mlp, dim, vb.pp("proj_out"))?,
            layer_norm: plain_layer_norm(dim, 1e-6, vb.dtype(), vb.device())?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(
        &self,
        h: &Tensor,
        temb: &Tensor,
        rope: &(Tensor, Tensor),
    ) -> candle_core::Result<Tensor> {
        let m = self.norm.forward(temb)?;
        let n = modulate(&self.layer_norm, h, &m[0], &m[1])?;
        let mlp = self.proj_mlp.forward(&n)?.gelu()?;
        let [q, k, v] = self.qkv.forward(&n, self.heads)?;
        let q = apply_rope(&q, &rope.0, &rope.1)?;
        let k = apply_rope(&k, &rope.0, &rope.1)?;
        let a = attend(&q, &k, &v)?;
        let out = self.proj_out.forward(&Tensor::cat(&[&a, &mlp], 2)?)?;
        h + out.broadcast_mul(&m[2])?
    }
}

/// A loaded Flux transformer.
pub struct Flux {
    /// Its config.
    pub config: FluxConfig,
    x_embedder: Linear,
    context: Linear,
    time_text: TimeText,
    blocks: Vec<DoubleBlock>,
    singles: Vec<SingleBlock>,
    norm_out: Modulator,
    norm: LayerNorm,
    proj_out: Linear,
    /// Where the weights came from.
    pub source: PathBuf,
}

impl Flux {
    /// Loads a diffusers `FluxTransformer2DModel` folder (`config.json`, weights sharded or
    /// not), or a pipeline folder holding one in `transformer/`, to compute in `dtype` (`F32`,
    /// or `BF16`: weights stored in bf16 are then held as they are).
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (config, vb, dir) =
            crate::transformer_parts::<FluxConfig>(path, "Flux", dtype, device)?;
        Self::new(config, vb, &dir)
    }

    /// Loads a single file in Black Forest Labs' layout (`flux1-dev.safetensors`); `config`
    /// (a diffusers transformer folder or its `config.json`) gives the architecture, else it is
    /// read off the file's shapes (FLUX.1's rotary axes assumed). `dtype` as for
    /// [`Flux::load`].
    pub fn load_file(
        file: &Path,
        config: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let files = latentflow_weights::TensorFiles::open(&[file.to_path_buf()])?;
        if !bfl::is_bfl(&files) {
            return Err(ModelError::format(
                file,
                "not a FLUX.1 file in Black Forest Labs' layout (no img_in.weight); a diffusers transformer is a folder",
            ));
        }
        let config = crate::single_file_config(file, config, || bfl::config(&files, file))?;
        let tensors = bfl::tensors(&files, &config, dtype, file)?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Self::new(config, vb, file)
    }

    /// The model folder of `path`: itself when it has a config, else its `transformer/`.
    pub fn folder(path: &Path) -> Result<PathBuf> {
        crate::transformer_folder(path, "Flux")
    }

    /// Builds the model from a checked config; `source` names the weights in messages.
    pub fn new(config: FluxConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
        let build = || -> candle_core::Result<Self> {
            let c = &config;
            let dim = c.dim();
            Ok(Self {
                x_embedder: linear(c.in_channels, dim, vb.pp("x_embedder"))?,
                context: linear(c.joint_attention_dim, dim, vb.pp("context_embedder"))?,
                time_text: TimeText::new(vb.pp("time_text_embed"), c)?,
                blocks: (0..c.num_layers)
                    .map(|i| DoubleBlock::new(vb.pp(format!("transformer_blocks.{i}")), c))
                    .collect::<candle_core::Result<_>>()?,
                singles: (0..c.num_single_layers)
                    .map(|i| SingleBlock::new(vb.pp(format!("single_transformer_blocks.{i}")), c))
                    .collect::<candle_core::Result<_>>()?,
                norm_out: Modulator::new(vb.pp("norm_out"), dim, 2)?,
                norm: plain_layer_norm(dim, 1e-6, vb.dtype(), vb.device())?,
                proj_out: linear(dim, c.out(), vb.pp("proj_out"))?,
                config: c.clone(),
                source: source.to_path_buf(),
            })
        };
        build().map_err(|e| ModelError::mismatch(source.to_path_buf(), "Flux", e))
    }

    /// Checks the inputs: latents B×C×H×W (C the latent channels, H and W even), text
    /// B×T×joint_attention_dim, pooled B×pooled_projection_dim.
    pub fn check_input(&self, x: &Tensor, text: &Tensor, pooled: &Tensor) -> Result<()> {
        let c = &self.config;
        let lc = c.latent_channels();
        let b = match x.dims() {
            [b, ch, h, w] if *ch == lc && *h > 0 && *w > 0 && h % 2 == 0 && w % 2 == 0 => *b,
            d => {
                return Err(ModelError::shape(
                    "Flux input",
                    format!("B×{lc}×H×W with H and W even (2×2 cells make a token)"),
                    d,
                ))
            }
        };
        match text.dims() {
            [tb, t, w] if *tb == b && *t > 0 && *w == c.joint_attention_dim => {}
            d => {
                return Err(ModelError::shape(
                    "Flux text features",
                    format!("{b}×T×{} (T5 features)", c.joint_attention_dim),
                    d,
                ))
            }
        }
        if pooled.dims() != [b, c.pooled_projection_dim] {
            return Err(ModelError::shape(
                "Flux pooled text embedding",
                format!("{b}×{} (CLIP's pooled output)", c.pooled_projection_dim),
                pooled.dims(),
            ));
        }
        Ok(())
    }

    /// The velocity B×C×H×W for latents `x` at timestep `t` (σ·1000), T5 features `text`,
    /// CLIP's pooled embedding and, for a guidance-distilled model, the guidance scale.
    pub fn forward(
        &self,
        x: &Tensor,
        t: f64,
        text: &Tensor,
        pooled: &Tensor,
        guidance: Option<f64>,
    ) -> Result<Tensor> {
        self.check_input(x, text, pooled)?;
        if self.config.guidance_embeds && guidance.is_none() {
            return Err(ModelError::invalid(
                "this Flux model embeds the guidance scale (FLUX.1 dev): give one",
            ));
        }
        let d = self.dtype();
        let out = self.run(
            &x.to_dtype(d)?,
            t,
            &text.to_dtype(d)?,
            &pooled.to_dtype(d)?,
            guidance,
        )?;
        Ok(out.to_dtype(DType::F32)?)
    }

    /// The compute dtype (the weights').
    pub fn dtype(&self) -> DType {
        self.x_embedder.weight().dtype()
    }

    fn run(
        &self,
        x: &Tensor,
        t: f64,
        text: &Tensor,
        pooled: &Tensor,
        guidance: Option<f64>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, ch, hh, ww) = x.dims4()?;
        let (gh, gw) = (hh / 2, ww / 2);
        // Pack: B×C×H×W → B×(H/2·W/2)×(C·4), each token a 2×2 cell block, channel-major.
        let tokens = x
            .reshape((b, ch, gh, 2, gw, 2))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, gh * gw, ch * 4))?;
        let mut h = self.x_embedder.forward(&tokens)?;
        // The pipeline passes t/1000 and the model scales it back, in f32.
        let t = ((t as f32 / 1000.0) * 1000.0) as f64;
        let g = guidance.map(|g| (g as f32 * 1000.0) as f64);
        let temb = self.time_text.forward(t, g, pooled)?;
        let mut ctx = self.context.forward(text)?;
        let lt = text.dim(1)?;
        let mut ids = vec![[0.0; 3]; lt];
        for r in 0..gh {
            for col in 0..gw {
                ids.push([0.0, r as f64, col as f64]);
            }
        }
        let rope = rope(&ids, &c.axes_dims_rope, 10000.0, x.device())?;
        for block in &self.blocks {
            let (nh, nc) = block.forward(&h, &ctx, &temb, &rope)?;
            h = nh;
            ctx = nc;
        }
        let mut all = Tensor::cat(&[&ctx, &h], 1)?;
        for block in &self.singles {
            all = block.forward(&all, &temb, &rope)?;
        }
        let h = all.narrow(1, lt, gh * gw)?;
        let m = self.norm_out.forward(&temb)?;
        let h = modulate(&self.norm, &h, &m[1], &m[0])?;
        let out = self.proj_out.forward(&h)?;
        // Unpack: B×L×(C·4) → B×C×H×W.
        let oc = c.out() / 4;
        out.reshape((b, gh, gw, oc, 2, 2))?
            .permute((0, 3, 1, 4, 2, 5))?
            .contiguous()?
            .reshape((b, oc, hh, ww))
    }
}
