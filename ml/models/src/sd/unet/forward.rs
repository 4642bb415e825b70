//! The UNet as stages — time embedding, down path, mid block, up path, head — and the whole
//! forward pass built from them. Callers that run the network differently (DeepCache, feature
//! extraction, ControlNet's trunk) compose the same stages; [`Extras`] carries what a caller adds
//! to one pass (ControlNet residuals, hooks that see attention and up-path states).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use latentflow_nn::{timestep_features, AttentionHook};
use latentflow_weights::Weights;

use super::blocks::{build, DownBlock, MidBlock, Parts, UpBlock};
use super::config::UNetConfig;
use crate::{Checked, ModelError, Result};

/// Receives the main-path state after layer `layer` of up block `block`.
pub type UpLayerHook<'a> = &'a (dyn Fn(usize, usize, &Tensor) + Sync);

/// Where in the network a [`LayerHook`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// After layer `layer` (ResNet and transformer) of down block `block`.
    Down {
        /// The down block.
        block: usize,
        /// The layer.
        layer: usize,
    },
    /// After the transformer of the mid block's pair `layer`, before its ResNet.
    Mid {
        /// The pair.
        layer: usize,
    },
    /// After layer `layer` of up block `block`.
    Up {
        /// The up block.
        block: usize,
        /// The layer.
        layer: usize,
    },
}

/// Replaces the main-path state at each [`Site`] (AnimateDiff's motion modules).
pub type LayerHook<'a> = &'a (dyn Fn(Site, &Tensor) -> candle_core::Result<Tensor> + Sync);

/// What every layer of one pass sees besides its input.
#[derive(Clone, Copy)]
pub struct Cond<'a> {
    /// The time embedding, B×D.
    pub temb: &'a Tensor,
    /// The cross-attention context, B×L×D.
    pub ctx: &'a Tensor,
    /// What the caller adds.
    pub extras: &'a Extras<'a>,
}

impl<'a> Cond<'a> {
    /// The time embedding, context and extras of a pass.
    pub fn new(temb: &'a Tensor, ctx: &'a Tensor, extras: &'a Extras<'a>) -> Self {
        Cond { temb, ctx, extras }
    }
}

/// What a caller adds to one pass.
#[derive(Default, Clone, Copy)]
pub struct Extras<'a> {
    /// Added to the skip connections, one per skip in order (ControlNet). A partial down path
    /// adds the first ones, for the skips it computes.
    pub down_residuals: Option<&'a [Tensor]>,
    /// Added to the mid-block output (ControlNet).
    pub mid_residual: Option<&'a Tensor>,
    /// Receives every cross-attention's probabilities (B×heads×queries×tokens) with the layer's
    /// name (`down_blocks.0.attentions.1.transformer_blocks.0.attn2`, ...); they are then
    /// materialised whole, which costs memory.
    pub attention: Option<AttentionHook<'a>>,
    /// Receives the up path's states (feature extraction).
    pub up_layer: Option<UpLayerHook<'a>>,
    /// Transforms the main-path state after every layer (motion modules); it sees the state
    /// before the up-layer hook and before the skip connection is taken.
    pub layer: Option<LayerHook<'a>>,
    /// SDXL's added conditioning, B×(P + n): the pooled text embedding (P wide) followed by
    /// the n time ids (original size, crop, target size), as diffusers concatenates them before
    /// projecting the ids. Required by UNets with `addition_embed_type` text_time.
    pub added: Option<&'a Tensor>,
}

impl Extras<'_> {
    /// `x` through the layer hook at `site` (unchanged without one). Hooks see f32 states
    /// whatever the UNet computes in; the result comes back in the UNet's dtype.
    pub fn at(&self, site: Site, x: Tensor) -> candle_core::Result<Tensor> {
        match self.layer {
            Some(hook) if x.dtype() == DType::F32 => hook(site, &x),
            Some(hook) => hook(site, &x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
            None => Ok(x),
        }
    }
}

/// Where the down path stops: after `layer` layers of block `block` (before its downsampler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// The down block.
    pub block: usize,
    /// Layers of that block to run.
    pub layer: usize,
}

/// diffusers' `UNet2DConditionModel`.
pub struct UNet {
    /// Its configuration.
    pub config: UNetConfig,
    parts: Parts,
    dtype: DType,
}

impl UNet {
    /// Builds the network from a config and weights; `source` names the weights in errors.
    pub fn new(config: UNetConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
        Self::build(config, vb, source, true)
    }

