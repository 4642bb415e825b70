//! Adaptive layer norm with zero-initialised modulation (adaLN-Zero, diffusers
//! `AdaLayerNormZero`): a conditioning vector gives per-sample shift, scale and gate for the
//! attention and the MLP of a transformer block.

use candle_core::{DType, Device};
use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use latentflow_kernels::{linear, Linear};

/// A layer norm without parameters (`elementwise_affine=False`) for inputs of `dtype`.
pub fn plain_layer_norm(
    dim: usize,
    eps: f64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<LayerNorm> {
    Ok(LayerNorm::new(
        Tensor::ones(dim, dtype, device)?,
        Tensor::zeros(dim, dtype, device)?,
        eps,
    ))
}

/// The six modulation vectors of one block, each B×dim.
pub struct Modulation {
    /// Gate of the attention branch.
    pub gate_msa: Tensor,
    /// Shift of the MLP branch's norm.
    pub shift_mlp: Tensor,
    /// Scale of the MLP branch's norm.
    pub scale_mlp: Tensor,
    /// Gate of the MLP branch.
    pub gate_mlp: Tensor,
}

/// `norm(x)·(1 + scale) + shift` with shift, scale and gates from `linear(silu(emb))`.
pub struct AdaLayerNormZero {
    linear: Linear,
    norm: LayerNorm,
    dim: usize,
}

impl AdaLayerNormZero {
    /// `linear` (dim → 6·dim) under `vb`; the norm has no parameters (ε 1e-6).
    pub fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            norm: plain_layer_norm(dim, 1e-6, vb.dtype(), vb.device())?,
            linear: linear(dim, 6 * dim, vb.pp("linear"))?,
            dim,
        })
    }

    /// The modulated input (B×L×dim) and the remaining modulation, for `x` B×L×dim and the
    /// conditioning `emb` B×dim.
    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> candle_core::Result<(Tensor, Modulation)> {
        let e = self.linear.forward(&candle_nn::ops::silu(emb)?)?;
        let chunk = |i: usize| e.narrow(1, i * self.dim, self.dim);
        let (shift, scale) = (chunk(0)?, chunk(1)?);
        let x = self
            .norm
            .forward(x)?
            .broadcast_mul(&(scale + 1.0)?.unsqueeze(1)?)?
            .broadcast_add(&shift.unsqueeze(1)?)?;
        Ok((
            x,
            Modulation {
                gate_msa: chunk(2)?,
                shift_mlp: chunk(3)?,
                scale_mlp: chunk(4)?,
                gate_mlp: chunk(5)?,
            },
        ))
    }
}
