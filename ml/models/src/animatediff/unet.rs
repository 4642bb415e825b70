//! An SD UNet with motion modules: `UNetMotionModel`'s forward pass over the SD UNet's stages.

use candle_core::Tensor;

use super::motion::MotionAdapter;
use super::windows::ContextWindows;
use crate::sd::unet::{Cond, Extras, Site, UNet};
use crate::{ModelError, Result};

/// An SD UNet and the motion adapter applied to it.
pub struct MotionUNet<'a> {
    /// The image UNet.
    pub unet: &'a UNet,
    /// Its motion modules.
    pub adapter: &'a MotionAdapter,
    /// FreeNoise's windows for the motion modules' attention, if any.
    pub windows: Option<ContextWindows>,
}

impl<'a> MotionUNet<'a> {
    /// Pairs a UNet with an adapter, refusing one built for other channels or layer counts
    /// (`from_unet2d`'s checks).
    pub fn new(unet: &'a UNet, adapter: &'a MotionAdapter) -> Result<Self> {
        let plan = &adapter.plan;
        let c = &unet.config;
        let layers: Vec<usize> = unet.down().iter().map(|b| b.layers.len()).collect();
        if plan.channels != c.block_out_channels || plan.layers != layers {
            return Err(ModelError::invalid(format!(
                "the motion adapter {} is for a UNet with channels {:?} and {:?} layers per block; this UNet has {:?} and {:?}",
                adapter.source.display(),
                plan.channels,
                plan.layers,
                c.block_out_channels,
                layers
            )));
        }
        if !plan.mid.is_empty() && unet.mid().is_none_or(|m| m.layers.len() != plan.mid.len()) {
            return Err(ModelError::invalid(
                "the motion adapter has a mid-block module but the UNet's mid block does not match",
            ));
        }
        Ok(Self {
            unet,
            adapter,
            windows: None,
        })
    }

    /// The same with FreeNoise's windows (`None`: none), refusing windows longer than the
    /// adapter's position table.
    pub fn with_windows(mut self, windows: Option<ContextWindows>) -> Result<Self> {
        if let Some(w) = &windows {
            if w.length > self.adapter.max_frames() {
                return Err(ModelError::invalid(format!(
                    "context windows of {} frames: this motion adapter takes at most {} at once (its motion_max_seq_length)",
                    w.length,
                    self.adapter.max_frames()
                )));
            }
        }
        self.windows = windows;
        Ok(self)
    }

    /// The motion module at `site`.
    fn module(&self, site: Site) -> Option<&super::motion::MotionModule> {
        let a = self.adapter;
        match site {
            Site::Down { block, layer } => a.down.get(block)?.get(layer),
            Site::Mid { layer } => a.mid.get(layer),
            Site::Up { block, layer } => a.up.get(block)?.get(layer),
        }
    }

    /// Checks a video latent B×C×F×H×W against the UNet and the adapter.
    pub fn check_input(&self, x: &Tensor) -> Result<(usize, usize)> {
        let dims = x.dims();
        let c = self.unet.config.in_channels;
        if dims.len() != 5 || dims[1] != c {
            return Err(ModelError::shape(
                "AnimateDiff input",
                format!("B×{c}×F×H×W"),
                dims,
            ));
        }
        let frames = dims[2];
        if frames == 0 {
            return Err(ModelError::invalid("a video latent with no frames"));
        }
        if frames > self.adapter.max_frames() && self.windows.is_none() {
            return Err(ModelError::invalid(format!(
                "{frames} frames: this motion adapter takes 1 to {} (its motion_max_seq_length); for longer videos set context_length on sd.animatediff (FreeNoise's windows)",
                self.adapter.max_frames()
            )));
        }
        Ok((dims[0], frames))
    }

    /// `x` B×C×F×H×W → B·F frames B·F×C×H×W (each sample's frames consecutive).
    pub fn frames_of(x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, f, h, w) = x.dims5()?;
        x.permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((b * f, c, h, w))
    }

    /// B·F frames → B×C×F×H×W.
    pub fn video_of(x: &Tensor, b: usize) -> candle_core::Result<Tensor> {
        let (bf, c, h, w) = x.dims4()?;
        x.reshape((b, bf / b, c, h, w))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }

    /// The context B×L×D repeated per frame (B·F×L×D), as the AnimateDiff pipeline does.
    pub fn context_per_frame(ctx: &Tensor, frames: usize) -> candle_core::Result<Tensor> {
        let (b, l, d) = ctx.dims3()?;
        ctx.unsqueeze(1)?
            .broadcast_as((b, frames, l, d))?
            .contiguous()?
            .reshape((b * frames, l, d))
    }

    /// Runs `f` with `extras` plus the motion modules as the layer hook, for F frames.
    pub fn with_motion<T>(
        &self,
        frames: usize,
        extras: &Extras,
        f: impl FnOnce(&Extras) -> candle_core::Result<T>,
    ) -> candle_core::Result<T> {
        let hook = |site: Site, x: &Tensor| -> candle_core::Result<Tensor> {
            let x = match extras.layer {
                Some(inner) => inner(site, x)?,
                None => x.clone(),
            };
            match self.module(site) {
                Some(m) => m.forward(&x, frames, self.windows.as_ref()),
                None => Ok(x),
            }
        };
        let with = Extras {
            layer: Some(&hook),
            ..*extras
        };
        f(&with)
    }

    /// `UNetMotionModel`'s forward: ε (or v) for the video latent `x` B×C×F×H×W at timestep
    /// `t` with the text context `ctx` B×L×D (one per video), B×C×F×H×W out.
    pub fn forward(&self, x: &Tensor, t: f64, ctx: &Tensor, extras: &Extras) -> Result<Tensor> {
        let (b, frames) = self.check_input(x)?;
        let frames_in = Self::frames_of(x)?;
        let ctx = Self::context_per_frame(ctx, frames)?;
        let out = self.with_motion(frames, extras, |extras| {
            let unet = self.unet;
            let temb = unet.time_embedding(t, b * frames, None, x.device())?;
            let h = unet.conv_in(&frames_in)?;
            let c = Cond::new(&temb, &ctx, extras);
            let (h, mut skips) = unet.down_path(&h, &c, None)?;
            let h = unet.mid_block(&h, &c)?;
            let (h, _) = unet.up_path(&h, &mut skips, &c, (0, 0), None)?;
            unet.head(&h)
        })?;
        Ok(Self::video_of(&out, b)?)
    }
}
