//! The spatial transformer of UNets (diffusers `Transformer2DModel` for continuous inputs,
//! `BasicTransformerBlock`, `Attention`), with a hook that receives cross-attention
//! probabilities.

use candle_core::{Module, Tensor};
use candle_nn::{layer_norm, LayerNorm, VarBuilder};
use latentflow_kernels::{attention, Attend, Conv, GroupNorm};
use latentflow_kernels::{linear, linear_no_bias, Linear};

/// Receives `(layer name, probabilities B×heads×queries×tokens)` of every cross-attention.
pub type AttentionHook<'a> = &'a (dyn Fn(&str, &Tensor) + Sync);

/// Multi-head attention with separate q/k/v projections.
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    dim_head: usize,
}

impl Attention {
    /// Projections `to_q`, `to_k`, `to_v` (no bias) and `to_out.0` under `vb`.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
        dim_head: usize,
    ) -> candle_core::Result<Self> {
        Self::with_bias(vb, dim, context_dim, heads, dim_head, false)
    }

    /// The same, the q/k/v projections with a bias when `bias` (diffusers' `attention_bias`,
    /// as diffusion transformers set it).
    pub fn with_bias(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
        dim_head: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        let inner = heads * dim_head;
        let proj = |i: usize, name: &str| {
            if bias {
                linear(i, inner, vb.pp(name))
            } else {
                linear_no_bias(i, inner, vb.pp(name))
            }
        };
        Ok(Self {
            q: proj(dim, "to_q")?,
            k: proj(context_dim, "to_k")?,
            v: proj(context_dim, "to_v")?,
            out: linear(inner, dim, vb.pp("to_out.0"))?,
            heads,
            dim_head,
        })
    }

    fn split(&self, t: Tensor) -> candle_core::Result<Tensor> {
        let (b, l, _) = t.dims3()?;
        t.reshape((b, l, self.heads, self.dim_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `x` B×L×dim attends to `context` (itself when `None`).
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        hook: Option<(&str, AttentionHook)>,
    ) -> candle_core::Result<Tensor> {
        self.forward_masked(x, context, None, hook)
    }

    /// The same with `bias` added to the scores (broadcast to B×heads×L×Lk: a padding mask
    /// B×1×1×Lk with a large negative value at the tokens not to attend).
    pub fn forward_masked(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        bias: Option<&Tensor>,
        hook: Option<(&str, AttentionHook)>,
    ) -> candle_core::Result<Tensor> {
        // A context of another dtype (f32 text features for a bf16 model) is converted.
        let ctx = &match context {
            Some(c) => c.to_dtype(x.dtype())?,
            None => x.clone(),
        };
        let (b, l, _) = x.dims3()?;
        let scale = (self.dim_head as f64).powf(-0.5);
        let q = self.split((self.q.forward(x)? * scale)?)?;
        let k = self.split(self.k.forward(ctx)?)?;
        let v = self.split(self.v.forward(ctx)?)?;
        let sink = hook.map(|(name, hook)| move |p: &Tensor| hook(name, p));
        let o = attention(
            &q,
            &k,
            &v,
            Attend {
                mask: bias,
                probabilities: sink.as_ref().map(|s| s as &(dyn Fn(&Tensor) + Sync)),
            },
        )?;
        let o = o
            .transpose(1, 2)?
            .reshape((b, l, self.heads * self.dim_head))?;
        self.out.forward(&o)
    }
}

/// diffusers' `FeedForward` with GEGLU: `ff.net.0.proj` (dim → 2·4·dim), the gate, `ff.net.2`.
pub struct GegluFeedForward {
    proj: Linear,
    out: Linear,
}

impl GegluFeedForward {
    /// The layers under `vb` (the block's `ff`).
    pub fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }
}

impl Module for GegluFeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gated = latentflow_kernels::geglu(&self.proj.forward(x)?)?;
        self.out.forward(&gated)
    }
}