    /// The down path and mid block only (a ControlNet's trunk): no up blocks, no output head.
    pub fn new_encoder(config: UNetConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
        Self::build(config, vb, source, false)
    }

    fn build(config: UNetConfig, vb: VarBuilder, source: &Path, with_up: bool) -> Result<Self> {
        let plan = config.plan().map_err(|f| {
            ModelError::from(latentflow_weights::ConfigError::Field {
                source_name: source.display().to_string(),
                field: f.field,
                reason: f.reason,
            })
        })?;
        let vb_dtype = vb.dtype();
        let parts = build(&config, &plan, vb, with_up)
            .map_err(|e| ModelError::mismatch(source.to_path_buf(), "UNet", e))?;
        Ok(Self {
            config,
            parts,
            dtype: vb_dtype,
        })
    }

    /// The compute dtype (the weights'). Inputs of any float dtype are taken; the head's output
    /// is f32.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Loads a diffusers `unet/` folder (computing in f32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = UNetConfig::from_file(&dir.join("config.json"))?;
        let w = Weights::folder(dir)?;
        Self::new(config, w.var_builder(DType::F32, device)?, dir)
    }

    /// The down blocks.
    pub fn down(&self) -> &[DownBlock] {
        &self.parts.down
    }

    /// The up blocks.
    pub fn up(&self) -> &[UpBlock] {
        &self.parts.up
    }

    /// The mid block, if the config has one.
    pub fn mid(&self) -> Option<&MidBlock> {
        self.parts.mid.as_ref()
    }

    /// The time embedding for timestep `t`, for a batch of `b`, plus SDXL's added-conditioning
    /// embedding of `added` (see [`Extras::added`]) when the UNet has one.
    pub fn time_embedding(
        &self,
        t: f64,
        b: usize,
        added: Option<&Tensor>,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let dim = c.block_out_channels[0];
        let f = timestep_features(&[t], dim, c.flip_sin_to_cos, c.freq_shift, device)?
            .to_dtype(self.dtype)?;
        let (l1, l2) = &self.parts.time;
        let emb = l2.forward(&candle_nn::ops::silu(&l1.forward(&f)?)?)?;
        let emb = emb.broadcast_as((b, emb.dim(1)?))?.contiguous()?;
        let Some(((a1, a2), d)) = &self.parts.added else {
            return Ok(emb);
        };
        let Some(added) = added else {
            candle_core::bail!(
                "this UNet (SDXL) takes the pooled text embedding and the time ids: give the added conditioning"
            );
        };
        let input = a1.weight().dim(1)?;
        let width = added.dim(1)?;
        // P + n wide, projected to P + n·d: n = (input − width) / (d − 1).
        let n = if *d > 1 && input > width && (input - width) % (d - 1) == 0 {
            (input - width) / (d - 1)
        } else {
            0
        };
        if n == 0 || added.dim(0)? != b || n > width {
            candle_core::bail!(
                "the added conditioning is {:?}; this UNet takes {b}×(P + n) with P + n·{d} = {input}",
                added.dims()
            );
        }
        let text = added.narrow(1, 0, width - n)?.to_dtype(self.dtype)?;
        let ids: Vec<f64> = added
            .narrow(1, width - n, n)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect();
        let tf = timestep_features(&ids, *d, c.flip_sin_to_cos, c.freq_shift, device)?
            .reshape((b, n * d))?
            .to_dtype(self.dtype)?;
        let cat = Tensor::cat(&[&text, &tf], 1)?;
        let aug = a2.forward(&candle_nn::ops::silu(&a1.forward(&cat)?)?)?;
        emb + aug
    }

    /// `conv_in` (after mapping [0, 1] to [-1, 1] when the config centres its input).
    pub fn conv_in(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = if self.config.center_input_sample {
            x.affine(2.0, -1.0)?
        } else {
            x.clone()
        };
        let x = x.to_dtype(self.dtype)?;
        self.parts.conv_in.forward(&x)
    }

    /// The down path from the output of `conv_in`: the main-path state and the skip
    /// connections (residuals added). With `stop` it ends early, as DeepCache's shallow steps do.
    pub fn down_path(
        &self,
        h: &Tensor,
        c: &Cond,
        stop: Option<Stop>,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let mut x = h.clone();
        let mut skips = vec![x.clone()];
        'blocks: for (k, block) in self.parts.down.iter().enumerate() {
            for (j, layer) in block.layers.iter().enumerate() {
                if stop.is_some_and(|s| s.block == k && j >= s.layer) {
                    break 'blocks;
                }
                x = c
                    .extras
                    .at(Site::Down { block: k, layer: j }, layer.forward(&x, c)?)?;
                skips.push(x.clone());
            }
            if stop.is_some_and(|s| s.block == k) {
                break;
            }
            if let Some(d) = block.downsample(&x)? {
                x = d;
                skips.push(x.clone());
            }
        }
        if let Some(res) = c.extras.down_residuals {
            let full = stop.is_none();
            if (full && res.len() != skips.len()) || res.len() < skips.len() {
                candle_core::bail!(
                    "{} down residuals for {} skip connections",
                    res.len(),
                    skips.len()
                );
            }
            skips = skips
                .iter()
                .zip(res)
                .map(|(s, r)| s + r.to_dtype(s.dtype())?)
                .collect::<candle_core::Result<_>>()?;
        }
        Ok((x, skips))
    }

    /// The mid block (plus a ControlNet mid residual).
    pub fn mid_block(&self, x: &Tensor, c: &Cond) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        if let Some(mid) = &self.parts.mid {
            x = mid.first.forward(&x, Some(c.temb))?;
            for (j, (attn, res)) in mid.layers.iter().enumerate() {
                x = attn.forward(&x, c.ctx, c.extras.attention)?;
                x = c.extras.at(Site::Mid { layer: j }, x)?;
                x = res.forward(&x, Some(c.temb))?;
            }
        }
        match c.extras.mid_residual {
            Some(r) => x.clone() + r.to_dtype(x.dtype())?,
            None => Ok(x),
        }
    }

    /// The up path from layer `start` = (block, layer) on, consuming skips from the end; also
    /// returns the main-path input of layer `tap` when one is named. The result is the state
    /// before the output head.
    pub fn up_path(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        c: &Cond,
        start: (usize, usize),
        tap: Option<(usize, usize)>,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let mut x = x.clone();
        let mut tapped = None;
        for (u, block) in self.parts.up.iter().enumerate().skip(start.0) {
            let first = if u == start.0 { start.1 } else { 0 };
            for (j, layer) in block.layers.iter().enumerate().skip(first) {
                if tap == Some((u, j)) {
                    tapped = Some(x.clone());
                }
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("ran out of skip connections".into()))?;
                x = layer.forward(&Tensor::cat(&[&x, &skip], 1)?, c)?;
                x = c.extras.at(Site::Up { block: u, layer: j }, x)?;
                if let Some(hook) = c.extras.up_layer {
                    hook(u, j, &x.to_dtype(DType::F32)?);
                }
            }
            if let Some(conv) = &block.upsample {
                // Upsample to the next skip's size (×2 unless the input size was odd).
                let (h, w) = match skips.last() {
                    Some(s) => (s.dim(2)?, s.dim(3)?),
                    None => (x.dim(2)? * 2, x.dim(3)? * 2),
                };
                x = conv.forward(&x.upsample_nearest2d(h, w)?)?;
            }
        }
        Ok((x, tapped))
    }

    /// The output head: GroupNorm, SiLU, `conv_out`; the result is f32.
    pub fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (norm_out, conv_out) = self
            .parts
            .head
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("this network has no output head".into()))?;
        conv_out
            .forward(&norm_out.forward_silu(x)?)?
            .to_dtype(DType::F32)
    }

    /// Checks the input's channels against the config.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.config.in_channels {
            return Err(ModelError::shape(
                "UNet input",
                format!("B×{}×H×W", self.config.in_channels),
                dims,
            ));
        }
        Ok(())
    }

    /// The whole network: noise (or v) prediction for `x` B×C×H×W at timestep `t` with
    /// conditioning `ctx` B×L×D.
    pub fn forward(&self, x: &Tensor, t: f64, ctx: &Tensor, extras: &Extras) -> Result<Tensor> {
        self.check_input(x)?;
        let temb = self.time_embedding(t, x.dim(0)?, extras.added, x.device())?;
        let h = self.conv_in(x)?;
        let ctx = ctx.to_dtype(self.dtype)?;
        let c = Cond::new(&temb, &ctx, extras);
        let (h, mut skips) = self.down_path(&h, &c, None)?;
        let h = self.mid_block(&h, &c)?;
        let (h, _) = self.up_path(&h, &mut skips, &c, (0, 0), None)?;
        Ok(self.head(&h)?)
    }
}
