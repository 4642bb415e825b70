//! diffusers' `MotionAdapter` config, and the same read off an original checkpoint's names.

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

use crate::sd::unet::PerBlock;

/// diffusers' `MotionAdapter` config.
#[derive(Debug, Clone, Deserialize)]
pub struct MotionAdapterConfig {
    /// `MotionAdapter` when given (another class's config is not an adapter's).
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// The UNet's channels per level.
    #[serde(default = "sd_channels")]
    pub block_out_channels: Vec<usize>,
    /// Motion modules per down block (the up blocks have one more); the UNet's layers per block.
    #[serde(default = "two")]
    pub motion_layers_per_block: PerBlock<usize>,
    /// Transformer blocks in each motion module, per level.
    #[serde(default = "one")]
    pub motion_transformer_layers_per_block: PerBlock<usize>,
    /// Motion modules in the mid block.
    #[serde(default = "one_usize")]
    pub motion_mid_block_layers_per_block: usize,
    /// Transformer blocks in each mid-block motion module.
    #[serde(default = "one")]
    pub motion_transformer_layers_per_mid_block: PerBlock<usize>,
    /// Attention heads per level.
    #[serde(default = "eight")]
    pub motion_num_attention_heads: PerBlock<usize>,
    /// Group-norm groups as the adapter states them. `UNetMotionModel` does not use this: its
    /// motion modules take the UNet's `norm_num_groups`, and so do ours.
    #[serde(default = "groups")]
    pub motion_norm_num_groups: usize,
    /// The most frames the position table covers.
    #[serde(default = "seq")]
    pub motion_max_seq_length: usize,
    /// A motion module after the mid block's transformer.
    #[serde(default = "yes")]
    pub use_motion_mid_block: bool,
    /// SparseCtrl's extra input channels; not supported.
    #[serde(default)]
    pub conv_in_channels: Option<usize>,
}

fn sd_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn two() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn one() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn one_usize() -> usize {
    1
}
fn eight() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn groups() -> usize {
    32
}
fn seq() -> usize {
    32
}
fn yes() -> bool {
    true
}

/// The config expanded per level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MotionPlan {
    /// Channels per level.
    pub channels: Vec<usize>,
    /// Motion modules per down block.
    pub layers: Vec<usize>,
    /// Transformer blocks per module, per level.
    pub transformer_layers: Vec<usize>,
    /// Heads per level.
    pub heads: Vec<usize>,
    /// Mid-block modules and their transformer blocks (empty: no mid module).
    pub mid: Vec<usize>,
    /// The position table's length.
    pub max_seq_length: usize,
}

impl MotionAdapterConfig {
    /// The config expanded per level.
    pub fn plan(&self) -> Result<MotionPlan, FieldError> {
        let n = self.block_out_channels.len();
        let heads = self
            .motion_num_attention_heads
            .expand(n, "motion_num_attention_heads")?;
        let mid = if self.use_motion_mid_block {
            self.motion_transformer_layers_per_mid_block.expand(
                self.motion_mid_block_layers_per_block,
                "motion_transformer_layers_per_mid_block",
            )?
        } else {
            Vec::new()
        };
        Ok(MotionPlan {
            channels: self.block_out_channels.clone(),
            layers: self
                .motion_layers_per_block
                .expand(n, "motion_layers_per_block")?,
            transformer_layers: self
                .motion_transformer_layers_per_block
                .expand(n, "motion_transformer_layers_per_block")?,
            heads,
            mid,
            max_seq_length: self.motion_max_seq_length,
        })
    }
}

impl Checked for MotionAdapterConfig {
    fn check(&self) -> Result<(), FieldError> {
        if let Some(class) = self.class_name.as_deref().filter(|c| *c != "MotionAdapter") {
            return Err(FieldError::new(
                "_class_name",
                format!("`{class}`: not a motion adapter (MotionAdapter)"),
            ));
        }
        if let Some(c) = self.conv_in_channels {
            return Err(FieldError::new(
                "conv_in_channels",
                format!("{c}: SparseCtrl adapters (an extra input convolution) are not supported"),
            ));
        }
        if self.block_out_channels.is_empty() {
            return Err(FieldError::new("block_out_channels", "must not be empty"));
        }
        checks::positive(&[
            ("motion_max_seq_length", self.motion_max_seq_length),
            ("motion_norm_num_groups", self.motion_norm_num_groups),
        ])?;
        let plan = self.plan()?;
        for (i, (&c, &h)) in plan.channels.iter().zip(&plan.heads).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(FieldError::new(
                    "motion_num_attention_heads",
                    format!("{h} heads do not divide level {i}'s {c} channels"),
                ));
            }
        }
        if plan.layers.contains(&0) || plan.transformer_layers.contains(&0) {
            return Err(FieldError::new(
                "motion_layers_per_block",
                "every level needs at least one motion module of at least one block",
            ));
        }
        Ok(())
    }
}
