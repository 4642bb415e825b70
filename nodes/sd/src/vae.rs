//! AutoencoderKL from a diffusers `vae/` folder: `config.json` + `.safetensors` weights.
//!
//! Every architecture parameter comes from `config.json`; configurations this implementation
//! does not support are refused with the name of the field.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde::Deserialize;

use crate::weights::Weights;
use crate::SdError;

fn err(e: impl std::fmt::Display) -> SdError {
    SdError::new(e.to_string())
}

/// The fields of diffusers' `AutoencoderKL` config that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Channels per resolution level.
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per block.
    pub layers_per_block: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// Group-norm groups.
    pub norm_num_groups: usize,
    /// Latent scaling factor of the pipeline.
    pub scaling_factor: f64,
    /// Activation (only `silu`).
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Encoder block types (only `DownEncoderBlock2D`).
    pub down_block_types: Vec<String>,
    /// Decoder block types (only `UpDecoderBlock2D`).
    pub up_block_types: Vec<String>,
    /// Whether `quant_conv` exists.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Attention in the mid block (only `true`).
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// SD3/Flux latent shift (only none).
    #[serde(default)]
    pub shift_factor: Option<f64>,
}

fn silu() -> String {
    "silu".into()
}

fn yes() -> bool {
    true
}

impl VaeConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, SdError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let cfg: VaeConfig =
            serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?;
        cfg.check_fields().map_err(|field| {
            err(format!(
                "{}: unsupported VAE configuration: {field}",
                path.display()
            ))
        })?;
        Ok(cfg)
    }

    /// Checks the fields this implementation supports; the error names the field.
    pub fn check_fields(&self) -> Result<(), String> {
        if self.act_fn != "silu" {
            return Err(format!("act_fn = {:?} (only \"silu\")", self.act_fn));
        }
        if let Some(b) = self
            .down_block_types
            .iter()
            .find(|b| *b != "DownEncoderBlock2D")
        {
            return Err(format!(
                "down_block_types contains {b:?} (only DownEncoderBlock2D)"
            ));
        }
        if let Some(b) = self
            .up_block_types
            .iter()
            .find(|b| *b != "UpDecoderBlock2D")
        {
            return Err(format!(
                "up_block_types contains {b:?} (only UpDecoderBlock2D)"
            ));
        }
        if self.down_block_types.len() != self.block_out_channels.len()
            || self.up_block_types.len() != self.block_out_channels.len()
        {
            return Err("block_out_channels and the block type lists differ in length".into());
        }
        if !self.mid_block_add_attention {
            return Err("mid_block_add_attention = false".into());
        }
        if self.shift_factor.is_some() {
            return Err("shift_factor (SD3/Flux VAEs are not supported yet)".into());
        }
        if self
            .block_out_channels
            .iter()
            .any(|c| c % self.norm_num_groups != 0)
        {
            return Err("norm_num_groups must divide every block_out_channels".into());
        }
        Ok(())
    }
}

/// The encoder half up to the posterior mean (candle-transformers keeps the mean private).
struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownEncoderBlock2D>,
    mid: UNetMidBlock2D,
    norm: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

