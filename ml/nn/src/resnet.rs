//! diffusers' `ResnetBlock2D` (the `default` time-embedding mode) on our CPU convolutions.

use candle_core::{Module, Tensor};
use candle_nn::{linear, Conv2dConfig, Linear, VarBuilder};
use latentflow_kernels::{Conv, GroupNorm};

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
        let time_emb_proj = match c.temb {
            Some(t) => Some(linear(t, cout, vb.pp("time_emb_proj"))?),
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
        })
    }

    /// `x` B×C×H×W, `temb` B×T (the raw time embedding; SiLU is applied here).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = match (temb, &self.time_emb_proj) {
            (Some(t), Some(p)) => {
                let t = p.forward(&candle_nn::ops::silu(t)?)?;
                h.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?
            }
            _ => h,
        };
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.scale == 1.0 {
            Ok(out)
        } else {
            out / self.scale
        }
    }
}
