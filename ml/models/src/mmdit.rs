//! Pieces the multimodal diffusion transformers (SD3's MMDiT, Flux) share: adaLN modulation
//! vectors, per-stream q/k/v projections with optional RMS-normed queries and keys, and
//! scaled dot-product attention over heads.

use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use latentflow_kernels::{attention, Attend};
use latentflow_kernels::{linear, Linear};
use latentflow_nn::RmsNorm;

/// `norm(x)·(1 + scale) + shift` for B×1×dim modulation vectors.
pub(crate) fn modulate(
    norm: &LayerNorm,
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
) -> candle_core::Result<Tensor> {
    norm.forward(x)?
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)
}

/// `linear(silu(emb))` split into `n` modulation vectors, each B×1×dim.
pub(crate) struct Modulator {
    linear: Linear,
    n: usize,
}

impl Modulator {
    pub(crate) fn new(vb: VarBuilder, dim: usize, n: usize) -> candle_core::Result<Self> {
        Ok(Self {
            linear: linear(dim, n * dim, vb.pp("linear"))?,
            n,
        })
    }

    pub(crate) fn forward(&self, emb: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let e = self.linear.forward(&candle_nn::ops::silu(emb)?)?;
        let dim = e.dim(1)? / self.n;
        (0..self.n)
            .map(|i| e.narrow(1, i * dim, dim)?.unsqueeze(1))
            .collect()
    }
}

/// Query, key and value projections of one stream, with optional RMS norms on q and k.
pub(crate) struct Qkv {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
}

impl Qkv {
    /// `names`: the q, k, v projections' and the q, k norms' names.
    pub(crate) fn new(
        vb: &VarBuilder,
        dim: usize,
        head_dim: usize,
        rms: bool,
        names: [&str; 5],
    ) -> candle_core::Result<Self> {
        let norm = |n: &str| -> candle_core::Result<Option<RmsNorm>> {
            if rms {
                Ok(Some(RmsNorm::new(head_dim, 1e-6, vb.pp(n))?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            q: linear(dim, dim, vb.pp(names[0]))?,
            k: linear(dim, dim, vb.pp(names[1]))?,
            v: linear(dim, dim, vb.pp(names[2]))?,
            norm_q: norm(names[3])?,
            norm_k: norm(names[4])?,
        })
    }

    /// q, k, v as B×heads×L×head_dim.
    pub(crate) fn forward(&self, x: &Tensor, heads: usize) -> candle_core::Result<[Tensor; 3]> {
        let (b, l, dim) = x.dims3()?;
        let split = |t: Tensor| t.reshape((b, l, heads, dim / heads))?.transpose(1, 2);
        let normed = |t: Tensor, n: &Option<RmsNorm>| match n {
            Some(n) => n.forward(&t.contiguous()?),
            None => Ok(t),
        };
        let q = normed(split(self.q.forward(x)?)?, &self.norm_q)?;
        let k = normed(split(self.k.forward(x)?)?, &self.norm_k)?;
        let v = split(self.v.forward(x)?)?;
        Ok([q, k, v])
    }
}

/// Scaled dot-product attention over q, k, v (B×heads×L×d), back to B×L×(heads·d).
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    let q = (q * (d as f64).powf(-0.5))?.contiguous()?;
    let o = attention(
        &q,
        &k.contiguous()?,
        &v.contiguous()?,
        Attend {
            mask: None,
            probabilities: None,
        },
    )?;
    o.transpose(1, 2)?.reshape((b, l, h * d))
}
