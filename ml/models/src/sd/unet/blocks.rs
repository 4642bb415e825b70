//! The UNet's blocks and how they are built from a config: down blocks (ResNets with optional
//! transformers, then a stride-2 convolution), the mid block, up blocks fed with skip
//! connections, and the output head. Parameter names are diffusers'.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use latentflow_kernels::{linear, Linear};
use latentflow_kernels::{Conv, GroupNorm};
use latentflow_nn::{ResnetBlock, ResnetConfig, Transformer2D, Transformer2DConfig};

use super::config::{Plan, UNetConfig};
use super::forward::Cond;

/// One ResNet with an optional transformer after it.
pub struct Layer {
    /// The ResNet.
    pub resnet: ResnetBlock,
    /// The transformer (cross-attention blocks).
    pub attention: Option<Transformer2D>,
}

impl Layer {
    /// ResNet (with the time embedding), then the transformer over `ctx`.
    pub fn forward(&self, x: &Tensor, c: &Cond) -> candle_core::Result<Tensor> {
        let x = self.resnet.forward(x, Some(c.temb))?;
        match &self.attention {
            Some(a) => a.forward(&x, c.ctx, c.extras.attention),
            None => Ok(x),
        }
    }
}

/// A down block: layers, then an optional stride-2 convolution and its padding.
pub struct DownBlock {
    /// Its layers.
    pub layers: Vec<Layer>,
    /// The downsampler and its padding (0: diffusers pads right and bottom by one).
    pub downsample: Option<(Conv, usize)>,
}

impl DownBlock {
    /// The downsampler applied to `x` (identity when the block has none).
    pub fn downsample(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let Some((conv, pad)) = &self.downsample else {
            return Ok(None);
        };
        let x = if *pad == 0 {
            x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?
        } else {
            x.clone()
        };
        Ok(Some(conv.forward(&x)?))
    }
}

/// An up block: layers fed with skip connections, then an optional upsampler.
pub struct UpBlock {
    /// Its layers.
    pub layers: Vec<Layer>,
    /// The convolution after nearest-neighbour upsampling.
    pub upsample: Option<Conv>,
}

/// The mid block: a ResNet, then (transformer, ResNet) pairs.
pub struct MidBlock {
    /// First ResNet.
    pub first: ResnetBlock,
    /// The rest.
    pub layers: Vec<(Transformer2D, ResnetBlock)>,
}

/// Every part of a UNet (or, without up blocks and head, of a ControlNet's trunk).
pub struct Parts {
    /// Input convolution.
    pub conv_in: Conv,
    /// Time-embedding MLP.
    pub time: (Linear, Linear),
    /// SDXL's added-conditioning MLP (`add_embedding`) and the width of its time-id features
    /// (`addition_time_embed_dim`).
    pub added: Option<((Linear, Linear), usize)>,
    /// Down blocks.
    pub down: Vec<DownBlock>,
    /// Mid block.
    pub mid: Option<MidBlock>,
    /// Up blocks.
    pub up: Vec<UpBlock>,
    /// Output norm and convolution.
    pub head: Option<(GroupNorm, Conv)>,
}

fn resnet(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    temb: usize,
    c: &UNetConfig,
    scale: f64,
) -> candle_core::Result<ResnetBlock> {
    let cfg = ResnetConfig {
        groups: c.norm_num_groups,
        eps: c.norm_eps,
        temb: Some(temb),
        output_scale: scale,
        ..ResnetConfig::default()
    };
    ResnetBlock::new(vb, cin, cout, cfg)
}

