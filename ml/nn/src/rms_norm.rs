//! RMS norm as T5 and Llama-family models compute it: `w · x / √(mean(x²) + ε)` over the last
//! dimension, the statistics in f32 whatever the compute dtype, the weight applied after
//! converting back.

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

/// transformers' `T5LayerNorm` / `LlamaRMSNorm`.
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `weight` (d) under `vb`.
    pub fn new(d: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(d, "weight")?,
            eps,
        })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}
