//! Group normalisation, alone or followed by SiLU (the pair that opens every ResNet block).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

/// `GroupNorm` with the weights and names of `torch.nn.GroupNorm` (`weight`, `bias`).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
}

impl GroupNorm {
    /// Loads a norm over `channels` channels in `groups` groups.
    pub fn new(
        groups: usize,
        channels: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("{channels} channels do not split into {groups} groups");
        }
        Ok(Self {
            inner: candle_nn::group_norm(groups, channels, eps, vb)?,
        })
    }

    /// `silu(norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::silu(&self.inner.forward(x)?)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.inner.forward(x)
    }
}
