//! diffusers' `UNet2DConditionModel`, configured from its `config.json`.
//!
//! The blocks are public so that other nodes can run parts of the network: ControlNet residuals
//! are injected through [`Hooks`], cross-attention probabilities are reported to a hook, and
//! the down/mid/up paths are separate methods (feature caching such as DeepCache).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{group_norm, linear, Conv2dConfig, GroupNorm, Linear, VarBuilder};
use serde::Deserialize;

use crate::attention::{AttentionHook, Transformer2D, Transformer2DConfig};
use crate::conv::Conv;
use crate::resnet::{ResnetBlock, ResnetConfig};
use crate::weights::{self, Weights};
use crate::SdError;

/// A config value given once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same for every block.
    One(T),
    /// One per block.
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    fn expand(&self, n: usize, field: &str) -> Result<Vec<T>, String> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => Err(format!("{field} has {} entries for {n} blocks", v.len())),
        }
    }
}

/// The fields of diffusers' `UNet2DConditionModel` config that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in (4, or 9 for inpainting models).
    pub in_channels: usize,
    /// Channels out.
    pub out_channels: usize,
    /// Channels per resolution level.
    pub block_out_channels: Vec<usize>,
    /// Down block types.
    pub down_block_types: Vec<String>,
    /// Up block types.
    pub up_block_types: Vec<String>,
    /// Mid block type (or none).
    #[serde(default = "mid")]
    pub mid_block_type: Option<String>,
    /// ResNets per block.
    #[serde(default = "two")]
    pub layers_per_block: PerBlock<usize>,
    /// Heads (SD 1.x/2.x configs put the head count in `attention_head_dim`).
    #[serde(default)]
    pub attention_head_dim: Option<PerBlock<usize>>,
    /// Heads, when given explicitly.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Width of the conditioning.
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks per attention.
    #[serde(default = "one")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Group-norm groups.
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Group-norm epsilon.
    #[serde(default = "eps")]
    pub norm_eps: f64,
    /// Linear transformer projections (SD 2.x).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Timestep embedding layout.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Timestep embedding frequency shift.
    #[serde(default)]
    pub freq_shift: f64,
    /// Padding of the downsampling convolutions.
    #[serde(default = "one_usize")]
    pub downsample_padding: usize,
    /// Mid-block ResNet output scale.
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    /// ResNet output scale.
    #[serde(default = "one_f64")]
    pub resnet_out_scale_factor: f64,
    /// Maps the input from [0, 1] to [-1, 1].
    #[serde(default)]
    pub center_input_sample: bool,
    /// Input convolution kernel.
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    /// Output convolution kernel.
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    /// Refused unless `silu`.
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Refused unless `positional`.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Refused unless `default`.
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    /// Refused when set (class-conditional UNets).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Refused when set (SDXL `text_time`).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Refused when set (LCM-distilled guidance embedding).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Refused when set.
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// Refused when true.
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    /// Refused when true.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Refused when set.
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    /// Refused when set.
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    /// Refused when true.
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    /// Refused when set.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Prediction type is not here (it is in the scheduler config); kept for the sample size.
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
}

fn mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn two() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn one() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn groups() -> usize {
    32
}
fn eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn one_usize() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn three() -> usize {
    3
}
fn silu() -> String {
    "silu".into()
}
fn positional() -> String {
    "positional".into()
}
fn default_shift() -> String {
    "default".into()
}

/// Per-block settings derived from the config.
#[derive(Debug, Clone)]
struct Plan {
    layers: Vec<usize>,
    heads: Vec<usize>,
    context: Vec<usize>,
    transformer_layers: Vec<usize>,
    cross: Vec<bool>,
}

