//! The fields of diffusers' `UNet2DModel` config that this implementation accepts.

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

/// diffusers' `UNet2DModel` config (the ADM / guided-diffusion UNet as diffusers writes it).
#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Channels out: the image's, or twice that when the model also predicts its variance
    /// (ADM's `learn_sigma`).
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [−1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Only `positional`.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding (absent: 4 × the first block's channels).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Frequency shift of the sinusoidal features.
    #[serde(default)]
    pub freq_shift: f64,
    /// Cosines first.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// `DownBlock2D`, `AttnDownBlock2D` or `ResnetDownsampleBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2D`, or null for none.
    #[serde(default = "mid")]
    pub mid_block_type: Option<String>,
    /// `UpBlock2D`, `AttnUpBlock2D` or `ResnetUpsampleBlock2D` per level.
    pub up_block_types: Vec<String>,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// ResNets per down block (the up blocks have one more).
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// The mid block's output scale.
    #[serde(default = "one")]
    pub mid_block_scale_factor: f64,
    /// Padding of the strided down-sampling convolution.
    #[serde(default = "one_usize")]
    pub downsample_padding: usize,
    /// `conv` or `resnet` (a ResNet with 2×2 average pooling) in attention down blocks.
    #[serde(default = "conv")]
    pub downsample_type: String,
    /// `conv` or `resnet` (a ResNet with nearest ×2) in attention up blocks.
    #[serde(default = "conv")]
    pub upsample_type: String,
    /// Only `silu`.
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Channels per attention head (absent: one head).
    #[serde(default = "eight")]
    pub attention_head_dim: Option<usize>,
    /// Group-norm groups.
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Groups of the mid block's attention norm (absent: the ResNets' under `default`, none
    /// under `scale_shift`).
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    /// Group-norm epsilon.
    #[serde(default = "eps")]
    pub norm_eps: f64,
    /// `default` or `scale_shift`.
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    /// Attention in the mid block.
    #[serde(default = "yes")]
    pub add_attention: bool,
    /// Only absent (class labels go through `num_class_embeds`).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Classes of a learned label embedding added to the time embedding.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
}

fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn one_usize() -> usize {
    1
}
fn one() -> f64 {
    1.0
}
fn eight() -> Option<usize> {
    Some(8)
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
fn positional() -> String {
    "positional".into()
}
fn mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn conv() -> String {
    "conv".into()
}
fn silu() -> String {
    "silu".into()
}
fn default_shift() -> String {
    "default".into()
}

/// Down block kinds accepted.
pub const DOWN_BLOCKS: [&str; 3] = ["DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"];
/// Up block kinds accepted.
pub const UP_BLOCKS: [&str; 3] = ["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"];

impl UNet2DConfig {
    /// Width of the time embedding.
    pub fn time_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels.first().copied().unwrap_or(0))
    }

    /// Whether the output carries a variance (twice the input's channels).
    pub fn learns_variance(&self) -> bool {
        self.out_channels == 2 * self.in_channels
    }

    /// Image pixels per pixel of the deepest level.
    pub fn downscale(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

impl Checked for UNet2DConfig {
    fn check(&self) -> Result<(), FieldError> {
        checks::one_of(
            "time_embedding_type",
            &self.time_embedding_type,
            &["positional"],
        )?;
        checks::one_of("act_fn", &self.act_fn, &["silu", "swish"])?;
        checks::one_of(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            &["default", "scale_shift"],
        )?;
        checks::one_of(
            "downsample_type",
            &self.downsample_type,
            &["conv", "resnet"],
        )?;
        checks::one_of("upsample_type", &self.upsample_type, &["conv", "resnet"])?;
        checks::each_one_of("down_block_types", &self.down_block_types, &DOWN_BLOCKS)?;
        checks::each_one_of("up_block_types", &self.up_block_types, &UP_BLOCKS)?;
        if let Some(m) = &self.mid_block_type {
            checks::one_of("mid_block_type", m, &["UNetMidBlock2D"])?;
        }
        if let Some(c) = &self.class_embed_type {
            return Err(FieldError::new(
                "class_embed_type",
                format!("`{c}` is not supported; class labels use `num_class_embeds`"),
            ));
        }
        checks::lengths(
            self.block_out_channels.len(),
            "block_out_channels",
            &[
                ("down_block_types", self.down_block_types.len()),
                ("up_block_types", self.up_block_types.len()),
            ],
        )?;
        checks::positive(&[
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("block_out_channels", self.block_out_channels.len()),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
            ("time_embedding_dim", self.time_dim()),
        ])?;
        checks::groups_divide(self.norm_num_groups, &self.block_out_channels)?;
        if let Some(d) = self.attention_head_dim {
            if let Some(c) = self
                .block_out_channels
                .iter()
                .find(|&&c| d == 0 || c % d != 0)
            {
                return Err(FieldError::new(
                    "attention_head_dim",
                    format!("{d} does not divide the {c} channels of a level"),
                ));
            }
        }
        if let Some(g) = self.attn_norm_num_groups {
            checks::groups_divide(
                g,
                &self.block_out_channels[self.block_out_channels.len() - 1..],
            )?;
        }
        Ok(())
    }
}
