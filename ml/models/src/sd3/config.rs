//! The fields of diffusers' `SD3Transformer2DModel` config this implementation accepts.

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

/// diffusers' `SD3Transformer2DModel` config (SD3 and SD3.5).
#[derive(Debug, Clone, Deserialize)]
pub struct Sd3Config {
    /// `SD3Transformer2DModel`.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Latent side the model was trained at (the positions' base grid is this over the patch).
    #[serde(default = "sample")]
    pub sample_size: usize,
    /// Patch side.
    #[serde(default = "two")]
    pub patch_size: usize,
    /// Latent channels in.
    #[serde(default = "sixteen")]
    pub in_channels: usize,
    /// Channels out (absent: the input's).
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Joint transformer blocks (the last one updates only the image tokens).
    #[serde(default = "layers")]
    pub num_layers: usize,
    /// Channels per head.
    #[serde(default = "head_dim")]
    pub attention_head_dim: usize,
    /// Attention heads.
    #[serde(default = "heads")]
    pub num_attention_heads: usize,
    /// Width of the text features (T5-XXL's 4096; the CLIP features are zero-padded to it).
    #[serde(default = "joint")]
    pub joint_attention_dim: usize,
    /// Width of the projected text tokens (the token width).
    #[serde(default = "caption")]
    pub caption_projection_dim: usize,
    /// Width of the pooled text embedding (CLIP-L's 768 + CLIP-G's 1280).
    #[serde(default = "pooled")]
    pub pooled_projection_dim: usize,
    /// Side of the grid of positions, cropped at its centre to the input's patch grid.
    #[serde(default = "pos_max")]
    pub pos_embed_max_size: Option<usize>,
    /// Blocks with a second, image-only attention (SD3.5 medium's MMDiT-X).
    #[serde(default)]
    pub dual_attention_layers: Vec<usize>,
    /// `rms_norm` on queries and keys (SD3.5), or none.
    #[serde(default)]
    pub qk_norm: Option<String>,
}

fn sample() -> usize {
    128
}
fn two() -> usize {
    2
}
fn sixteen() -> usize {
    16
}
fn layers() -> usize {
    18
}
fn head_dim() -> usize {
    64
}
fn heads() -> usize {
    18
}
fn joint() -> usize {
    4096
}
fn caption() -> usize {
    1152
}
fn pooled() -> usize {
    2048
}
fn pos_max() -> Option<usize> {
    Some(96)
}

impl Sd3Config {
    /// Token width: heads × channels per head.
    pub fn dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Channels out.
    pub fn out(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Whether queries and keys are RMS-normed.
    pub fn qk_rms(&self) -> bool {
        self.qk_norm.as_deref() == Some("rms_norm")
    }
}

impl Checked for Sd3Config {
    fn check(&self) -> Result<(), FieldError> {
        if let Some(c) = &self.class_name {
            checks::one_of("_class_name", c, &["SD3Transformer2DModel"])?;
        }
        checks::positive(&[
            ("sample_size", self.sample_size),
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("out_channels", self.out()),
            ("num_layers", self.num_layers),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            ("caption_projection_dim", self.caption_projection_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
        ])?;
        if let Some(q) = &self.qk_norm {
            checks::one_of("qk_norm", q, &["rms_norm"])?;
        }
        if self.caption_projection_dim != self.dim() {
            return Err(FieldError::new(
                "caption_projection_dim",
                format!(
                    "{}: the text tokens join the image tokens, {} wide (heads × head dim)",
                    self.caption_projection_dim,
                    self.dim()
                ),
            ));
        }
        if !self.dim().is_multiple_of(4) {
            return Err(FieldError::new(
                "attention_head_dim",
                format!(
                    "the token width {} must be divisible by 4 for the 2-D positions",
                    self.dim()
                ),
            ));
        }
        if let Some(&i) = self
            .dual_attention_layers
            .iter()
            .find(|&&i| i >= self.num_layers)
        {
            return Err(FieldError::new(
                "dual_attention_layers",
                format!("layer {i} is past the last of {} blocks", self.num_layers),
            ));
        }
        if self.pos_embed_max_size == Some(0) {
            return Err(FieldError::new("pos_embed_max_size", "must be positive"));
        }
        Ok(())
    }
}