/// diffusers' `FeedForward` with `gelu-approximate`: `ff.net.0.proj` (dim → 4·dim), GELU in its
/// tanh form, `ff.net.2`.
pub struct GeluFeedForward {
    proj: Linear,
    out: Linear,
}

impl GeluFeedForward {
    /// The layers under `vb` (the block's `ff`).
    pub fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: linear(dim, inner, vb.pp("net.0.proj"))?,
            out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }
}

impl Module for GeluFeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.out.forward(&self.proj.forward(x)?.gelu()?)
    }
}

/// Self-attention, cross-attention and a GEGLU feed-forward, each pre-normed and residual.
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
}

impl BasicTransformerBlock {
    /// Norms `norm1..3`, `attn1` (self), `attn2` (cross) and the GEGLU `ff` under `vb`.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
    ) -> candle_core::Result<Self> {
        let ln = |vb| layer_norm(dim, 1e-5, vb);
        Ok(Self {
            norm1: ln(vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, dim_head)?,
            norm2: ln(vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, dim_head)?,
            norm3: ln(vb.pp("norm3"))?,
            ff: GegluFeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// `x` B×L×dim with conditioning `context` B×T×D.
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        hook: Option<(&str, AttentionHook)>,
    ) -> candle_core::Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context), hook)?
            + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

enum Proj {
    Conv(Conv),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel` for continuous inputs.
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
    inner: usize,
    /// Hook name prefix, e.g. `down_blocks.0.attentions.1`.
    pub name: String,
}

/// Settings of one `Transformer2DModel`.
pub struct Transformer2DConfig {
    /// Attention heads.
    pub heads: usize,
    /// Channels per head.
    pub dim_head: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the conditioning.
    pub context_dim: usize,
    /// Group-norm groups.
    pub groups: usize,
    /// Linear instead of 1×1-convolution projections (SD 2.x).
    pub linear_projection: bool,
}

impl Transformer2D {
    /// Builds it for `channels` input channels.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        c: &Transformer2DConfig,
        name: String,
    ) -> candle_core::Result<Self> {
        let inner = c.heads * c.dim_head;
        let proj = |vb: VarBuilder, i: usize, o: usize| -> candle_core::Result<Proj> {
            Ok(if c.linear_projection {
                Proj::Linear(linear(i, o, vb)?)
            } else {
                Proj::Conv(Conv::new(i, o, 1, Default::default(), vb)?)
            })
        };
        let blocks = (0..c.layers)
            .map(|k| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{k}")),
                    inner,
                    c.heads,
                    c.dim_head,
                    c.context_dim,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::new(c.groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: proj(vb.pp("proj_in"), channels, inner)?,
            blocks,
            proj_out: proj(vb.pp("proj_out"), inner, channels)?,
            inner,
            name,
        })
    }

    /// `x` B×C×H×W with conditioning `context` B×L×D.
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        hook: Option<AttentionHook>,
    ) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = self.norm.forward(x)?;
        let to_seq = |t: Tensor, ch: usize| t.permute((0, 2, 3, 1))?.reshape((b, h * w, ch));
        let mut s = match &self.proj_in {
            Proj::Conv(p) => to_seq(p.forward(&n)?, self.inner)?,
            Proj::Linear(p) => p.forward(&to_seq(n, c)?)?,
        };
        for (k, block) in self.blocks.iter().enumerate() {
            let name = format!("{}.transformer_blocks.{k}.attn2", self.name);
            s = block.forward(&s, context, hook.map(|f| (name.as_str(), f)))?;
        }
        let from_seq = |t: Tensor, ch: usize| {
            t.reshape((b, h, w, ch))?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let out = match &self.proj_out {
            Proj::Conv(p) => p.forward(&from_seq(s, self.inner)?)?,
            Proj::Linear(p) => from_seq(p.forward(&s)?, c)?,
        };
        out + x
    }
}
