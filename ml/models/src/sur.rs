//! SUR-adapter (Zhong et al.): a residual adapter on the CLIP context of SD 1.5 that moves
//! simple prompts' embeddings towards what a large language model knows of them.
//!
//! `y = TransformerEncoder(x)`; `S = softmax(W_q y · (W_k x)ᵀ / √d)`; `w = S·x + x`;
//! `o = MLP(w) + w`; `out = β·fc(o) + (1 − β)·x`. The authors' module has two quirks that the
//! faithful mode keeps: its `nn.TransformerEncoder` is not batch-first, so given B×77×d it
//! attends across the batch (under guidance, between the negative and positive rows) at each
//! token position; and its `value_layer` is never used (V = x). Keys are the authors' `Adapter`
//! state dict (`transformer_encoder.layers.{i}.*`, `attention.*`, `fc.*`; the unused
//! `encoder_layer.*` copy may be present).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{layer_norm, LayerNorm, LayerNormConfig, VarBuilder};
use latentflow_kernels::{linear, Linear};
use latentflow_weights::{Header, Weights};

use crate::ella::MultiheadAttention;
use crate::{ModelError, Result};

/// The adapter's heads (fixed in the authors' code).
pub const HEADS: usize = 8;

struct EncoderLayer {
    attn: MultiheadAttention,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
}

impl EncoderLayer {
    /// torch's post-norm `TransformerEncoderLayer` (ReLU), batch first.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.norm1.forward(&(x + self.attn.forward(x, x)?)?)?;
        let h = self.linear2.forward(&self.linear1.forward(&x)?.relu()?)?;
        self.norm2.forward(&(x + h)?)
    }
}

/// Which axis the adapter's transformer encoder attends over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurMode {
    /// As the authors' code runs: across the batch at each token position.
    Faithful,
    /// Across the tokens of each prompt (what a batch-first encoder would do).
    Tokens,
}

/// The adapter.
pub struct SurAdapter {
    layers: Vec<EncoderLayer>,
    query: Linear,
    key: Linear,
    out1: Linear,
    out2: Linear,
    fc: Linear,
    width: usize,
}

impl SurAdapter {
    /// Loads an adapter `.safetensors` file (width and depth from its header), in f32.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let header = Header::read(path)?;
        let width = match header.shape("fc.weight") {
            Some([a, b]) if a == b => *a,
            _ => {
                return Err(ModelError::format(
                    path,
                    "not a SUR-adapter: no square `fc.weight` (expected the keys of the authors' Adapter)",
                ))
            }
        };
        if width % HEADS != 0 {
            return Err(ModelError::format(
                path,
                format!("width {width} does not split into {HEADS} heads"),
            ));
        }
        let ff = match header.shape("transformer_encoder.layers.0.linear1.weight") {
            Some([f, w]) if *w == width => *f,
            _ => return Err(ModelError::format(path, "SUR-adapter: no `transformer_encoder.layers.0.linear1.weight` of the adapter's width")),
        };
        let mut depth = 0;
        while header.has_prefix(&format!("transformer_encoder.layers.{depth}.")) {
            depth += 1;
        }
        let vb = Weights::file(path)?.var_builder(DType::F32, device)?;
        Self::build(vb, width, ff, depth)
            .map_err(|e| ModelError::mismatch(path.to_path_buf(), "SUR-adapter", e))
    }

    fn build(vb: VarBuilder, w: usize, ff: usize, depth: usize) -> candle_core::Result<Self> {
        let ln = |vb: VarBuilder| {
            layer_norm(
                w,
                LayerNormConfig {
                    eps: 1e-5,
                    ..Default::default()
                },
                vb,
            )
        };
        let mut layers = Vec::with_capacity(depth);
        for i in 0..depth {
            let l = vb.pp(format!("transformer_encoder.layers.{i}"));
            layers.push(EncoderLayer {
                attn: MultiheadAttention::new(l.pp("self_attn"), w, HEADS)?,
                linear1: linear(w, ff, l.pp("linear1"))?,
                linear2: linear(ff, w, l.pp("linear2"))?,
                norm1: ln(l.pp("norm1"))?,
                norm2: ln(l.pp("norm2"))?,
            });
        }
        let a = vb.pp("attention");
        Ok(Self {
            layers,
            query: linear(w, w, a.pp("query_layer"))?,
            key: linear(w, w, a.pp("key_layer"))?,
            out1: linear(w, w, a.pp("output_layer.0"))?,
            out2: linear(w, w, a.pp("output_layer.2"))?,
            fc: linear(w, w, vb.pp("fc"))?,
            width: w,
        })
    }

    /// Adapts a context B×L×d with weight `beta` (the authors' `adapter_weight`).
    pub fn forward(&self, x: &Tensor, beta: f64, mode: SurMode) -> Result<Tensor> {
        let (_, _, d) = x.dims3()?;
        if d != self.width {
            return Err(ModelError::shape(
                "SUR-adapter context",
                format!("B×L×{}", self.width),
                x.dims(),
            ));
        }
        let x = x.to_dtype(DType::F32)?;
        // The encoder runs batch-first on what it attends over.
        let mut y = match mode {
            SurMode::Faithful => x.transpose(0, 1)?.contiguous()?,
            SurMode::Tokens => x.clone(),
        };
        for l in &self.layers {
            y = l.forward(&y)?;
        }
        if mode == SurMode::Faithful {
            y = y.transpose(0, 1)?.contiguous()?;
        }
        let q = self.query.forward(&y)?;
        let k = self.key.forward(&x)?;
        let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? / (self.width as f64).sqrt())?;
        let s = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let weighted = (s.matmul(&x)? + &x)?;
        let o = (self.out2.forward(&self.out1.forward(&weighted)?.relu()?)? + &weighted)?;
        let l = self.fc.forward(&o)?;
        Ok(((l * beta)? + (x * (1.0 - beta))?)?)
    }
}
