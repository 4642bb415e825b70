//! diffusers' `ControlNetModel`: the UNet's down path and mid block, fed with the latent plus an
//! embedding of a conditioning image, whose skip features pass through zero-initialised 1×1
//! convolutions and become residuals for the UNet's skips and mid block.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use latentflow_kernels::Conv;
use latentflow_weights::{read_config, ConfigError, Header, Rename, Weights};
use serde::Deserialize;

use super::checkpoint;
use super::unet::{Cond, Extras, UNet, UNetConfig};
use crate::{ModelError, Result};

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

/// SD 1.5's ControlNet configuration (lllyasviel's v1.1 ControlNets).
const SD15_CONTROLNET: &str = r#"{
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "conditioning_embedding_out_channels": [16, 32, 96, 256],
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "in_channels": 4,
  "layers_per_block": 2
}"#;

/// `control_model.` when the file's keys carry it, else nothing.
fn single_file_prefix(path: &Path) -> Result<String> {
    let header = Header::read(path)?;
    if header.has_prefix("control_model.zero_convs.") {
        Ok("control_model.".into())
    } else if header.has_prefix("zero_convs.") {
        Ok(String::new())
    } else {
        Err(ModelError::format(
            path,
            "no `zero_convs` keys: not a single-file ControlNet (or load its diffusers folder)",
        ))
    }
}