impl Encoder {
    fn new(vb: &VarBuilder, c: &VaeConfig) -> candle_core::Result<Self> {
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let enc = vb.pp("encoder");
        let chans = &c.block_out_channels;
        let conv_in = candle_nn::conv2d(c.in_channels, chans[0], 3, pad1, enc.pp("conv_in"))?;
        let mut down = Vec::with_capacity(chans.len());
        for (i, &out) in chans.iter().enumerate() {
            let cfg = DownEncoderBlock2DConfig {
                num_layers: c.layers_per_block,
                resnet_eps: 1e-6,
                resnet_groups: c.norm_num_groups,
                output_scale_factor: 1.0,
                add_downsample: i + 1 < chans.len(),
                downsample_padding: 0,
            };
            let inp = if i == 0 { chans[0] } else { chans[i - 1] };
            down.push(DownEncoderBlock2D::new(
                enc.pp("down_blocks").pp(i.to_string()),
                inp,
                out,
                cfg,
            )?);
        }
        let last = chans[chans.len() - 1];
        let mid_cfg = UNetMidBlock2DConfig {
            num_layers: 1,
            resnet_eps: 1e-6,
            resnet_groups: Some(c.norm_num_groups),
            attn_num_head_channels: None,
            output_scale_factor: 1.0,
        };
        let mid = UNetMidBlock2D::new(enc.pp("mid_block"), last, None, mid_cfg)?;
        let norm = candle_nn::group_norm(c.norm_num_groups, last, 1e-6, enc.pp("conv_norm_out"))?;
        let conv_out = candle_nn::conv2d(last, 2 * c.latent_channels, 3, pad1, enc.pp("conv_out"))?;
        let quant_conv = if c.use_quant_conv {
            let m = 2 * c.latent_channels;
            Some(candle_nn::conv2d(
                m,
                m,
                1,
                Default::default(),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Encoder {
            conv_in,
            down,
            mid,
            norm,
            conv_out,
            quant_conv,
            latent_channels: c.latent_channels,
        })
    }

    /// The posterior mean: the first half of the encoder's moments.
    fn mean(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.conv_in.forward(image)?;
        for block in &self.down {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid.forward(&xs, None)?;
        let xs = candle_nn::ops::silu(&self.norm.forward(&xs)?)?;
        let mut moments = self.conv_out.forward(&xs)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        moments.narrow(1, 0, self.latent_channels)
    }
}

/// A loaded AutoencoderKL (f32 on the CPU).
pub struct Vae {
    /// The configuration.
    pub config: VaeConfig,
    model: AutoEncoderKL,
    encoder: Encoder,
    /// The folder it came from.
    pub source: PathBuf,
}

impl Vae {
    /// Loads a diffusers `vae/` folder. Weights are memory-mapped and converted to f32.
    pub fn load(dir: &Path) -> Result<Self, SdError> {
        let config = VaeConfig::from_file(&dir.join("config.json"))?;
        Self::from_weights(config, &Weights::folder(dir)?, dir)
    }

    /// Builds the VAE from a config and weights; `source` names it in messages.
    pub fn from_weights(
        config: VaeConfig,
        weights: &Weights,
        source: &Path,
    ) -> Result<Self, SdError> {
        let vb = weights.var_builder(DType::F32, &Device::Cpu)?;
        let cfg = AutoEncoderKLConfig {
            block_out_channels: config.block_out_channels.clone(),
            layers_per_block: config.layers_per_block,
            latent_channels: config.latent_channels,
            norm_num_groups: config.norm_num_groups,
            use_quant_conv: config.use_quant_conv,
            use_post_quant_conv: config.use_post_quant_conv,
        };
        let mismatch = |e: candle_core::Error| {
            err(format!(
                "{}: VAE weights do not match the config: {e}",
                source.display()
            ))
        };
        let encoder = Encoder::new(&vb, &config).map_err(mismatch)?;
        let model = AutoEncoderKL::new(vb, config.in_channels, config.out_channels, cfg)
            .map_err(mismatch)?;
        Ok(Vae {
            config,
            model,
            encoder,
            source: source.to_path_buf(),
        })
    }

    /// Decoder output for a raw latent `N×C×h×w` (no scaling factor), image in about [-1, 1].
    pub fn decode_raw(&self, latent: &Tensor) -> Result<Tensor, SdError> {
        self.model.decode(latent).map_err(err)
    }

    /// Posterior mean of an image `N×3×H×W` in [-1, 1] (no scaling factor).
    pub fn encode_mean_raw(&self, image: &Tensor) -> Result<Tensor, SdError> {
        self.encoder.mean(image).map_err(err)
    }
}

impl Vae {
    /// Image pixels per latent pixel.
    pub fn downscale(&self) -> usize {
        1 << self.config.block_out_channels.len().saturating_sub(1)
    }

    /// Decodes in overlapping `tile`×`tile` latent tiles blended linearly where they overlap
    /// (bounded memory for large images); `tile` 0 or at least the latent size decodes whole.
    pub fn decode_tiled(&self, latent: &Tensor, tile: usize) -> Result<Tensor, SdError> {
        let (n, _, h, w) = latent.dims4()?;
        if tile == 0 || (tile >= h && tile >= w) {
            return self.decode_raw(latent);
        }
        let tile = tile.max(4);
        let overlap = (tile / 4).max(1);
        let starts = |len: usize| -> Vec<usize> {
            if len <= tile {
                return vec![0];
            }
            let step = tile - overlap;
            let mut s: Vec<usize> = (0..)
                .map(|i| i * step)
                .take_while(|&p| p + tile < len)
                .collect();
            s.push(len - tile);
            s
        };
        let f = self.downscale();
        let (oh, ow) = (h * f, w * f);
        let mut acc = vec![0f32; n * 3 * oh * ow];
        let mut wsum = vec![0f32; oh * ow];
        let ramp = (overlap * f) as f32;
        for &y0 in &starts(h) {
            for &x0 in &starts(w) {
                let (th, tw) = (tile.min(h), tile.min(w));
                let part = latent.narrow(2, y0, th)?.narrow(3, x0, tw)?;
                let img = self.decode_raw(&part.contiguous()?)?;
                let c = img.dim(1)?;
                let data = img.flatten_all()?.to_vec1::<f32>()?;
                let (ph, pw) = (th * f, tw * f);
                // Weight: 1 inside, ramping down towards edges shared with another tile.
                let edge = |d: usize, at_border: bool| {
                    if at_border {
                        1.0
                    } else {
                        ((d as f32 + 0.5) / ramp).min(1.0)
                    }
                };
                for yy in 0..ph {
                    let wy = edge(yy, y0 == 0).min(edge(ph - 1 - yy, y0 + th == h));
                    for xx in 0..pw {
                        let wx = edge(xx, x0 == 0).min(edge(pw - 1 - xx, x0 + tw == w));
                        let wt = wy * wx;
                        let (gy, gx) = (y0 * f + yy, x0 * f + xx);
                        wsum[gy * ow + gx] += wt;
                        for b in 0..n {
                            for ch in 0..c.min(3) {
                                acc[((b * 3 + ch) * oh + gy) * ow + gx] +=
                                    wt * data[((b * c + ch) * ph + yy) * pw + xx];
                            }
                        }
                    }
                }
            }
        }
        for b in 0..n {
            for ch in 0..3 {
                for i in 0..oh * ow {
                    acc[(b * 3 + ch) * oh * ow + i] /= wsum[i].max(1e-6);
                }
            }
        }
        Ok(Tensor::from_vec(acc, (n, 3, oh, ow), latent.device())?)
    }
}
