//! The motion module (diffusers' `AnimateDiffTransformer3D` with its `BasicTransformerBlock`s in
//! the temporal setting) and the adapter holding one per UNet layer.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{layer_norm, LayerNorm, VarBuilder};
use latentflow_kernels::GroupNorm;
use latentflow_kernels::{linear, Linear};
use latentflow_nn::{Attention, GegluFeedForward};
use latentflow_weights::{Checked, Header, Weights};

use super::config::{MotionAdapterConfig, MotionPlan};
use super::keys::{self, Layout};
use super::windows::ContextWindows;
use crate::{ModelError, Result};

/// diffusers' `SinusoidalPositionalEmbedding` table, 1×L×dim, computed in f32 as torch does.
fn sinusoids(len: usize, dim: usize, device: &Device) -> candle_core::Result<Tensor> {
    let scale = (-(10000f64.ln()) / dim as f64) as f32;
    let mut pe = vec![0f32; len * dim];
    for p in 0..len {
        for k in (0..dim).step_by(2) {
            let a = p as f32 * (k as f32 * scale).exp();
            pe[p * dim + k] = a.sin();
            if k + 1 < dim {
                pe[p * dim + k + 1] = a.cos();
            }
        }
    }
    Tensor::from_vec(pe, (1, len, dim), device)
}

/// One temporal transformer block: two self-attentions over the frames (position table added
/// to each one's normalised input) and a GEGLU feed-forward, each pre-normed and residual.
struct TemporalBlock {
    norm1: LayerNorm,
    attn1: Attention,
    pe1: Tensor,
    norm2: LayerNorm,
    attn2: Attention,
    pe2: Tensor,
    norm3: LayerNorm,
    ff: GegluFeedForward,
}

