//! AutoencoderKL from a diffusers `vae/` folder: `config.json` + `.safetensors` weights.
//!
//! Every architecture parameter comes from `config.json`; configurations this implementation
//! does not support are refused with the name of the field.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use latentflow_kernels::{Conv, GroupNorm};
use latentflow_nn::{ResnetBlock, ResnetConfig, SpatialSelfAttention};
use latentflow_weights::{checks, Checked, FieldError, Weights};
use serde::Deserialize;

use crate::{ModelError, Result};

type CResult = candle_core::Result<ResnetBlock>;

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
    /// SD3/Flux latent shift: decoding takes z / scaling_factor + shift_factor.
    #[serde(default)]
    pub shift_factor: Option<f64>,
}

fn silu() -> String {
    "silu".into()
}

fn yes() -> bool {
    true
}

impl Checked for VaeConfig {
    fn check(&self) -> Result<(), FieldError> {
        checks::one_of("act_fn", &self.act_fn, &["silu"])?;
        if self.block_out_channels.is_empty() {
            return Err(FieldError::new("block_out_channels", "is empty"));
        }
        if let Some(i) = self.block_out_channels.iter().position(|&c| c == 0) {
            return Err(FieldError::new(format!("block_out_channels[{i}]"), "is 0"));
        }
        if self.block_out_channels.len() > 8 {
            return Err(FieldError::new(
                "block_out_channels",
                format!(
                    "{} levels (a downscale factor of 2^{}) is not a VAE this loader accepts",
                    self.block_out_channels.len(),
                    self.block_out_channels.len() - 1
                ),
            ));
        }
        checks::positive(&[
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
        ])?;
        checks::each_one_of(
            "down_block_types",
            &self.down_block_types,
            &["DownEncoderBlock2D"],
        )?;
        checks::each_one_of(
            "up_block_types",
            &self.up_block_types,
            &["UpDecoderBlock2D"],
        )?;
        checks::lengths(
            self.block_out_channels.len(),
            "block_out_channels",
            &[
                ("down_block_types", self.down_block_types.len()),
                ("up_block_types", self.up_block_types.len()),
            ],
        )?;
        if !self.mid_block_add_attention {
            return Err(FieldError::new(
                "mid_block_add_attention",
                "false is not supported",
            ));
        }
        if let Some(f) = self.shift_factor {
            if !f.is_finite() {
                return Err(FieldError::new(
                    "shift_factor",
                    format!("{f} is not a usable shift"),
                ));
            }
        }
        checks::groups_divide(self.norm_num_groups, &self.block_out_channels)?;
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return Err(FieldError::new(
                "scaling_factor",
                format!("{} is not a usable scale", self.scaling_factor),
            ));
        }
        Ok(())
    }
}

fn pad1() -> Conv2dConfig {
    Conv2dConfig {
        padding: 1,
        ..Default::default()
    }
}

fn resnet_cfg(c: &VaeConfig) -> ResnetConfig {
    ResnetConfig {
        groups: c.norm_num_groups,
        eps: 1e-6,
        temb: None,
        output_scale: 1.0,
        ..ResnetConfig::default()
    }
}

/// The ResNet `resnets.{j}` under `vb`, `cin` to `cout` channels.
fn resnet(vb: &VarBuilder, j: usize, cin: usize, cout: usize, c: &VaeConfig) -> CResult {
    ResnetBlock::new(vb.pp(format!("resnets.{j}")), cin, cout, resnet_cfg(c))
}

/// ResNet, self-attention, ResNet.
struct MidBlock {
    first: ResnetBlock,
    attention: SpatialSelfAttention,
    second: ResnetBlock,
}

