//! diffusers' `UNet2DModel`: the unconditional (or class-conditional) UNet of DDPM and of ADM,
//! OpenAI's guided-diffusion model, which diffusers writes as this class with `scale_shift`
//! time modulation, resampling ResNets (`resblock_updown`) and, for `learn_sigma` models, twice
//! the image's channels out: the noise and the learned-range variance interpolation.
//!
//! Gradients flow through [`UNet2DModel::forward`] when its input records operations
//! (a `candle_core::Var`): the kernels then take candle's differentiable paths.

pub mod blocks;
pub mod config;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, Conv2dConfig, Embedding, VarBuilder};
use latentflow_kernels::{Conv, GroupNorm};
use latentflow_nn::{timestep_features, ResnetConfig, TimeNorm, TimestepEmbedding};
use latentflow_weights::{Checked, Weights};

pub use config::UNet2DConfig;

use blocks::{DownBlock, MidBlock, Shared, UpBlock, UpChannels};

use crate::{ModelError, Result};

/// A loaded `UNet2DModel` (f32).
pub struct UNet2DModel {
    /// The configuration.
    pub config: UNet2DConfig,
    conv_in: Conv,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<Embedding>,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl UNet2DModel {
    /// Loads a diffusers `UNet2DModel` folder (`config.json` and weights, sharded or not).
    pub fn load(dir: &Path) -> Result<Self> {
        let config = UNet2DConfig::from_file(&dir.join("config.json"))?;
        let vb = Weights::folder(dir)?.var_builder(DType::F32, &Device::Cpu)?;
        Self::new(config, vb, dir)
    }

    /// Builds the model from a checked config; `source` names the weights in messages.
    pub fn new(config: UNet2DConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
        let mismatch = |e| ModelError::mismatch(source.to_path_buf(), "UNet2DModel", e);
        Self::build(&config, vb)
            .map_err(mismatch)
            .map(|parts| Self { config, ..parts })
    }

    fn build(c: &UNet2DConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let temb = c.time_dim();
        let time_norm = if c.resnet_time_scale_shift == "scale_shift" {
            TimeNorm::ScaleShift
        } else {
            TimeNorm::Add
        };
        let shared = Shared {
            resnet: ResnetConfig {
                groups: c.norm_num_groups,
                eps: c.norm_eps,
                temb: Some(temb),
                output_scale: 1.0,
                time_norm,
                ..ResnetConfig::default()
            },
            head_dim: c.attention_head_dim,
        };
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = Conv::new(c.in_channels, ch[0], 3, pad1, vb.pp("conv_in"))?;
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], temb)?;
        let class_embedding = match c.num_class_embeds {
            Some(k) => Some(embedding(k, temb, vb.pp("class_embedding"))?),
            None => None,
        };
        let mut down = Vec::with_capacity(n);
        let mut prev = ch[0];
        for (i, kind) in c.down_block_types.iter().enumerate() {
            down.push(DownBlock::new(
                vb.pp(format!("down_blocks.{i}")),
                kind,
                prev,
                ch[i],
                c.layers_per_block,
                i == n - 1,
                &c.downsample_type,
                c.downsample_padding,
                &shared,
            )?);
            prev = ch[i];
        }
        let mid = match c.mid_block_type {
            Some(_) => {
                let groups = c
                    .attn_norm_num_groups
                    .or_else(|| (time_norm == TimeNorm::Add).then_some(c.norm_num_groups));
                Some(MidBlock::new(
                    vb.pp("mid_block"),
                    ch[n - 1],
                    c.mid_block_scale_factor,
                    c.add_attention,
                    groups,
                    &shared,
                )?)
            }
            None => None,
        };
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut prev = rev[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let channels = UpChannels {
                skip_in: rev[(i + 1).min(n - 1)],
                out: rev[i],
                prev,
            };
            up.push(UpBlock::new(
                vb.pp(format!("up_blocks.{i}")),
                kind,
                channels,
                c.layers_per_block + 1,
                i == n - 1,
                &c.upsample_type,
                &shared,
            )?);
            prev = rev[i];
        }
        let norm_out =
            GroupNorm::new(c.norm_num_groups, ch[0], c.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = Conv::new(ch[0], c.out_channels, 3, pad1, vb.pp("conv_out"))?;
        Ok(Self {
            config: c.clone(),
            conv_in,
            time_embedding,
            class_embedding,
            down,
            mid,
            up,
            norm_out,
            conv_out,
        })
    }