/// The original-layout name of a diffusers ControlNet parameter. `hint` is the number of
/// conditioning-embedding channel stages.
pub fn ldm_controlnet_key(name: &str, layers: usize, hint: usize) -> String {
    if let Some(rest) = name.strip_prefix("controlnet_down_blocks.") {
        let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
        return format!("zero_convs.{i}.0.{tail}");
    }
    if let Some(tail) = name.strip_prefix("controlnet_mid_block.") {
        return format!("middle_block_out.0.{tail}");
    }
    if let Some(rest) = name.strip_prefix("controlnet_cond_embedding.") {
        // input_hint_block: conv, SiLU, conv, SiLU, …: convolutions at even indices.
        let convs = 2 * hint; // conv_in, 2 per stage transition, conv_out
        let (part, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let idx = match part {
            "conv_in" => 0,
            "conv_out" => convs - 1,
            "blocks" => {
                let (b, t) = tail.split_once('.').unwrap_or((tail, ""));
                let b: usize = b.parse().unwrap_or(0);
                return format!("input_hint_block.{}.{t}", 2 * (b + 1));
            }
            _ => 0,
        };
        return format!("input_hint_block.{}.{tail}", 2 * idx);
    }
    checkpoint::unet_key(name, layers, &[])
        .trim_start_matches(checkpoint::UNET_PREFIX)
        .to_owned()
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
    /// Control-image pixels per latent cell: each stride-2 convolution of the conditioning
    /// embedding halves the image (8 for SD's ControlNets).
    pub fn image_downscale(&self) -> usize {
        1 << (self.embed_blocks.len() / 2)
    }

    /// Loads a diffusers `ControlNetModel` folder, or a single-file `.safetensors` ControlNet in
    /// the original layout (`control_model.*` or bare `input_blocks.*`, `zero_convs.*`,
    /// `input_hint_block.*`, `middle_block_out.*`) with the config of `config_dir` (a diffusers
    /// ControlNet folder) or, without one, SD 1.5's ControlNet config.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, None)
    }

    /// [`ControlNet::load`] with an explicit config folder for single files.
    pub fn load_with(path: &Path, config_dir: Option<&Path>) -> Result<Self> {
        let (raw, weights, config_name) = if path.is_dir() {
            let file = path.join("config.json");
            let raw: serde_json::Value = read_config(&file)?;
            (raw, Weights::folder(path)?, file.display().to_string())
        } else {
            let (raw, name): (serde_json::Value, String) = match config_dir {
                Some(d) => {
                    let file = d.join("config.json");
                    (read_config(&file)?, file.display().to_string())
                }
                None => (
                    serde_json::from_str(SD15_CONTROLNET).map_err(|e| ConfigError::Parse {
                        source_name: "the built-in SD 1.5 ControlNet config".into(),
                        source: e,
                    })?,
                    "the built-in SD 1.5 ControlNet config".into(),
                ),
            };
            let prefix = single_file_prefix(path)?;
            let layers = raw
                .get("layers_per_block")
                .and_then(|v| v.as_u64())
                .unwrap_or(2) as usize;
            let hint = raw
                .get("conditioning_embedding_out_channels")
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(4);
            let rename: Rename = std::sync::Arc::new(move |name| {
                format!("{prefix}{}", ldm_controlnet_key(name, layers, hint))
            });
            (raw, Weights::renamed(path, rename), name)
        };
        let mut raw = raw;
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
        let bad = |e: serde_json::Error| ConfigError::Parse {
            source_name: config_name.clone(),
            source: e,
        };
        let config: UNetConfig = serde_json::from_value(raw.clone()).map_err(bad)?;
        let extra: Extra = serde_json::from_value(raw).map_err(bad)?;
        let field = |field: &str, reason: String| ConfigError::Field {
            source_name: config_name.clone(),
            field: field.into(),
            reason,
        };
        if !matches!(
            extra.controlnet_conditioning_channel_order.as_str(),
            "rgb" | "bgr"
        ) {
            return Err(field(
                "controlnet_conditioning_channel_order",
                format!(
                    "{:?} is not supported (rgb, bgr)",
                    extra.controlnet_conditioning_channel_order
                ),
            )
            .into());
        }
        if extra.conditioning_embedding_out_channels.is_empty()
            || extra.conditioning_embedding_out_channels.contains(&0)
            || extra.conditioning_channels == 0
        {
            return Err(field(
                "conditioning_embedding_out_channels",
                "must list non-zero channel counts".into(),
            )
            .into());
        }
        let vb = weights.var_builder(DType::F32, &Device::Cpu)?;
        Self::new(config, extra, vb, path)
    }

    fn new(config: UNetConfig, extra: Extra, vb: VarBuilder, path: &Path) -> Result<Self> {
        let ch0 = config.block_out_channels.first().copied().unwrap_or(0);
        let trunk = UNet::new_encoder(config, vb.clone(), path)?;
        let mismatch = |e| ModelError::mismatch(path.to_path_buf(), "ControlNet", e);
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
        let (embed_in, embed_blocks, embed_out) = build().map_err(mismatch)?;
        // One zero convolution per skip connection, with the skip's channel count.
        let mut skip_channels = vec![ch0];
        for (k, block) in trunk.down().iter().enumerate() {
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
            .map_err(mismatch)?;
        let last = *trunk.config.block_out_channels.last().unwrap_or(&ch0);
        let mid_conv = Conv::new(
            last,
            last,
            1,
            Default::default(),
            vb.pp("controlnet_mid_block"),
        )
        .map_err(mismatch)?;
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

    /// Latent channels the ControlNet takes.
    pub fn in_channels(&self) -> usize {
        self.trunk.config.in_channels
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
    ) -> Result<Residuals> {
        self.forward_with(x, t, ctx, cond, scale, guess_mode, None)
    }

    /// [`ControlNet::forward`] with SDXL's added conditioning (the pooled embedding followed by
    /// the time ids, as [`Extras::added`]), which an SDXL ControlNet (`addition_embed_type =
    /// "text_time"`) requires.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with(
        &self,
        x: &Tensor,
        t: f64,
        ctx: &Tensor,
        cond: &Tensor,
        scale: f64,
        guess_mode: bool,
        added: Option<&Tensor>,
    ) -> Result<Residuals> {
        let hooks = Extras::default();
        let b = x.dim(0)?;
        let temb = self.trunk.time_embedding(t, b, added, x.device())?;
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
        let h = (self.trunk.conv_in(x)? + e)?;
        let c = Cond::new(&temb, ctx, &hooks);
        let (h, skips) = self.trunk.down_path(&h, &c, None)?;
        let h = self.trunk.mid_block(&h, &c)?;
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