impl MidBlock {
    fn new(vb: VarBuilder, ch: usize, c: &VaeConfig) -> candle_core::Result<Self> {
        Ok(Self {
            first: ResnetBlock::new(vb.pp("resnets.0"), ch, ch, resnet_cfg(c))?,
            attention: SpatialSelfAttention::new(
                vb.pp("attentions.0"),
                ch,
                c.norm_num_groups,
                1e-6,
                None,
                1.0,
            )?,
            second: ResnetBlock::new(vb.pp("resnets.1"), ch, ch, resnet_cfg(c))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.first.forward(x, None)?;
        let x = self.attention.forward(&x)?;
        self.second.forward(&x, None)
    }
}

/// The encoder up to the posterior mean.
pub(crate) struct Encoder {
    conv_in: Conv,
    down: Vec<(Vec<ResnetBlock>, Option<Conv>)>,
    mid: MidBlock,
    norm: GroupNorm,
    conv_out: Conv,
    quant_conv: Option<Conv>,
    latent_channels: usize,
}

impl Encoder {
    /// The AutoencoderKL's encoder: moments of 2×latent channels, `quant_conv` over them.
    fn new(vb: &VarBuilder, c: &VaeConfig) -> candle_core::Result<Self> {
        let m = 2 * c.latent_channels;
        Self::with_outputs(vb, c, m, c.use_quant_conv.then_some((m, m)))
    }

    /// An encoder whose `conv_out` gives `out` channels, then `quant_conv` (in, out) if any.
    pub(crate) fn with_outputs(
        vb: &VarBuilder,
        c: &VaeConfig,
        out_channels: usize,
        quant: Option<(usize, usize)>,
    ) -> candle_core::Result<Self> {
        let enc = vb.pp("encoder");
        let chans = &c.block_out_channels;
        let conv_in = Conv::new(c.in_channels, chans[0], 3, pad1(), enc.pp("conv_in"))?;
        let mut down = Vec::with_capacity(chans.len());
        for (i, &out) in chans.iter().enumerate() {
            let vb = enc.pp(format!("down_blocks.{i}"));
            let mut cin = if i == 0 { chans[0] } else { chans[i - 1] };
            let mut resnets = Vec::with_capacity(c.layers_per_block);
            for j in 0..c.layers_per_block {
                resnets.push(resnet(&vb, j, cin, out, c)?);
                cin = out;
            }
            let downsample = if i + 1 < chans.len() {
                let cfg = Conv2dConfig {
                    stride: 2,
                    ..Default::default()
                };
                Some(Conv::new(out, out, 3, cfg, vb.pp("downsamplers.0.conv"))?)
            } else {
                None
            };
            down.push((resnets, downsample));
        }
        let last = chans[chans.len() - 1];
        let quant_conv = match quant {
            Some((i, o)) => Some(Conv::new(i, o, 1, Default::default(), vb.pp("quant_conv"))?),
            None => None,
        };
        Ok(Encoder {
            conv_in,
            down,
            mid: MidBlock::new(enc.pp("mid_block"), last, c)?,
            norm: GroupNorm::new(c.norm_num_groups, last, 1e-6, enc.pp("conv_norm_out"))?,
            conv_out: Conv::new(last, out_channels, 3, pad1(), enc.pp("conv_out"))?,
            quant_conv,
            latent_channels: c.latent_channels,
        })
    }

    /// The posterior mean: the first half of the encoder's moments.
    fn mean(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(image)?.narrow(1, 0, self.latent_channels)
    }

    /// `quant_conv(conv_out(…))` of an image.
    pub(crate) fn forward(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.conv_in.forward(image)?;
        for (resnets, downsample) in &self.down {
            for r in resnets {
                xs = r.forward(&xs, None)?;
            }
            if let Some(d) = downsample {
                // diffusers pads right and bottom by one, then convolves with stride 2.
                xs = d.forward(&xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?;
            }
        }
        let xs = self.mid.forward(&xs)?;
        let xs = self.norm.forward_silu(&xs)?;
        let mut moments = self.conv_out.forward(&xs)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        Ok(moments)
    }
}

/// The decoder.
pub(crate) struct Decoder {
    post_quant_conv: Option<Conv>,
    conv_in: Conv,
    mid: MidBlock,
    up: Vec<(Vec<ResnetBlock>, Option<Conv>)>,
    norm: GroupNorm,
    conv_out: Conv,
}

impl Decoder {
    /// The AutoencoderKL's decoder, `post_quant_conv` over the latent channels.
    fn new(vb: &VarBuilder, c: &VaeConfig) -> candle_core::Result<Self> {
        let l = c.latent_channels;
        Self::with_inputs(vb, c, c.use_post_quant_conv.then_some((l, l)))
    }

    /// A decoder with `post_quant_conv` (in, out) if any.
    pub(crate) fn with_inputs(
        vb: &VarBuilder,
        c: &VaeConfig,
        post_quant: Option<(usize, usize)>,
    ) -> candle_core::Result<Self> {
        let dec = vb.pp("decoder");
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let post_quant_conv = match post_quant {
            Some((i, o)) => Some(Conv::new(
                i,
                o,
                1,
                Default::default(),
                vb.pp("post_quant_conv"),
            )?),
            None => None,
        };
        let mut up = Vec::with_capacity(rev.len());
        let mut prev = rev[0];
        for (i, &out) in rev.iter().enumerate() {
            let vb = dec.pp(format!("up_blocks.{i}"));
            let mut resnets = Vec::with_capacity(c.layers_per_block + 1);
            for j in 0..=c.layers_per_block {
                let cin = if j == 0 { prev } else { out };
                resnets.push(resnet(&vb, j, cin, out, c)?);
            }
            let upsample = if i + 1 < rev.len() {
                Some(Conv::new(out, out, 3, pad1(), vb.pp("upsamplers.0.conv"))?)
            } else {
                None
            };
            up.push((resnets, upsample));
            prev = out;
        }
        let first = *c.block_out_channels.first().unwrap_or(&rev[0]);
        Ok(Decoder {
            post_quant_conv,
            conv_in: Conv::new(c.latent_channels, rev[0], 3, pad1(), dec.pp("conv_in"))?,
            mid: MidBlock::new(dec.pp("mid_block"), rev[0], c)?,
            up,
            norm: GroupNorm::new(c.norm_num_groups, first, 1e-6, dec.pp("conv_norm_out"))?,
            conv_out: Conv::new(first, c.out_channels, 3, pad1(), dec.pp("conv_out"))?,
        })
    }

    /// `decoder(post_quant_conv(z))`.
    pub(crate) fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        let mut xs = self.mid.forward(&self.conv_in.forward(&z)?)?;
        for (resnets, upsample) in &self.up {
            for r in resnets {
                xs = r.forward(&xs, None)?;
            }
            if let Some(u) = upsample {
                let (_, _, h, w) = xs.dims4()?;
                xs = u.forward(&xs.upsample_nearest2d(h * 2, w * 2)?)?;
            }
        }
        let xs = self.norm.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}

/// A loaded AutoencoderKL (f32 on the CPU).
pub struct Vae {
    /// The configuration.
    pub config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    /// The folder it came from.
    pub source: PathBuf,
}

impl Vae {
    /// Loads a diffusers `vae/` folder. Weights are read tensor by tensor and converted to f32.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = VaeConfig::from_file(&dir.join("config.json"))?;
        Self::from_weights(config, &Weights::folder(dir)?, dir)
    }

    /// Builds the VAE from a config and weights; `source` names it in messages.
    pub fn from_weights(config: VaeConfig, weights: &Weights, source: &Path) -> Result<Self> {
        Self::new(
            config,
            weights.var_builder(DType::F32, &Device::Cpu)?,
            source,
        )
    }

    /// Builds the VAE from a checked config and a variable builder; `source` names the weights
    /// in messages.
    pub fn new(config: VaeConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
        let mismatch = |e: candle_core::Error| ModelError::mismatch(source.to_path_buf(), "VAE", e);
        let encoder = Encoder::new(&vb, &config).map_err(mismatch)?;
        let decoder = Decoder::new(&vb, &config).map_err(mismatch)?;
        Ok(Vae {
            config,
            encoder,
            decoder,
            source: source.to_path_buf(),
        })
    }

    /// Decoder output for a raw latent `N×C×h×w` (no scaling factor), image in about [-1, 1].
    pub fn decode_raw(&self, latent: &Tensor) -> Result<Tensor> {
        self.check_latent(latent)?;
        Ok(self.decoder.forward(latent)?)
    }

    fn check_latent(&self, latent: &Tensor) -> Result<()> {
        let d = latent.dims();
        if d.len() != 4 || d[1] != self.config.latent_channels {
            return Err(ModelError::shape(
                "VAE latent",
                format!("N×{}×h×w", self.config.latent_channels),
                d,
            ));
        }
        Ok(())
    }

    /// Posterior mean of an image `N×3×H×W` in [-1, 1] (no scaling factor).
    pub fn encode_mean_raw(&self, image: &Tensor) -> Result<Tensor> {
        let d = image.dims();
        if d.len() != 4 || d[1] != self.config.in_channels {
            return Err(ModelError::shape(
                "VAE input image",
                format!("N×{}×H×W", self.config.in_channels),
                d,
            ));
        }
        Ok(self.encoder.mean(image)?)
    }
}

impl Vae {
    /// Image pixels per latent pixel.
    pub fn downscale(&self) -> usize {
        1 << self.config.block_out_channels.len().saturating_sub(1)
    }

    /// Decodes in overlapping `tile`×`tile` latent tiles blended linearly where they overlap
    /// (bounded memory for large images); `tile` 0 or at least the latent size decodes whole.
    pub fn decode_tiled(&self, latent: &Tensor, tile: usize) -> Result<Tensor> {
        self.check_latent(latent)?;
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
