//! diffusers' `ControlNetModel`: the UNet's down path and mid block, fed with the latent plus an
//! embedding of a conditioning image, whose skip features pass through zero-initialised 1×1
//! convolutions and become residuals for the UNet's skips and mid block.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use serde::Deserialize;

use crate::conv::Conv;
use crate::unet::{Hooks, UNet, UNetConfig};
use crate::weights::{self, Weights};
use crate::SdError;

/// The ControlNet-only fields of its `config.json` (the rest is a UNet config).
#[derive(Debug, Clone, Deserialize)]
struct Extra {
    #[serde(default = "embedding_channels")]
    conditioning_embedding_out_channels: Vec<usize>,
    #[serde(default = "three")]
    conditioning_channels: usize,
    #[serde(default = "rgb")]
    controlnet_conditioning_channel_order: String,
    #[serde(default)]
    global_pool_conditions: bool,
}

fn embedding_channels() -> Vec<usize> {
    vec![16, 32, 96, 256]
}
fn three() -> usize {
    3
}
fn rgb() -> String {
    "rgb".into()
}

/// Residuals for the UNet: one per skip connection, and one for the mid block.
pub struct Residuals {
    /// Down residuals, in skip order.
    pub down: Vec<Tensor>,
    /// Mid-block residual.
    pub mid: Tensor,
}

/// A loaded ControlNet.
pub struct ControlNet {
    trunk: UNet,
    embed_in: Conv,
    embed_blocks: Vec<Conv>,
    embed_out: Conv,
    zero_convs: Vec<Conv>,
    mid_conv: Conv,
    bgr: bool,
    global_pool: bool,
}

impl ControlNet {
    /// Loads a diffusers `ControlNetModel` folder.
    pub fn load(dir: &Path) -> Result<Self, SdError> {
        let cfg_path = dir.join("config.json");
        let mut raw: serde_json::Value = weights::read_config(&cfg_path)?;
        // A ControlNet config is a UNet config without the up half: mirror it for the checks.
        if let Some(obj) = raw.as_object_mut() {
            let down: Vec<String> = obj
                .get("down_block_types")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            let up: Vec<String> = down.iter().rev().map(|b| b.replace("Down", "Up")).collect();
            obj.entry("up_block_types").or_insert(up.into());
            let cin = obj.get("in_channels").cloned().unwrap_or(4.into());
            obj.entry("out_channels").or_insert(cin);
        }
        let bad = |e: serde_json::Error| SdError::new(format!("{}: {e}", cfg_path.display()));
        let config: UNetConfig = serde_json::from_value(raw.clone()).map_err(bad)?;
        let extra: Extra = serde_json::from_value(raw).map_err(bad)?;
        let vb = Weights::folder(dir)?.var_builder(DType::F32, &Device::Cpu)?;
        Self::new(config, extra, vb).map_err(|e| SdError::new(format!("{}: {e}", dir.display())))
    }

