//! The blocks of diffusers' `UNet2DModel`: ResNets with optional self-attention per level,
//! down- and up-sampling by strided convolution, nearest ×2 plus convolution, or a resampling
//! ResNet, and the mid block.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use latentflow_kernels::{attention, upsample_nearest, Attend, Conv, GroupNorm};
use latentflow_kernels::{linear, Linear};
use latentflow_nn::{Resample, ResnetBlock, ResnetConfig};

type CResult<T> = candle_core::Result<T>;

/// diffusers' `Attention` as the UNet2D blocks build it (`_from_deprecated_attn_block`): an
/// optional group norm, self-attention over the pixels, the residual added, the sum divided by
/// the output scale.
pub struct SpatialSelfAttention {
    norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    rescale: f64,
}

impl SpatialSelfAttention {
    /// Over `channels`, heads of `head_dim` channels (`None`: one head), `groups` for the norm.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        head_dim: Option<usize>,
        groups: Option<usize>,
        eps: f64,
        rescale: f64,
    ) -> CResult<Self> {
        let norm = match groups {
            Some(g) => Some(GroupNorm::new(g, channels, eps, vb.pp("group_norm"))?),
            None => None,
        };
        Ok(Self {
            norm,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out.0"))?,
            heads: channels / head_dim.unwrap_or(channels).max(1),
            rescale,
        })
    }

    /// `x` B×C×H×W.
    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = match &self.norm {
            Some(g) => g.forward(x)?,
            None => x.clone(),
        };
        let seq = n.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?; // B×L×C
        let d = c / self.heads;
        let split = |t: Tensor| -> CResult<Tensor> {
            t.reshape((b, h * w, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (split(self.to_q.forward(&seq)?)? * (d as f64).powf(-0.5))?;
        let k = split(self.to_k.forward(&seq)?)?;
        let v = split(self.to_v.forward(&seq)?)?;
        let o = attention(&q, &k, &v, Attend::default())?
            .transpose(1, 2)?
            .reshape((b, h * w, c))?;
        let o = self
            .to_out
            .forward(&o)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        let out = (o + x)?;
        if self.rescale == 1.0 {
            Ok(out)
        } else {
            out / self.rescale
        }
    }
}

/// What every block of one model shares.
#[derive(Clone, Copy)]
pub struct Shared {
    /// ResNet settings (groups, ε, time embedding, time mode).
    pub resnet: ResnetConfig,
    /// Channels per head.
    pub head_dim: Option<usize>,
}

impl Shared {
    fn resnet(
        &self,
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        resample: Resample,
    ) -> CResult<ResnetBlock> {
        ResnetBlock::new(
            vb,
            cin,
            cout,
            ResnetConfig {
                resample,
                ..self.resnet
            },
        )
    }

    fn attention(&self, vb: VarBuilder, channels: usize) -> CResult<SpatialSelfAttention> {
        SpatialSelfAttention::new(
            vb,
            channels,
            self.head_dim,
            Some(self.resnet.groups),
            self.resnet.eps,
            1.0,
        )
    }
}

/// How a level changes resolution at its end.
enum Sampler {
    None,
    /// A 3×3 convolution of stride 2 (down) or nearest ×2 then a 3×3 convolution (up).
    Conv(Conv),
    /// A ResNet that pools or upsamples inside.
    Resnet(Box<ResnetBlock>),
}

impl Sampler {
    fn forward(&self, x: &Tensor, temb: &Tensor, up: bool) -> CResult<Tensor> {
        match self {
            Sampler::None => Ok(x.clone()),
            Sampler::Conv(c) if up => c.forward(&upsample_nearest(x, 2)?),
            Sampler::Conv(c) => c.forward(x),
            Sampler::Resnet(r) => r.forward(x, Some(temb)),
        }
    }
}

/// One level of the encoder: ResNets (each followed by attention in `AttnDownBlock2D`), then
/// down-sampling unless it is the last level.
pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialSelfAttention>,
    sampler: Sampler,
}