impl UNetConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, SdError> {
        let cfg: Self = weights::read_config(path)?;
        cfg.plan().map_err(|f| {
            SdError::new(format!(
                "{}: unsupported UNet configuration: {f}",
                path.display()
            ))
        })?;
        Ok(cfg)
    }

    fn plan(&self) -> Result<Plan, String> {
        let refuse = |field: &str, v: &dyn std::fmt::Debug| Err(format!("{field} = {v:?}"));
        if self.act_fn != "silu" {
            return refuse("act_fn", &self.act_fn);
        }
        if self.time_embedding_type != "positional" {
            return refuse("time_embedding_type", &self.time_embedding_type);
        }
        if self.resnet_time_scale_shift != "default" {
            return refuse("resnet_time_scale_shift", &self.resnet_time_scale_shift);
        }
        if let Some(v) = &self.class_embed_type {
            return refuse("class_embed_type", v);
        }
        if let Some(v) = &self.addition_embed_type {
            return Err(format!(
                "addition_embed_type = {v:?} (SDXL-style added conditioning is not supported yet)"
            ));
        }
        if let Some(v) = &self.time_cond_proj_dim {
            return refuse("time_cond_proj_dim", v);
        }
        if let Some(v) = &self.encoder_hid_dim_type {
            return refuse("encoder_hid_dim_type", v);
        }
        if !matches!(
            &self.only_cross_attention,
            serde_json::Value::Null | serde_json::Value::Bool(false)
        ) {
            return refuse("only_cross_attention", &self.only_cross_attention);
        }
        if self.dual_cross_attention {
            return refuse("dual_cross_attention", &true);
        }
        if let Some(v) = &self.time_embedding_act_fn {
            return refuse("time_embedding_act_fn", v);
        }
        if let Some(v) = &self.timestep_post_act {
            return refuse("timestep_post_act", v);
        }
        if self.resnet_skip_time_act {
            return refuse("resnet_skip_time_act", &true);
        }
        if let Some(v) = &self.reverse_transformer_layers_per_block {
            return refuse("reverse_transformer_layers_per_block", v);
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return Err("conv_in_kernel / conv_out_kernel must be odd".into());
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(
                "block_out_channels, down_block_types and up_block_types differ in length".into(),
            );
        }
        let mut cross = Vec::with_capacity(n);
        for b in &self.down_block_types {
            match b.as_str() {
                "CrossAttnDownBlock2D" => cross.push(true),
                "DownBlock2D" => cross.push(false),
                other => return Err(format!("down_block_types contains {other:?}")),
            }
        }
        for (i, b) in self.up_block_types.iter().enumerate() {
            let want = cross[n - 1 - i];
            match (b.as_str(), want) {
                ("CrossAttnUpBlock2D", true) | ("UpBlock2D", false) => {}
                ("CrossAttnUpBlock2D" | "UpBlock2D", _) => {
                    return Err(format!(
                        "up_block_types[{i}] = {b:?} does not mirror down_block_types[{}]",
                        n - 1 - i
                    ))
                }
                (other, _) => return Err(format!("up_block_types contains {other:?}")),
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") | None => {}
            Some(other) => return Err(format!("mid_block_type = {other:?}")),
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| *c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "norm_num_groups {} does not divide {c}",
                self.norm_num_groups
            ));
        }
        let heads_src = self
            .num_attention_heads
            .as_ref()
            .or(self.attention_head_dim.as_ref())
            .ok_or("neither num_attention_heads nor attention_head_dim is set")?;
        let heads = heads_src.expand(n, "attention heads")?;
        for (i, (&h, &c)) in heads.iter().zip(&self.block_out_channels).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(format!(
                    "block {i}: {c} channels do not split into {h} heads"
                ));
            }
        }
        Ok(Plan {
            layers: self.layers_per_block.expand(n, "layers_per_block")?,
            heads,
            context: self.cross_attention_dim.expand(n, "cross_attention_dim")?,
            transformer_layers: self
                .transformer_layers_per_block
                .expand(n, "transformer_layers_per_block")?,
            cross,
        })
    }
}

/// Optional extras of one forward pass.
#[derive(Default, Clone, Copy)]
pub struct Hooks<'a> {
    /// Added to the skip connections after the down path (ControlNet), one per skip.
    pub down_residuals: Option<&'a [Tensor]>,
    /// Added to the mid-block output (ControlNet).
    pub mid_residual: Option<&'a Tensor>,
    /// Receives every cross-attention's probabilities.
    pub attention: Option<AttentionHook<'a>>,
}