/// Builds the parts from `vb`; `with_up` false leaves out the up blocks and the head.
#[allow(clippy::needless_range_loop)] // levels index several per-block lists at once
pub fn build(
    c: &UNetConfig,
    plan: &Plan,
    vb: VarBuilder,
    with_up: bool,
) -> candle_core::Result<Parts> {
    let ch = &c.block_out_channels;
    let n = ch.len();
    let temb = ch[0] * 4;
    let pad = |k: usize| Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    let conv_in = Conv::new(
        c.in_channels,
        ch[0],
        c.conv_in_kernel,
        pad(c.conv_in_kernel),
        vb.pp("conv_in"),
    )?;
    let time = (
        linear(ch[0], temb, vb.pp("time_embedding.linear_1"))?,
        linear(temb, temb, vb.pp("time_embedding.linear_2"))?,
    );
    let added = match c.other_str("addition_embed_type") {
        Some("text_time") => {
            let (Some(d), Some(input)) = (
                c.other_usize("addition_time_embed_dim"),
                c.other_usize("projection_class_embeddings_input_dim"),
            ) else {
                candle_core::bail!(
                    "text_time added conditioning needs addition_time_embed_dim and projection_class_embeddings_input_dim"
                );
            };
            Some((
                (
                    linear(input, temb, vb.pp("add_embedding.linear_1"))?,
                    linear(temb, temb, vb.pp("add_embedding.linear_2"))?,
                ),
                d,
            ))
        }
        _ => None,
    };
    let tcfg = |i: usize| Transformer2DConfig {
        heads: plan.heads[i],
        dim_head: ch[i] / plan.heads[i],
        layers: plan.transformer_layers[i],
        context_dim: plan.context[i],
        groups: c.norm_num_groups,
        linear_projection: c.use_linear_projection,
    };
    let rs = c.resnet_out_scale_factor;
    let attention = |vb: VarBuilder, name: String, channels: usize, level: usize| {
        Transformer2D::new(vb, channels, &tcfg(level), name)
    };

    let mut down = Vec::with_capacity(n);
    let mut cin = ch[0];
    for i in 0..n {
        let vb = vb.pp(format!("down_blocks.{i}"));
        let mut layers = Vec::new();
        for j in 0..plan.layers[i] {
            let attn = if plan.cross[i] {
                let name = format!("down_blocks.{i}.attentions.{j}");
                Some(attention(vb.pp(format!("attentions.{j}")), name, ch[i], i)?)
            } else {
                None
            };
            let rin = if j == 0 { cin } else { ch[i] };
            layers.push(Layer {
                resnet: resnet(vb.pp(format!("resnets.{j}")), rin, ch[i], temb, c, rs)?,
                attention: attn,
            });
        }
        let downsample = if i + 1 < n {
            let cfg = Conv2dConfig {
                padding: c.downsample_padding,
                stride: 2,
                ..Default::default()
            };
            let conv = Conv::new(ch[i], ch[i], 3, cfg, vb.pp("downsamplers.0.conv"))?;
            Some((conv, c.downsample_padding))
        } else {
            None
        };
        down.push(DownBlock { layers, downsample });
        cin = ch[i];
    }

    let last = n - 1;
    let mid = match c.mid_block_type {
        Some(_) => {
            let vb = vb.pp("mid_block");
            let ms = c.mid_block_scale_factor;
            let name = "mid_block.attentions.0".to_string();
            let pair = (
                attention(vb.pp("attentions.0"), name, ch[last], last)?,
                resnet(vb.pp("resnets.1"), ch[last], ch[last], temb, c, ms)?,
            );
            Some(MidBlock {
                first: resnet(vb.pp("resnets.0"), ch[last], ch[last], temb, c, ms)?,
                layers: vec![pair],
            })
        }
        None => None,
    };

    let mut up = Vec::with_capacity(n);
    let mut prev = ch[last];
    for i in 0..if with_up { n } else { 0 } {
        let level = n - 1 - i; // the down level this block mirrors
        let out = ch[level];
        let skip_in = ch[level.saturating_sub(1)];
        let vb = vb.pp(format!("up_blocks.{i}"));
        let count = plan.layers[level] + 1;
        let mut layers = Vec::new();
        for j in 0..count {
            let skip = if j == count - 1 { skip_in } else { out };
            let rin = if j == 0 { prev } else { out };
            let attn = if plan.cross[level] {
                let name = format!("up_blocks.{i}.attentions.{j}");
                Some(attention(
                    vb.pp(format!("attentions.{j}")),
                    name,
                    out,
                    level,
                )?)
            } else {
                None
            };
            layers.push(Layer {
                resnet: resnet(vb.pp(format!("resnets.{j}")), rin + skip, out, temb, c, rs)?,
                attention: attn,
            });
        }
        let upsample = if i + 1 < n {
            Some(Conv::new(out, out, 3, pad(3), vb.pp("upsamplers.0.conv"))?)
        } else {
            None
        };
        up.push(UpBlock { layers, upsample });
        prev = out;
    }

    let head = if with_up {
        Some((
            GroupNorm::new(c.norm_num_groups, ch[0], c.norm_eps, vb.pp("conv_norm_out"))?,
            Conv::new(
                ch[0],
                c.out_channels,
                c.conv_out_kernel,
                pad(c.conv_out_kernel),
                vb.pp("conv_out"),
            )?,
        ))
    } else {
        None
    };
    Ok(Parts {
        conv_in,
        time,
        added,
        down,
        mid,
        up,
        head,
    })
}