impl TemporalBlock {
    fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        max_len: usize,
        layout: Layout,
    ) -> candle_core::Result<Self> {
        let ln = |vb| layer_norm(dim, 1e-5, vb);
        // The table as stored when the file has one (the original layout keeps one per
        // attention; extended-length checkpoints need theirs), else computed.
        let table = |name: &str| -> candle_core::Result<Tensor> {
            if vb.contains_tensor(name) {
                let t = vb.get_unchecked(name)?;
                let (one, len, d) = t.dims3()?;
                if one != 1 || d != dim || len < max_len {
                    candle_core::bail!(
                        "position table `{name}` is {:?}, expected 1×{max_len}×{dim}",
                        t.dims()
                    );
                }
                t.narrow(1, 0, max_len)?.to_dtype(DType::F32)
            } else {
                sinusoids(max_len, dim, vb.device())
            }
        };
        let (pe1, pe2) = match layout {
            Layout::Diffusers => {
                let t = table("pos_embed.pe")?;
                (t.clone(), t)
            }
            Layout::Original => (table(keys::ORIGINAL_PE_1)?, table(keys::ORIGINAL_PE_2)?),
        };
        Ok(Self {
            norm1: ln(vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, dim / heads)?,
            pe1,
            norm2: ln(vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, dim, heads, dim / heads)?,
            pe2,
            norm3: ln(vb.pp("norm3"))?,
            ff: GegluFeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// The two attentions with their residuals, `x` tokens×F×dim (F at most the table's).
    fn attend(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let f = x.dim(1)?;
        let n = self
            .norm1
            .forward(x)?
            .broadcast_add(&self.pe1.narrow(1, 0, f)?)?;
        let x = (self.attn1.forward(&n, None, None)? + x)?;
        let n = self
            .norm2
            .forward(&x)?
            .broadcast_add(&self.pe2.narrow(1, 0, f)?)?;
        self.attn2.forward(&n, None, None)? + x
    }

    /// The attentions over each window of `windows` (positions counted from the window's
    /// start), the results blended frame by frame with the windows' weights.
    fn attend_windowed(&self, x: &Tensor, windows: &ContextWindows) -> candle_core::Result<Tensor> {
        let f = x.dim(1)?;
        let l = windows.length;
        if f <= l {
            return self.attend(x);
        }
        let weights = windows.weighting.weights(l);
        let mut total = vec![0f32; f];
        let mut sum: Option<Tensor> = None;
        for span in windows.spans(f) {
            let kept = l - span.keep;
            let w = &weights[span.keep..];
            for (k, wk) in w.iter().enumerate() {
                total[span.start + span.keep + k] += wk;
            }
            let w = Tensor::from_slice(w, (1, kept, 1), x.device())?.to_dtype(x.dtype())?;
            let y = self
                .attend(&x.narrow(1, span.start, l)?)?
                .narrow(1, span.keep, kept)?
                .broadcast_mul(&w)?;
            let first = span.start + span.keep;
            let y = y.pad_with_zeros(1, first, f - first - kept)?;
            sum = Some(match sum {
                Some(s) => (s + y)?,
                None => y,
            });
        }
        let total = Tensor::from_vec(total, (1, f, 1), x.device())?.to_dtype(x.dtype())?;
        match sum {
            Some(s) => s.broadcast_div(&total),
            None => self.attend(x),
        }
    }

    /// `x` tokens×F×dim, the attentions windowed when `windows` is given.
    fn forward(&self, x: &Tensor, windows: Option<&ContextWindows>) -> candle_core::Result<Tensor> {
        let x = match windows {
            Some(w) => self.attend_windowed(x, w)?,
            None => self.attend(x)?,
        };
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// diffusers' `AnimateDiffTransformer3D`: attention along the frames at every pixel.
pub struct MotionModule {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TemporalBlock>,
    proj_out: Linear,
    max_len: usize,
}

impl MotionModule {
    fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
        groups: usize,
        max_len: usize,
        layout: Layout,
    ) -> candle_core::Result<Self> {
        let blocks = (0..layers)
            .map(|k| {
                TemporalBlock::new(
                    vb.pp(format!("transformer_blocks.{k}")),
                    channels,
                    heads,
                    max_len,
                    layout,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::new(groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: linear(channels, channels, vb.pp("proj_in"))?,
            blocks,
            proj_out: linear(channels, channels, vb.pp("proj_out"))?,
            max_len,
        })
    }

    /// `x` (B·F)×C×H×W, frames of each sample consecutive → the same shape. With `windows`
    /// (FreeNoise) the attentions run over windows of frames and any number of frames is
    /// taken; without, at most `motion_max_seq_length`.
    pub fn forward(
        &self,
        x: &Tensor,
        frames: usize,
        windows: Option<&ContextWindows>,
    ) -> candle_core::Result<Tensor> {
        let longest = windows.map_or(frames, |w| w.length.min(frames));
        if longest > self.max_len {
            candle_core::bail!(
                "{longest} frames at once are more than this motion module's {} (motion_max_seq_length)",
                self.max_len
            );
        }
        let (bf, c, h, w) = x.dims4()?;
        if frames == 0 || bf % frames != 0 {
            candle_core::bail!("a batch of {bf} frames does not split into videos of {frames}");
        }
        let b = bf / frames;
        // GroupNorm over (C, F, H, W) of each sample together.
        let v = x.reshape((b, frames, c, h, w))?.permute((0, 2, 1, 3, 4))?;
        let v = self.norm.forward(&v.contiguous()?)?;
        let tokens = v
            .permute((0, 3, 4, 2, 1))?
            .contiguous()?
            .reshape((b * h * w, frames, c))?;
        let mut t = self.proj_in.forward(&tokens)?;
        for block in &self.blocks {
            t = block.forward(&t, windows)?;
        }
        let t = self.proj_out.forward(&t)?;
        let out = t
            .reshape((b, h, w, frames, c))?
            .permute((0, 3, 4, 1, 2))?
            .contiguous()?
            .reshape((bf, c, h, w))?;
        out + x
    }
}

/// The motion modules for every layer of a UNet.
pub struct MotionAdapter {
    /// The expanded config.
    pub plan: MotionPlan,
    /// Per down block, one per layer.
    pub down: Vec<Vec<MotionModule>>,
    /// The mid block's (empty without a mid module).
    pub mid: Vec<MotionModule>,
    /// Per up block, one per layer.
    pub up: Vec<Vec<MotionModule>>,
    /// Where the weights came from.
    pub source: PathBuf,
}

impl MotionAdapter {
    /// Builds the modules of `plan` from `vb` (diffusers' names), their norms in `groups`
    /// groups (the UNet's `norm_num_groups`, as `UNetMotionModel` does).
    pub fn new(
        plan: MotionPlan,
        groups: usize,
        vb: VarBuilder,
        layout: Layout,
        source: &Path,
    ) -> Result<Self> {
        let build = || -> candle_core::Result<Self> {
            let module = |vb: VarBuilder, level: usize, layers: usize| {
                MotionModule::new(
                    vb,
                    plan.channels[level],
                    plan.heads[level],
                    layers,
                    groups,
                    plan.max_seq_length,
                    layout,
                )
            };
            let n = plan.channels.len();
            let mut down = Vec::with_capacity(n);
            for i in 0..n {
                let vb = vb.pp(format!("down_blocks.{i}.motion_modules"));
                let mods = (0..plan.layers[i])
                    .map(|j| module(vb.pp(j), i, plan.transformer_layers[i]))
                    .collect::<candle_core::Result<_>>()?;
                down.push(mods);
            }
            let mid = plan
                .mid
                .iter()
                .enumerate()
                .map(|(j, &l)| module(vb.pp(format!("mid_block.motion_modules.{j}")), n - 1, l))
                .collect::<candle_core::Result<_>>()?;
            let mut up = Vec::with_capacity(n);
            for i in 0..n {
                let level = n - 1 - i;
                let vb = vb.pp(format!("up_blocks.{i}.motion_modules"));
                let mods = (0..plan.layers[level] + 1)
                    .map(|j| module(vb.pp(j), level, plan.transformer_layers[level]))
                    .collect::<candle_core::Result<_>>()?;
                up.push(mods);
            }
            Ok(Self {
                plan: plan.clone(),
                down,
                mid,
                up,
                source: source.to_path_buf(),
            })
        };
        build().map_err(|e| ModelError::mismatch(source.to_path_buf(), "motion adapter", e))
    }

    /// Loads a diffusers `MotionAdapter` folder (`config.json` and weights), or one
    /// `.safetensors` file in either layout (diffusers' names, or the original checkpoints'
    /// `temporal_transformer` names, their config read off the names and shapes). `groups`
    /// is the UNet's `norm_num_groups`.
    pub fn load(path: &Path, groups: usize, device: &Device) -> Result<Self> {
        if path.is_dir() {
            let config = MotionAdapterConfig::from_file(&path.join("config.json"))?;
            let plan = config.plan().map_err(|f| {
                ModelError::from(latentflow_weights::ConfigError::Field {
                    source_name: path.join("config.json").display().to_string(),
                    field: f.field,
                    reason: f.reason,
                })
            })?;
            let vb = Weights::folder(path)?.var_builder(DType::F32, device)?;
            return Self::new(plan, groups, vb, Layout::Diffusers, path);
        }
        let header = Header::read(path)?;
        let layout = Layout::of(&header);
        let plan = keys::plan_from_names(&header, layout)
            .map_err(|reason| ModelError::format(path.to_path_buf(), reason))?;
        let weights = match layout {
            Layout::Diffusers => Weights::file(path)?,
            Layout::Original => {
                Weights::renamed(path, std::sync::Arc::new(|n: &str| keys::original_name(n)))
            }
        };
        let vb = weights.var_builder(DType::F32, device)?;
        Self::new(plan, groups, vb, layout, path)
    }

    /// The most frames the modules take.
    pub fn max_frames(&self) -> usize {
        self.plan.max_seq_length
    }
}