/// One ResNet with an optional transformer after it.
pub struct Layer {
    /// The ResNet.
    pub resnet: ResnetBlock,
    /// The transformer (cross-attention blocks).
    pub attention: Option<Transformer2D>,
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        ctx: &Tensor,
        hooks: &Hooks,
    ) -> candle_core::Result<Tensor> {
        let x = self.resnet.forward(x, Some(temb))?;
        match &self.attention {
            Some(a) => a.forward(&x, ctx, hooks.attention),
            None => Ok(x),
        }
    }
}

/// A down block: layers, then an optional stride-2 convolution.
pub struct DownBlock {
    /// Its layers.
    pub layers: Vec<Layer>,
    /// The downsampler and its padding.
    pub downsample: Option<(Conv, usize)>,
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

/// The UNet.
pub struct UNet {
    /// Its configuration.
    pub config: UNetConfig,
    /// The input convolution.
    pub conv_in: Conv,
    time_1: Linear,
    time_2: Linear,
    /// Down blocks.
    pub down: Vec<DownBlock>,
    /// Mid block.
    pub mid: Option<MidBlock>,
    /// Up blocks.
    pub up: Vec<UpBlock>,
    /// The output norm and convolution (none in a ControlNet trunk).
    head: Option<(GroupNorm, Conv)>,
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
    };
    ResnetBlock::new(vb, cin, cout, cfg)
}

impl UNet {
    /// Builds the network from a config and weights.
    pub fn new(config: UNetConfig, vb: VarBuilder) -> Result<Self, SdError> {
        let plan = config
            .plan()
            .map_err(|f| SdError::new(format!("unsupported UNet configuration: {f}")))?;
        Self::build(config, plan, vb)
            .map_err(|e| SdError::new(format!("UNet weights do not match the config: {e}")))
    }

    fn build(config: UNetConfig, plan: Plan, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::build_parts(config, plan, vb, true)
    }

    /// The down path and mid block only (a ControlNet's trunk): no up blocks, no output head.
    pub fn new_encoder(config: UNetConfig, vb: VarBuilder) -> Result<Self, SdError> {
        let plan = config
            .plan()
            .map_err(|f| SdError::new(format!("unsupported configuration: {f}")))?;
        Self::build_parts(config, plan, vb, false)
            .map_err(|e| SdError::new(format!("weights do not match the config: {e}")))
    }