    fn new(config: UNetConfig, extra: Extra, vb: VarBuilder) -> Result<Self, SdError> {
        if !matches!(
            extra.controlnet_conditioning_channel_order.as_str(),
            "rgb" | "bgr"
        ) {
            return Err(SdError::new(format!(
                "controlnet_conditioning_channel_order = {:?}",
                extra.controlnet_conditioning_channel_order
            )));
        }
        let ch0 = config.block_out_channels[0];
        let trunk = UNet::new_encoder(config, vb.clone())?;
        let build = || -> candle_core::Result<_> {
            let pad1 = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            let stride2 = Conv2dConfig {
                padding: 1,
                stride: 2,
                ..Default::default()
            };
            let e = vb.pp("controlnet_cond_embedding");
            let chans = &extra.conditioning_embedding_out_channels;
            let embed_in = Conv::new(
                extra.conditioning_channels,
                chans[0],
                3,
                pad1,
                e.pp("conv_in"),
            )?;
            let mut embed_blocks = Vec::new();
            for i in 0..chans.len().saturating_sub(1) {
                embed_blocks.push(Conv::new(
                    chans[i],
                    chans[i],
                    3,
                    pad1,
                    e.pp(format!("blocks.{}", 2 * i)),
                )?);
                embed_blocks.push(Conv::new(
                    chans[i],
                    chans[i + 1],
                    3,
                    stride2,
                    e.pp(format!("blocks.{}", 2 * i + 1)),
                )?);
            }
            let last = *chans.last().unwrap_or(&ch0);
            let embed_out = Conv::new(last, ch0, 3, pad1, e.pp("conv_out"))?;
            Ok((embed_in, embed_blocks, embed_out))
        };
        let (embed_in, embed_blocks, embed_out) =
            build().map_err(|e| SdError::new(format!("conditioning embedding: {e}")))?;
        // One zero convolution per skip connection, with the skip's channel count.
        let mut skip_channels = vec![ch0];
        for (k, block) in trunk.down.iter().enumerate() {
            let c = trunk.config.block_out_channels[k];
            skip_channels.extend(std::iter::repeat_n(c, block.layers.len()));
            if block.downsample.is_some() {
                skip_channels.push(c);
            }
        }
        let zero_convs = skip_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                Conv::new(
                    c,
                    c,
                    1,
                    Default::default(),
                    vb.pp(format!("controlnet_down_blocks.{i}")),
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|e| SdError::new(format!("controlnet_down_blocks: {e}")))?;
        let last = *trunk.config.block_out_channels.last().unwrap_or(&ch0);
        let mid_conv = Conv::new(
            last,
            last,
            1,
            Default::default(),
            vb.pp("controlnet_mid_block"),
        )
        .map_err(|e| SdError::new(format!("controlnet_mid_block: {e}")))?;
        Ok(Self {
            trunk,
            embed_in,
            embed_blocks,
            embed_out,
            zero_convs,
            mid_conv,
            bgr: extra.controlnet_conditioning_channel_order == "bgr",
            global_pool: extra.global_pool_conditions,
        })
    }

    /// Residuals for latent `x` at `t` with conditioning `ctx` and control image `cond`
    /// (B×3×H×W in [0, 1], at the pixel size of the latent), scaled by `scale`; guess mode
    /// scales the residuals from 0.1 (shallowest) to 1 (mid block) on a log scale.
    pub fn forward(
        &self,
        x: &Tensor,
        t: f64,
        ctx: &Tensor,
        cond: &Tensor,
        scale: f64,
        guess_mode: bool,
    ) -> Result<Residuals, SdError> {
        let hooks = Hooks::default();
        let b = x.dim(0)?;
        let temb = self.trunk.time_embedding(t, b, x.device())?;
        let cond = if self.bgr {
            cond.flip(&[1])?
        } else {
            cond.clone()
        };
        let mut e = candle_nn::ops::silu(&self.embed_in.forward(&cond)?)?;
        for block in &self.embed_blocks {
            e = candle_nn::ops::silu(&block.forward(&e)?)?;
        }
        let e = self.embed_out.forward(&e)?;
        let h = (self.trunk.conv_in.forward(x)? + e)?;
        let (h, skips) = self.trunk.forward_down_from(&h, &temb, ctx, &hooks)?;
        let h = self.trunk.forward_mid(&h, &temb, ctx, &hooks)?;
        let n = skips.len();
        let scales: Vec<f64> = if guess_mode && !self.global_pool {
            (0..=n)
                .map(|i| 10f64.powf(-1.0 + i as f64 / n as f64) * scale)
                .collect()
        } else {
            vec![scale; n + 1]
        };
        let mut down = Vec::with_capacity(n);
        for ((s, conv), k) in skips.iter().zip(&self.zero_convs).zip(&scales) {
            let mut r = (conv.forward(s)? * *k)?;
            if self.global_pool {
                r = r.mean_keepdim(3)?.mean_keepdim(2)?;
            }
            down.push(r);
        }
        let mut mid = (self.mid_conv.forward(&h)? * scales[n])?;
        if self.global_pool {
            mid = mid.mean_keepdim(3)?.mean_keepdim(2)?;
        }
        Ok(Residuals { down, mid })
    }
}
