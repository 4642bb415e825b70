//! diffusers' `ResnetBlock2D` on our CPU convolutions: the time embedding added (`default`) or
//! applied as a scale and shift after the second norm (`scale_shift`, ADM's), and optionally
//! resampling both paths after the first activation (ADM's `resblock_updown`).

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use latentflow_kernels::{linear, Linear};
use latentflow_kernels::{upsample_nearest, Conv, GroupNorm};

/// GroupNorm → SiLU → 3×3 conv, twice, with the time embedding added in between and a 1×1
/// shortcut when the channel count changes.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
    scale: f64,
    time_norm: TimeNorm,
    resample: Resample,
}

/// How the time embedding enters the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimeNorm {
    /// Added after the first convolution (`default`).
    #[default]
    Add,
    /// Projected to a scale and a shift applied after the second norm (`scale_shift`).
    ScaleShift,
}

/// Resampling inside the block (diffusers' `up=True` / `down=True`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Resample {
    /// None.
    #[default]
    None,
    /// Nearest-neighbour ×2.
    Up,
    /// 2×2 average pooling.
    Down,
}

impl Resample {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Resample::None => Ok(x.clone()),
            Resample::Up => upsample_nearest(x, 2),
            Resample::Down => x.avg_pool2d(2),
        }
    }
}

/// Settings of one block.
#[derive(Clone, Copy)]
pub struct ResnetConfig {
    /// Group-norm groups.
    pub groups: usize,
    /// Group-norm epsilon.
    pub eps: f64,
    /// Width of the time embedding (none in the VAE).
    pub temb: Option<usize>,
    /// The output is divided by this.
    pub output_scale: f64,
    /// How the time embedding enters.
    pub time_norm: TimeNorm,
    /// Resampling inside the block.
    pub resample: Resample,
}

impl Default for ResnetConfig {
    /// 32 groups, ε 1e-6, no time embedding, no output scale, `default` time mode, no
    /// resampling.
    fn default() -> Self {
        ResnetConfig {
            groups: 32,
            eps: 1e-6,
            temb: None,
            output_scale: 1.0,
            time_norm: TimeNorm::Add,
            resample: Resample::None,
        }
    }
}

impl ResnetBlock {
    /// Builds a block from `cin` to `cout` channels.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        c: ResnetConfig,
    ) -> candle_core::Result<Self> {
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let shortcut = if cin != cout {
            Some(Conv::new(
                cin,
                cout,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        let proj = match c.time_norm {
            TimeNorm::Add => cout,
            TimeNorm::ScaleShift => 2 * cout,
        };
        let time_emb_proj = match c.temb {
            Some(t) => Some(linear(t, proj, vb.pp("time_emb_proj"))?),
            None => None,
        };
        Ok(Self {
            norm1: GroupNorm::new(c.groups, cin, c.eps, vb.pp("norm1"))?,
            conv1: Conv::new(cin, cout, 3, pad1, vb.pp("conv1"))?,
            time_emb_proj,
            norm2: GroupNorm::new(c.groups, cout, c.eps, vb.pp("norm2"))?,
            conv2: Conv::new(cout, cout, 3, pad1, vb.pp("conv2"))?,
            shortcut,
            scale: c.output_scale,
            time_norm: c.time_norm,
            resample: c.resample,
        })
    }

    /// `x` B×C×H×W, `temb` B×T (the raw time embedding; SiLU is applied here).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let h = self.norm1.forward_silu(x)?;
        let (x, h) = match self.resample {
            Resample::None => (x.clone(), h),
            r => (r.apply(x)?, r.apply(&h)?),
        };
        let h = self.conv1.forward(&h)?;
        let t = match (temb, &self.time_emb_proj) {
            (Some(t), Some(p)) => Some(
                p.forward(&candle_nn::ops::silu(t)?)?
                    .unsqueeze(2)?
                    .unsqueeze(3)?,
            ),
            _ => None,
        };
        let h = match (self.time_norm, t) {
            (TimeNorm::Add, Some(t)) => self.norm2.forward_silu(&h.broadcast_add(&t)?)?,
            (TimeNorm::ScaleShift, Some(t)) => {
                let c = h.dim(1)?;
                let (scale, shift) = (t.narrow(1, 0, c)?, t.narrow(1, c, c)?);
                let n = self.norm2.forward(&h)?;
                candle_nn::ops::silu(&n.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?)?
            }
            (_, None) => self.norm2.forward_silu(&h)?,
        };
        let h = self.conv2.forward(&h)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(&x)?,
            None => x,
        };
        let out = (skip + h)?;
        if self.scale == 1.0 {
            Ok(out)
        } else {
            out / self.scale
        }
    }
}