    #[allow(clippy::needless_range_loop)] // levels index several per-block lists at once
    fn build_parts(
        config: UNetConfig,
        plan: Plan,
        vb: VarBuilder,
        with_up: bool,
    ) -> candle_core::Result<Self> {
        let c = &config;
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
        let time_1 = linear(ch[0], temb, vb.pp("time_embedding.linear_1"))?;
        let time_2 = linear(temb, temb, vb.pp("time_embedding.linear_2"))?;
        let tcfg = |i: usize| Transformer2DConfig {
            heads: plan.heads[i],
            dim_head: ch[i] / plan.heads[i],
            layers: plan.transformer_layers[i],
            context_dim: plan.context[i],
            groups: c.norm_num_groups,
            linear_projection: c.use_linear_projection,
        };
        let rs = c.resnet_out_scale_factor;

        let mut down = Vec::with_capacity(n);
        let mut cin = ch[0];
        for i in 0..n {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let mut layers = Vec::new();
            for j in 0..plan.layers[i] {
                let attention = if plan.cross[i] {
                    let name = format!("down_blocks.{i}.attentions.{j}");
                    Some(Transformer2D::new(
                        vb.pp(format!("attentions.{j}")),
                        ch[i],
                        &tcfg(i),
                        name,
                    )?)
                } else {
                    None
                };
                layers.push(Layer {
                    resnet: resnet(
                        vb.pp(format!("resnets.{j}")),
                        if j == 0 { cin } else { ch[i] },
                        ch[i],
                        temb,
                        c,
                        rs,
                    )?,
                    attention,
                });
            }
            let downsample = if i + 1 < n {
                let cfg = Conv2dConfig {
                    padding: c.downsample_padding,
                    stride: 2,
                    ..Default::default()
                };
                Some((
                    Conv::new(ch[i], ch[i], 3, cfg, vb.pp("downsamplers.0.conv"))?,
                    c.downsample_padding,
                ))
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
                let mut layers = Vec::new();
                for k in 0..1 {
                    let name = format!("mid_block.attentions.{k}");
                    layers.push((
                        Transformer2D::new(
                            vb.pp(format!("attentions.{k}")),
                            ch[last],
                            &tcfg(last),
                            name,
                        )?,
                        resnet(
                            vb.pp(format!("resnets.{}", k + 1)),
                            ch[last],
                            ch[last],
                            temb,
                            c,
                            ms,
                        )?,
                    ));
                }
                Some(MidBlock {
                    first: resnet(vb.pp("resnets.0"), ch[last], ch[last], temb, c, ms)?,
                    layers,
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
                let attention = if plan.cross[level] {
                    let name = format!("up_blocks.{i}.attentions.{j}");
                    Some(Transformer2D::new(
                        vb.pp(format!("attentions.{j}")),
                        out,
                        &tcfg(level),
                        name,
                    )?)
                } else {
                    None
                };
                layers.push(Layer {
                    resnet: resnet(vb.pp(format!("resnets.{j}")), rin + skip, out, temb, c, rs)?,
                    attention,
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
                group_norm(c.norm_num_groups, ch[0], c.norm_eps, vb.pp("conv_norm_out"))?,
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
        Ok(Self {
            config,
            conv_in,
            time_1,
            time_2,
            down,
            mid,
            up,
            head,
        })
    }

    /// Loads `config.json` and the weights of a diffusers `unet/` folder (computing in f32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, SdError> {
        let config = UNetConfig::from_file(&dir.join("config.json"))?;
        let w = Weights::folder(dir)?;
        Self::new(config, w.var_builder(DType::F32, device)?)
    }

    /// Sinusoidal timestep features → the time embedding, for a batch of `b`.
    pub fn time_embedding(&self, t: f64, b: usize, device: &Device) -> candle_core::Result<Tensor> {
        let dim = self.config.block_out_channels[0];
        let half = dim / 2;
        // diffusers' get_timestep_embedding, in f32 like the reference.
        let freqs: Vec<f32> = (0..half)
            .map(|i| {
                let e = -(10000f32.ln()) * i as f32 / (half as f32 - self.config.freq_shift as f32);
                e.exp()
            })
            .collect();
        let args: Vec<f32> = freqs.iter().map(|f| t as f32 * f).collect();
        let sin: Vec<f32> = args.iter().map(|a| a.sin()).collect();
        let cos: Vec<f32> = args.iter().map(|a| a.cos()).collect();
        let mut emb = if self.config.flip_sin_to_cos {
            cos
        } else {
            sin.clone()
        };
        emb.extend(if self.config.flip_sin_to_cos {
            sin
        } else {
            args.iter().map(|a| a.cos()).collect()
        });
        emb.resize(dim, 0.0);
        let emb = Tensor::from_vec(emb, (1, dim), device)?;
        let emb = self
            .time_2
            .forward(&candle_nn::ops::silu(&self.time_1.forward(&emb)?)?)?;
        emb.broadcast_as((b, emb.dim(1)?))?.contiguous()
    }

    /// The down path: the output and the skip connections.
    pub fn forward_down(
        &self,
        x: &Tensor,
        temb: &Tensor,
        ctx: &Tensor,
        hooks: &Hooks,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let x = if self.config.center_input_sample {
            x.affine(2.0, -1.0)?
        } else {
            x.clone()
        };
        let x = self.conv_in.forward(&x)?;
        self.forward_down_from(&x, temb, ctx, hooks)
    }

    /// The down path after `conv_in` (a ControlNet adds its conditioning there first).
    pub fn forward_down_from(
        &self,
        x: &Tensor,
        temb: &Tensor,
        ctx: &Tensor,
        hooks: &Hooks,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let mut x = x.clone();
        let mut skips = vec![x.clone()];
        for block in &self.down {
            for layer in &block.layers {
                x = layer.forward(&x, temb, ctx, hooks)?;
                skips.push(x.clone());
            }
            if let Some((conv, pad)) = &block.downsample {
                if *pad == 0 {
                    x = x
                        .pad_with_zeros(D::Minus1, 0, 1)?
                        .pad_with_zeros(D::Minus2, 0, 1)?;
                }
                x = conv.forward(&x)?;
                skips.push(x.clone());
            }
        }
        if let Some(res) = hooks.down_residuals {
            if res.len() != skips.len() {
                candle_core::bail!(
                    "{} down residuals for {} skip connections",
                    res.len(),
                    skips.len()
                );
            }
            skips = skips
                .iter()
                .zip(res)
                .map(|(s, r)| s + r)
                .collect::<candle_core::Result<_>>()?;
        }
        Ok((x, skips))
    }

    /// The mid block (plus a ControlNet mid residual).
    pub fn forward_mid(
        &self,
        x: &Tensor,
        temb: &Tensor,
        ctx: &Tensor,
        hooks: &Hooks,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        if let Some(mid) = &self.mid {
            x = mid.first.forward(&x, Some(temb))?;
            for (attn, res) in &mid.layers {
                x = attn.forward(&x, ctx, hooks.attention)?;
                x = res.forward(&x, Some(temb))?;
            }
        }
        match hooks.mid_residual {
            Some(r) => x + r,
            None => Ok(x),
        }
    }

    /// All up blocks, consuming skips from the end, then the output head.
    pub fn forward_up(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        ctx: &Tensor,
        hooks: &Hooks,
    ) -> candle_core::Result<Tensor> {
        Ok(self.up_from(x, skips, temb, ctx, hooks, (0, 0), None)?.0)
    }

    /// Up path from layer `start` = (block, layer) on; also returns the main-path input of the
    /// layer `tap` when it is passed.
    #[allow(clippy::too_many_arguments)]
    fn up_from(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        ctx: &Tensor,
        hooks: &Hooks,
        start: (usize, usize),
        tap: Option<(usize, usize)>,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let mut x = x.clone();
        let mut tapped = None;
        for (u, block) in self.up.iter().enumerate().skip(start.0) {
            let first = if u == start.0 { start.1 } else { 0 };
            for (j, layer) in block.layers.iter().enumerate().skip(first) {
                if tap == Some((u, j)) {
                    tapped = Some(x.clone());
                }
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("ran out of skip connections".into()))?;
                x = layer.forward(&Tensor::cat(&[&x, &skip], 1)?, temb, ctx, hooks)?;
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
        let (norm_out, conv_out) = self
            .head
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("this network has no output head".into()))?;
        let x = candle_nn::ops::silu(&norm_out.forward(&x)?)?;
        Ok((conv_out.forward(&x)?, tapped))
    }

    /// Multi-scale features for dense prediction heads (VPD's taps): for level 0 (finest) the
    /// last up block's output; for coarser levels the up block's state after its second layer
    /// (or its last layer, when it has fewer), before the upsampler. Finest first.
    pub fn features(&self, x: &Tensor, t: f64, ctx: &Tensor) -> Result<Vec<Tensor>, SdError> {
        self.features_with(x, t, ctx, false)
    }

    /// [`UNet::features`], and with `attention` the cross-attention maps of the down and up
    /// blocks appended to the coarser levels (VPD): per level, the probabilities of every layer
    /// whose map has that level's size, averaged over layers and heads (B×tokens×h×w),
    /// concatenated to the level's channels. The finest level gets none.
    pub fn features_with(
        &self,
        x: &Tensor,
        t: f64,
        ctx: &Tensor,
        attention: bool,
    ) -> Result<Vec<Tensor>, SdError> {
        let maps: std::sync::Mutex<Vec<Tensor>> = Default::default();
        let hook = |name: &str, probs: &Tensor| {
            if !name.starts_with("mid_block") {
                if let Ok(avg) = probs.mean(1) {
                    maps.lock().unwrap_or_else(|e| e.into_inner()).push(avg);
                }
            }
        };
        let hooks = Hooks {
            attention: if attention { Some(&hook) } else { None },
            ..Hooks::default()
        };
        let b = x.dim(0)?;
        let temb = self.time_embedding(t, b, x.device())?;
        let (h, mut skips) = self.forward_down(x, &temb, ctx, &hooks)?;
        let mut h = self.forward_mid(&h, &temb, ctx, &hooks)?;
        let n = self.up.len();
        let mut feats = Vec::with_capacity(n);
        for (u, block) in self.up.iter().enumerate() {
            let tap_after = block.layers.len().min(2);
            for (j, layer) in block.layers.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| SdError::new("ran out of skip connections"))?;
                h = layer.forward(&Tensor::cat(&[&h, &skip], 1)?, &temb, ctx, &hooks)?;
                if u + 1 < n && j + 1 == tap_after {
                    feats.push(h.clone());
                }
            }
            if let Some(conv) = &block.upsample {
                let (hh, ww) = match skips.last() {
                    Some(s) => (s.dim(2)?, s.dim(3)?),
                    None => (h.dim(2)? * 2, h.dim(3)? * 2),
                };
                h = conv.forward(&h.upsample_nearest2d(hh, ww)?)?;
            }
        }
        feats.push(h);
        feats.reverse();
        if attention {
            let maps = maps.into_inner().unwrap_or_else(|e| e.into_inner());
            for f in feats.iter_mut().skip(1) {
                let (fh, fw) = (f.dim(2)?, f.dim(3)?);
                // B×queries×tokens maps of this level's size.
                let same: Vec<&Tensor> = maps
                    .iter()
                    .filter(|m| m.dim(1).ok() == Some(fh * fw))
                    .collect();
                if same.is_empty() {
                    continue;
                }
                let mean = (Tensor::stack(&same, 0)?.sum(0)? / same.len() as f64)?;
                let tokens = mean.dim(2)?;
                let mean = mean.transpose(1, 2)?.reshape((b, tokens, fh, fw))?;
                *f = Tensor::cat(&[&*f, &mean], 1)?;
            }
        }
        Ok(feats)
    }

    /// Where a DeepCache branch re-enters the up path: (up block, layer) for `cache_branch_id`
    /// `branch` (block `branch / 3`, layer `branch % 3`, as the DeepCache package numbers them).
    pub fn deepcache_entry(&self, branch: usize) -> Result<(usize, usize), SdError> {
        let (block, layer) = (branch / 3, branch % 3);
        let n = self.down.len();
        if block >= n || layer > self.down[block].layers.len() {
            return Err(SdError::new(format!(
                "cache_branch_id {branch}: this UNet has {n} blocks of up to {} layers",
                self.down.iter().map(|d| d.layers.len()).max().unwrap_or(0)
            )));
        }
        let u = n - 1 - block;
        let layers = self.up[u].layers.len();
        Ok((u, layers.saturating_sub(1 + layer)))
    }

    /// ResNet and transformer modules a DeepCache retrieval step runs for `branch`, and how many
    /// the full network has (the skip rule of the DeepCache package).
    pub fn deepcache_modules(&self, branch: usize) -> Result<(usize, usize), SdError> {
        let (entry_u, entry_j) = self.deepcache_entry(branch)?;
        let (block, layer) = (branch / 3, branch % 3);
        let count = |l: &Layer| 1 + usize::from(l.attention.is_some());
        let mut total = 0;
        let mut run = 0;
        for (k, d) in self.down.iter().enumerate() {
            for (j, l) in d.layers.iter().enumerate() {
                total += count(l);
                if k < block || (k == block && j < layer) {
                    run += count(l);
                }
            }
        }
        if let Some(m) = &self.mid {
            total += 1 + 2 * m.layers.len();
        }
        for (u, b) in self.up.iter().enumerate() {
            for (j, l) in b.layers.iter().enumerate() {
                total += count(l);
                if u > entry_u || (u == entry_u && j >= entry_j) {
                    run += count(l);
                }
            }
        }
        Ok((run, total))
    }

    /// DeepCache (Ma et al. 2024, as the `DeepCache` package's `DeepCacheSDHelper` runs it).
    /// On a refresh step (`cache` empty or `refresh`) the whole network runs and the main-path
    /// input of the branch's up layer is stored in `cache`; otherwise only the shallow part
    /// runs: the down path up to the branch, then the up path from that layer on, fed with the
    /// cached deep feature. Returns the prediction.
    pub fn forward_deepcache(
        &self,
        x: &Tensor,
        t: f64,
        ctx: &Tensor,
        branch: usize,
        cache: &mut Option<Tensor>,
        refresh: bool,
    ) -> Result<Tensor, SdError> {
        self.forward_deepcache_with(x, t, ctx, branch, cache, refresh, None)
    }

    /// [`UNet::forward_deepcache`] with ControlNet residuals: a full step adds them as usual; a
    /// shallow step adds the down residuals of the skips it computes (the mid block is cached).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_deepcache_with(
        &self,
        x: &Tensor,
        t: f64,
        ctx: &Tensor,
        branch: usize,
        cache: &mut Option<Tensor>,
        refresh: bool,
        residuals: Option<(&[Tensor], &Tensor)>,
    ) -> Result<Tensor, SdError> {
        let entry = self.deepcache_entry(branch)?;
        let (block, layer) = (branch / 3, branch % 3);
        let hooks = Hooks {
            down_residuals: residuals.map(|r| r.0),
            mid_residual: residuals.map(|r| r.1),
            attention: None,
        };
        let b = x.dim(0)?;
        let temb = self.time_embedding(t, b, x.device())?;
        let cached = cache
            .as_ref()
            .filter(|c| !refresh && c.dim(0).ok() == Some(b));
        match cached {
            None => {
                let (h, mut skips) = self.forward_down(x, &temb, ctx, &hooks)?;
                let h = self.forward_mid(&h, &temb, ctx, &hooks)?;
                let (out, tapped) =
                    self.up_from(&h, &mut skips, &temb, ctx, &hooks, (0, 0), Some(entry))?;
                *cache = tapped;
                Ok(out)
            }
            Some(feature) => {
                // The shallow down path: blocks before the branch's, and its first `layer` layers.
                let x = if self.config.center_input_sample {
                    x.affine(2.0, -1.0)?
                } else {
                    x.clone()
                };
                let mut h = self.conv_in.forward(&x)?;
                let mut skips = vec![h.clone()];
                for (k, down) in self.down.iter().enumerate().take(block + 1) {
                    let n = if k < block {
                        down.layers.len()
                    } else {
                        layer.min(down.layers.len())
                    };
                    for l in &down.layers[..n] {
                        h = l.forward(&h, &temb, ctx, &hooks)?;
                        skips.push(h.clone());
                    }
                    if k < block {
                        if let Some((conv, pad)) = &down.downsample {
                            if *pad == 0 {
                                h = h.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(
                                    D::Minus2,
                                    0,
                                    1,
                                )?;
                            }
                            h = conv.forward(&h)?;
                            skips.push(h.clone());
                        }
                    }
                }
                Ok(self
                    .up_from(feature, &mut skips, &temb, ctx, &hooks, entry, None)?
                    .0)
            }
        }
    }

    /// The whole network: noise (or v) prediction for `x` B×C×H×W at timestep `t` with
    /// conditioning `ctx` B×L×D.
    pub fn forward(
        &self,
        x: &Tensor,
        t: f64,
        ctx: &Tensor,
        hooks: &Hooks,
    ) -> Result<Tensor, SdError> {
        let (b, c, _, _) = x.dims4()?;
        if c != self.config.in_channels {
            return Err(SdError::new(format!(
                "the UNet takes {} channels, the latent has {c}",
                self.config.in_channels
            )));
        }
        let temb = self.time_embedding(t, b, x.device())?;
        let (x, mut skips) = self.forward_down(x, &temb, ctx, hooks)?;
        let x = self.forward_mid(&x, &temb, ctx, hooks)?;
        Ok(self.forward_up(&x, &mut skips, &temb, ctx, hooks)?)
    }
}
