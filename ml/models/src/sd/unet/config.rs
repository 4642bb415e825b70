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
    /// The fields this implementation does not read, by name; [`UNetConfig::plan`] refuses
    /// those of [`REFUSED`] that are set to anything else than their plain value.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
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

/// Fields of diffusers' config that change the network in ways this implementation does not
/// follow: each is refused unless absent, null, false or the given plain value; the note says
/// what it is for.
pub const REFUSED: &[(&str, Option<&str>, &str)] = &[
    ("act_fn", Some("silu"), ""),
    ("time_embedding_type", Some("positional"), ""),
    ("resnet_time_scale_shift", Some("default"), ""),
    ("class_embed_type", None, " (class-conditional UNets)"),
    (
        "time_cond_proj_dim",
        None,
        " (LCM-distilled guidance embedding)",
    ),
    ("encoder_hid_dim_type", None, ""),
    ("only_cross_attention", None, ""),
    ("dual_cross_attention", None, ""),
    ("time_embedding_act_fn", None, ""),
    ("timestep_post_act", None, ""),
    ("resnet_skip_time_act", None, ""),
    ("reverse_transformer_layers_per_block", None, ""),
];

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
        for (field, plain, note) in REFUSED {
            let v = self.other.get(*field).unwrap_or(&serde_json::Value::Null);
            let is_plain = match v {
                serde_json::Value::Null | serde_json::Value::Bool(false) => true,
                serde_json::Value::String(s) => Some(s.as_str()) == *plain,
                _ => false,
            };
            if !is_plain {
                return Err(FieldError::new(
                    *field,
                    format!("{v} is not supported{note}"),
                ));
            }
        }
        match self.other.get("addition_embed_type") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s == "text_time" => {
                for field in [
                    "addition_time_embed_dim",
                    "projection_class_embeddings_input_dim",
                ] {
                    if self.other_usize(field).unwrap_or(0) == 0 {
                        return Err(FieldError::new(
                            field,
                            "must be a positive count with addition_embed_type text_time (SDXL)",
                        ));
                    }
                }
                let d = self.other_usize("addition_time_embed_dim").unwrap_or(0);
                if !d.is_multiple_of(2) {
                    return Err(FieldError::new(
                        "addition_time_embed_dim",
                        format!("{d} must be even"),
                    ));
                }
            }
            Some(v) => {
                return Err(FieldError::new(
                    "addition_embed_type",
                    format!("{v} is not supported (text_time, SDXL's, is)"),
                ))
            }
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
        if let Some(mid) = &self.mid_block_type {
            checks::one_of("mid_block_type", mid, &["UNetMidBlock2DCrossAttn"])?;
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

    /// A string field this implementation does not read (see [`UNetConfig::other`]).
    pub fn other_str(&self, field: &str) -> Option<&str> {
        self.other.get(field).and_then(serde_json::Value::as_str)
    }

    /// A field this struct does not name, as a count.
    pub fn other_usize(&self, field: &str) -> Option<usize> {
        self.other
            .get(field)
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
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