    /// Checks an input's shape, and class labels against the model.
    pub fn check_input(&self, x: &Tensor, labels: Option<&[u32]>) -> Result<()> {
        let d = x.dims();
        let f = self.config.downscale();
        if d.len() != 4
            || d[1] != self.config.in_channels
            || !d[2].is_multiple_of(f)
            || !d[3].is_multiple_of(f)
        {
            return Err(ModelError::shape(
                "UNet2DModel input",
                format!(
                    "N×{}×H×W with H and W multiples of {f}",
                    self.config.in_channels
                ),
                d,
            ));
        }
        match (&self.class_embedding, labels) {
            (Some(_), None) => Err(ModelError::invalid(
                "this UNet2DModel is class-conditional: give it class labels",
            )),
            (None, Some(_)) => Err(ModelError::invalid(
                "this UNet2DModel has no class embedding: it takes no class labels",
            )),
            (Some(e), Some(l)) => {
                let k = e.embeddings().dim(0)?;
                if l.len() != d[0] {
                    return Err(ModelError::invalid(format!(
                        "{} class labels for a batch of {}",
                        l.len(),
                        d[0]
                    )));
                }
                match l.iter().find(|&&c| c as usize >= k) {
                    Some(c) => Err(ModelError::invalid(format!(
                        "class label {c} is out of range: the model has {k} classes"
                    ))),
                    None => Ok(()),
                }
            }
            (None, None) => Ok(()),
        }
    }

    /// The model output (N×out_channels×H×W) for `x` N×C×H×W at timestep `t`, with class
    /// labels for class-conditional models.
    pub fn forward(&self, x: &Tensor, t: f64, labels: Option<&[u32]>) -> Result<Tensor> {
        self.check_input(x, labels)?;
        Ok(self.run(x, t, labels)?)
    }

    /// `cotangentᵀ · ∂output/∂x` at `x` (the shape of `x`), by candle's backward pass;
    /// `cotangent` has the output's shape.
    pub fn vjp(
        &self,
        x: &Tensor,
        t: f64,
        labels: Option<&[u32]>,
        cotangent: &Tensor,
    ) -> Result<Tensor> {
        self.check_input(x, labels)?;
        let want = [x.dim(0)?, self.config.out_channels, x.dim(2)?, x.dim(3)?];
        if cotangent.dims() != want {
            return Err(ModelError::shape(
                "UNet2DModel cotangent",
                format!("{want:?}"),
                cotangent.dims(),
            ));
        }
        let var = candle_core::Var::from_tensor(&x.to_dtype(DType::F32)?)?;
        let out = self.run(var.as_tensor(), t, labels)?;
        let grads = (out * cotangent)?.sum_all()?.backward()?;
        match grads.get(var.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => Ok(x.zeros_like()?),
        }
    }

    fn run(&self, x: &Tensor, t: f64, labels: Option<&[u32]>) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let b = x.dim(0)?;
        let x = if c.center_input_sample {
            x.affine(2.0, -1.0)?
        } else {
            x.clone()
        };
        let feats = timestep_features(
            &vec![t; b],
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
            x.device(),
        )?;
        let mut emb = self.time_embedding.forward(&feats)?;
        if let (Some(e), Some(l)) = (&self.class_embedding, labels) {
            let ids = Tensor::from_vec(l.to_vec(), b, x.device())?;
            emb = (emb + e.forward(&ids)?)?;
        }
        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for d in &self.down {
            let (out, s) = d.forward(&h, &emb)?;
            skips.extend(s);
            h = out;
        }
        if let Some(m) = &self.mid {
            h = m.forward(&h, &emb)?;
        }
        for u in &self.up {
            let take = u.skips();
            let from = skips.len() - take;
            h = u.forward(&h, &skips[from..], &emb)?;
            skips.truncate(from);
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}
