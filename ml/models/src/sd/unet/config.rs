//! The configuration of diffusers' `UNet2DConditionModel` (`unet/config.json`): the fields
//! this implementation reads, and the check that refuses what it does not implement, naming
//! the field.

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

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
    /// One value per block.
    pub fn expand(&self, n: usize, field: &str) -> Result<Vec<T>, FieldError> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => Err(FieldError::new(
                field,
                format!("{} entries for {n} blocks", v.len()),
            )),
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
pub struct Plan {
    /// ResNets per down block.
    pub layers: Vec<usize>,
    /// Attention heads per block.
    pub heads: Vec<usize>,
    /// Conditioning width per block.
    pub context: Vec<usize>,
    /// Transformer blocks per attention.
    pub transformer_layers: Vec<usize>,
    /// Whether each down block has cross-attention.
    pub cross: Vec<bool>,
}

impl Checked for UNetConfig {
    fn check(&self) -> Result<(), FieldError> {
        self.plan().map(|_| ())
    }
}

impl UNetConfig {
    /// The checked per-block settings; the error names the offending field.
    pub fn plan(&self) -> Result<Plan, FieldError> {
        let refuse = |field: &str, v: &dyn std::fmt::Debug, why: &str| {
            Err(FieldError::new(
                field,
                format!("{v:?} is not supported{why}"),
            ))
        };
        checks::one_of("act_fn", &self.act_fn, &["silu"])?;
        checks::one_of(
            "time_embedding_type",
            &self.time_embedding_type,
            &["positional"],
        )?;
        checks::one_of(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            &["default"],
        )?;
        if let Some(v) = &self.class_embed_type {
            return refuse("class_embed_type", v, "");
        }
        if let Some(v) = &self.addition_embed_type {
            return refuse(
                "addition_embed_type",
                v,
                " (SDXL-style added conditioning is not supported yet)",
            );
        }
        if let Some(v) = &self.time_cond_proj_dim {
            return refuse("time_cond_proj_dim", v, "");
        }
        if let Some(v) = &self.encoder_hid_dim_type {
            return refuse("encoder_hid_dim_type", v, "");
        }
        if !matches!(
            &self.only_cross_attention,
            serde_json::Value::Null | serde_json::Value::Bool(false)
        ) {
            return refuse("only_cross_attention", &self.only_cross_attention, "");
        }
        if self.dual_cross_attention {
            return refuse("dual_cross_attention", &true, "");
        }
        if let Some(v) = &self.time_embedding_act_fn {
            return refuse("time_embedding_act_fn", v, "");
        }
        if let Some(v) = &self.timestep_post_act {
            return refuse("timestep_post_act", v, "");
        }
        if self.resnet_skip_time_act {
            return refuse("resnet_skip_time_act", &true, "");
        }
        if let Some(v) = &self.reverse_transformer_layers_per_block {
            return refuse("reverse_transformer_layers_per_block", v, "");
        }
        for (field, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k.is_multiple_of(2) {
                return Err(FieldError::new(field, format!("{k} must be odd")));
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(FieldError::new("block_out_channels", "is empty"));
        }
        if let Some(i) = self.block_out_channels.iter().position(|&c| c == 0) {
            return Err(FieldError::new(format!("block_out_channels[{i}]"), "is 0"));
        }
        checks::positive(&[
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ])?;
        checks::lengths(
            n,
            "block_out_channels",
            &[
                ("down_block_types", self.down_block_types.len()),
                ("up_block_types", self.up_block_types.len()),
            ],
        )?;
        checks::each_one_of(
            "down_block_types",
            &self.down_block_types,
            &["CrossAttnDownBlock2D", "DownBlock2D"],
        )?;
        checks::each_one_of(
            "up_block_types",
            &self.up_block_types,
            &["CrossAttnUpBlock2D", "UpBlock2D"],
        )?;
        let cross: Vec<bool> = self
            .down_block_types
            .iter()
            .map(|b| b == "CrossAttnDownBlock2D")
            .collect();
        for (i, up) in self.up_cross().into_iter().enumerate() {
            if up != cross[n - 1 - i] {
                return Err(FieldError::new(
                    format!("up_block_types[{i}]"),
                    format!(
                        "{:?} does not mirror down_block_types[{}]",
                        self.up_block_types[i],
                        n - 1 - i
                    ),
                ));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") | None => {}
            Some(other) => return refuse("mid_block_type", &other, ""),
        }
        checks::groups_divide(self.norm_num_groups, &self.block_out_channels)?;
        let heads_src = self
            .num_attention_heads
            .as_ref()
            .or(self.attention_head_dim.as_ref())
            .ok_or_else(|| {
                FieldError::new(
                    "attention_head_dim",
                    "neither num_attention_heads nor attention_head_dim is set",
                )
            })?;
        let heads = heads_src.expand(n, "attention heads")?;
        for (i, (&h, &c)) in heads.iter().zip(&self.block_out_channels).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(FieldError::new(
                    "attention_head_dim",
                    format!("block {i}: {c} channels do not split into {h} heads"),
                ));
            }
        }
        let layers = self.layers_per_block.expand(n, "layers_per_block")?;
        if layers.contains(&0) {
            return Err(FieldError::new("layers_per_block", "must be at least 1"));
        }
        let context = self.cross_attention_dim.expand(n, "cross_attention_dim")?;
        if context.contains(&0) {
            return Err(FieldError::new("cross_attention_dim", "must be at least 1"));
        }
        Ok(Plan {
            layers,
            heads,
            context,
            transformer_layers: self
                .transformer_layers_per_block
                .expand(n, "transformer_layers_per_block")?,
            cross,
        })
    }

    /// `layers_per_block` when it is the same for every block (single-file layouts need it).
    pub fn uniform_layers(&self) -> Option<usize> {
        match &self.layers_per_block {
            PerBlock::One(n) => Some(*n),
            PerBlock::Each(v) => {
                let n = *v.first()?;
                v.iter().all(|x| *x == n).then_some(n)
            }
        }
    }

    /// Whether each up block has cross-attention.
    pub fn up_cross(&self) -> Vec<bool> {
        self.up_block_types
            .iter()
            .map(|b| b.starts_with("CrossAttn"))
            .collect()
    }
}
