//! The single-head self-attention over all pixels of the VAE's mid block (diffusers' `Attention`
//! with `group_norm`, as `AutoencoderKL` and `VQModel` build it): names `to_q`/`to_k`/`to_v`/
//! `to_out.0`, or the older `query`/`key`/`value`/`proj_attn`, with linear or 1×1-convolution
//! shaped weights.
//!
//! Every product is taken on contiguous operands: candle 0.11's CPU matmul is wrong for a
//! batched, transposed left side (what a `Linear` on the transposed pixels would be), so the
//! pixels are laid out contiguously before the projections.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use latentflow_kernels::Linear;
use latentflow_kernels::{attention, Attend, GroupNorm};

/// Self-attention over the pixels of B×C×H×W, residual, divided by a rescale factor.
pub struct SpatialSelfAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    rescale: f64,
}

/// A C×C projection stored as a linear or as a 1×1 convolution.
fn projection(vb: VarBuilder, c: usize) -> candle_core::Result<Linear> {
    let w = if vb.contains_tensor("weight") && vb.get((c, c), "weight").is_ok() {
        vb.get((c, c), "weight")?
    } else {
        vb.get((c, c, 1, 1), "weight")?.reshape((c, c))?
    };
    Ok(Linear::new(w, Some(vb.get(c, "bias")?)))
}

impl SpatialSelfAttention {
    /// The block under `vb` over `channels` channels (`head_channels` per head, all of them when
    /// `None`), its norm in `groups` groups with `eps`.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        groups: usize,
        eps: f64,
        head_channels: Option<usize>,
        rescale: f64,
    ) -> candle_core::Result<Self> {
        let per_head = head_channels.unwrap_or(channels);
        if per_head == 0 || !channels.is_multiple_of(per_head) {
            candle_core::bail!("{channels} channels do not split into heads of {per_head}");
        }
        let (q, k, v, o) = if vb.contains_tensor("to_q.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        Ok(Self {
            norm: GroupNorm::new(groups, channels, eps, vb.pp("group_norm"))?,
            q: projection(vb.pp(q), channels)?,
            k: projection(vb.pp(k), channels)?,
            v: projection(vb.pp(v), channels)?,
            out: projection(vb.pp(o), channels)?,
            heads: channels / per_head,
            rescale,
        })
    }
}

impl Module for SpatialSelfAttention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let d = c / self.heads;
        let pixels = self
            .norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, h * w, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q.forward(&pixels)? * (d as f64).powf(-0.5))?)?;
        let k = split(self.k.forward(&pixels)?)?;
        let v = split(self.v.forward(&pixels)?)?;
        let o = attention(&q, &k, &v, Attend::default())?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, h * w, c))?;
        let o = self
            .out
            .forward(&o)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, c, h, w))?;
        (o + x)? / self.rescale
    }
}
