//! Embeddings: sinusoidal timestep features and their MLP (diffusers `Timesteps`,
//! `TimestepEmbedding`), class labels, and patch embeddings with 2-D sine-cosine positions
//! (`PatchEmbed`), as diffusion transformers use them.

use candle_core::{Device, Module, Tensor};
use candle_nn::{embedding, Conv2dConfig, Embedding, LayerNorm, VarBuilder};
use latentflow_kernels::Conv;
use latentflow_kernels::{linear, Linear};

/// diffusers' `get_timestep_embedding` for timesteps `t` (one row each), computed in f32 like
/// the reference: `dim` features, cosines first when `flip_sin_to_cos`.
pub fn timestep_features(
    t: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / (half as f32 - freq_shift as f32)).exp())
        .collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &t in t {
        let args: Vec<f32> = freqs.iter().map(|f| t as f32 * f).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        let row_start = out.len();
        if flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        out.resize(row_start + dim, 0.0);
    }
    Tensor::from_vec(out, (t.len(), dim), device)
}

/// `linear_2(silu(linear_1(x)))`: the MLP after the timestep features.
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// `linear_1` (in → out) and `linear_2` (out → out) under `vb`.
    pub fn new(vb: VarBuilder, channels: usize, out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            linear_1: linear(channels, out, vb.pp("linear_1"))?,
            linear_2: linear(out, out, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(x)?)?)
    }
}

/// diffusers' `CombinedTimestepLabelEmbeddings` (DiT): 256 sinusoidal features (cosines first,
/// frequency shift one) through a [`TimestepEmbedding`], plus a class-label embedding whose table
/// has one more row, the "no class" label used for classifier-free guidance.
pub struct TimestepLabelEmbedding {
    timestep: TimestepEmbedding,
    labels: Embedding,
    classes: usize,
}

impl TimestepLabelEmbedding {
    /// `timestep_embedder` and `class_embedder.embedding_table` under `vb`.
    pub fn new(vb: VarBuilder, classes: usize, dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            timestep: TimestepEmbedding::new(vb.pp("timestep_embedder"), 256, dim)?,
            labels: embedding(classes + 1, dim, vb.pp("class_embedder.embedding_table"))?,
            classes,
        })
    }

    /// The conditioning vector B×dim for timesteps `t` and labels (`classes` = no class).
    pub fn forward(&self, t: &[f64], labels: &[u32]) -> candle_core::Result<Tensor> {
        if t.len() != labels.len() {
            candle_core::bail!("{} timesteps for {} labels", t.len(), labels.len());
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize > self.classes) {
            candle_core::bail!("class label {l} is out of range (0..={})", self.classes);
        }
        let dev = self.labels.embeddings().device();
        let features = timestep_features(t, 256, true, 1.0, dev)?
            .to_dtype(self.labels.embeddings().dtype())?;
        let ids = Tensor::from_slice(labels, labels.len(), dev)?;
        self.timestep.forward(&features)? + self.labels.forward(&ids)?
    }
}

/// diffusers' 2-D sine-cosine positions (`get_2d_sincos_pos_embed`) for an `h`×`w` grid of
/// patches: rows h·w, `dim` columns (the first half encodes the column index, as diffusers
/// does), computed in f64 and returned as f32.
pub fn sincos_positions_2d(
    dim: usize,
    h: usize,
    w: usize,
    base_size: usize,
    interpolation_scale: f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    if !dim.is_multiple_of(4) {
        candle_core::bail!("2-D sine-cosine positions need a width divisible by 4, got {dim}");
    }
    // torch computes the grid in f32, then the embedding in f64.
    let grid = |n: usize, i: usize| {
        (i as f32 / (n as f32 / base_size as f32) / interpolation_scale as f32) as f64
    };
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / (dim as f64 / 4.0)))
        .collect();
    let mut out = Vec::with_capacity(h * w * dim);
    for y in 0..h {
        for x in 0..w {
            // grid[0] is the column coordinate (meshgrid "xy"), grid[1] the row.
            for pos in [grid(w, x), grid(h, y)] {
                out.extend(omega.iter().map(|o| (pos * o).sin() as f32));
                out.extend(omega.iter().map(|o| (pos * o).cos() as f32));
            }
        }
    }
    Tensor::from_vec(out, (h * w, dim), device)
}

/// Settings of a [`PatchEmbed`].
#[derive(Debug, Clone, Copy)]
pub struct PatchEmbedConfig {
    /// Patch side in latent pixels.
    pub patch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Token width.
    pub dim: usize,
    /// The grid side the positions are scaled to (`sample_size / patch` in diffusers).
    pub base_size: usize,
    /// diffusers' `interpolation_scale`.
    pub interpolation_scale: f64,
    /// A non-affine layer norm after the projection.
    pub layer_norm: bool,
}

/// diffusers' `PatchEmbed` with sine-cosine positions: a stride-`patch` convolution, the
/// patches as a sequence (B×(h·w)×dim), and positions for the input's own grid.
pub struct PatchEmbed {
    proj: Conv,
    norm: Option<LayerNorm>,
    cfg: PatchEmbedConfig,
}

impl PatchEmbed {
    /// `proj` under `vb`.
    pub fn new(vb: VarBuilder, cfg: PatchEmbedConfig) -> candle_core::Result<Self> {
        let conv = Conv2dConfig {
            stride: cfg.patch,
            ..Default::default()
        };
        let proj = Conv::new(cfg.in_channels, cfg.dim, cfg.patch, conv, vb.pp("proj"))?;
        let norm = if cfg.layer_norm {
            Some(crate::adaln::plain_layer_norm(
                cfg.dim,
                1e-6,
                vb.dtype(),
                vb.device(),
            )?)
        } else {
            None
        };
        Ok(Self { proj, norm, cfg })
    }

    /// Tokens B×(h·w)×dim for a latent B×C×H×W (H and W multiples of the patch).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, hh, ww) = x.dims4()?;
        let p = self.cfg.patch;
        if !hh.is_multiple_of(p) || !ww.is_multiple_of(p) {
            candle_core::bail!("a {hh}×{ww} latent does not split into {p}×{p} patches");
        }
        let tokens = self.proj.forward(x)?.flatten_from(2)?.transpose(1, 2)?;
        let tokens = match &self.norm {
            Some(n) => n.forward(&tokens)?,
            None => tokens,
        };
        let pos = sincos_positions_2d(
            self.cfg.dim,
            hh / p,
            ww / p,
            self.cfg.base_size,
            self.cfg.interpolation_scale,
            x.device(),
        )?
        .to_dtype(tokens.dtype())?;
        tokens.broadcast_add(&pos.unsqueeze(0)?)
    }
}