impl DownBlock {
    /// `kind` from `cin` to `cout` channels, `layers` ResNets; `downsample` one of `conv` or
    /// `resnet` (only for attention blocks; `DownBlock2D` always convolves,
    /// `ResnetDownsampleBlock2D` always uses a ResNet).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        kind: &str,
        cin: usize,
        cout: usize,
        layers: usize,
        last: bool,
        downsample: &str,
        padding: usize,
        s: &Shared,
    ) -> CResult<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let c = if j == 0 { cin } else { cout };
            resnets.push(s.resnet(vb.pp(format!("resnets.{j}")), c, cout, Resample::None)?);
            if kind == "AttnDownBlock2D" {
                attentions.push(s.attention(vb.pp(format!("attentions.{j}")), cout)?);
            }
        }
        let resnet_sampler = match kind {
            "ResnetDownsampleBlock2D" => true,
            "AttnDownBlock2D" => downsample == "resnet",
            _ => false,
        };
        let sampler = if last {
            Sampler::None
        } else if resnet_sampler {
            Sampler::Resnet(Box::new(s.resnet(
                vb.pp("downsamplers.0"),
                cout,
                cout,
                Resample::Down,
            )?))
        } else {
            let cfg = Conv2dConfig {
                padding,
                stride: 2,
                ..Default::default()
            };
            Sampler::Conv(Conv::new(cout, cout, 3, cfg, vb.pp("downsamplers.0.conv"))?)
        };
        Ok(Self {
            resnets,
            attentions,
            sampler,
        })
    }

    /// The block's output and the states the up path takes as skips.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> CResult<(Tensor, Vec<Tensor>)> {
        let mut x = x.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (j, r) in self.resnets.iter().enumerate() {
            x = r.forward(&x, Some(temb))?;
            if let Some(a) = self.attentions.get(j) {
                x = a.forward(&x)?;
            }
            skips.push(x.clone());
        }
        if !matches!(self.sampler, Sampler::None) {
            x = self.sampler.forward(&x, temb, false)?;
            skips.push(x.clone());
        }
        Ok((x, skips))
    }
}

/// One level of the decoder: ResNets over the input concatenated with a skip (each followed by
/// attention in `AttnUpBlock2D`), then up-sampling unless it is the last level.
pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialSelfAttention>,
    sampler: Sampler,
}

/// Channel counts of one up block.
pub struct UpChannels {
    /// The level's skip channels of its last ResNet (the previous level's output).
    pub skip_in: usize,
    /// Out channels.
    pub out: usize,
    /// Channels coming from below.
    pub prev: usize,
}

impl UpBlock {
    /// `kind` with `layers` ResNets.
    pub fn new(
        vb: VarBuilder,
        kind: &str,
        ch: UpChannels,
        layers: usize,
        last: bool,
        upsample: &str,
        s: &Shared,
    ) -> CResult<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let skip = if j == layers - 1 { ch.skip_in } else { ch.out };
            let cin = if j == 0 { ch.prev } else { ch.out };
            let vbr = vb.pp(format!("resnets.{j}"));
            resnets.push(s.resnet(vbr, cin + skip, ch.out, Resample::None)?);
            if kind == "AttnUpBlock2D" {
                attentions.push(s.attention(vb.pp(format!("attentions.{j}")), ch.out)?);
            }
        }
        let resnet_sampler = match kind {
            "ResnetUpsampleBlock2D" => true,
            "AttnUpBlock2D" => upsample == "resnet",
            _ => false,
        };
        let sampler = if last {
            Sampler::None
        } else if resnet_sampler {
            Sampler::Resnet(Box::new(s.resnet(
                vb.pp("upsamplers.0"),
                ch.out,
                ch.out,
                Resample::Up,
            )?))
        } else {
            let pad = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            Sampler::Conv(Conv::new(
                ch.out,
                ch.out,
                3,
                pad,
                vb.pp("upsamplers.0.conv"),
            )?)
        };
        Ok(Self {
            resnets,
            attentions,
            sampler,
        })
    }

    /// ResNets this block has (as many skips it takes).
    pub fn skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` in the order the down path produced them (the last is taken first).
    pub fn forward(&self, x: &Tensor, skips: &[Tensor], temb: &Tensor) -> CResult<Tensor> {
        let mut x = x.clone();
        for (j, r) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - j];
            x = r.forward(&Tensor::cat(&[&x, skip], 1)?, Some(temb))?;
            if let Some(a) = self.attentions.get(j) {
                x = a.forward(&x)?;
            }
        }
        self.sampler.forward(&x, temb, true)
    }
}

/// ResNet, (attention, ResNet).
pub struct MidBlock {
    first: ResnetBlock,
    attention: Option<SpatialSelfAttention>,
    second: ResnetBlock,
}

impl MidBlock {
    /// Over `channels`; `attn_groups` for the attention's norm (none: no norm).
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        scale: f64,
        attention: bool,
        attn_groups: Option<usize>,
        s: &Shared,
    ) -> CResult<Self> {
        let shared = Shared {
            resnet: ResnetConfig {
                output_scale: scale,
                ..s.resnet
            },
            ..*s
        };
        let attention = if attention {
            Some(SpatialSelfAttention::new(
                vb.pp("attentions.0"),
                channels,
                s.head_dim,
                attn_groups,
                s.resnet.eps,
                scale,
            )?)
        } else {
            None
        };
        Ok(Self {
            first: shared.resnet(vb.pp("resnets.0"), channels, channels, Resample::None)?,
            attention,
            second: shared.resnet(vb.pp("resnets.1"), channels, channels, Resample::None)?,
        })
    }

    /// `x` B×C×h×w.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> CResult<Tensor> {
        let mut x = self.first.forward(x, Some(temb))?;
        if let Some(a) = &self.attention {
            x = a.forward(&x)?;
        }
        self.second.forward(&x, Some(temb))
    }
}
