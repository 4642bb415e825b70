//! The fields of diffusers' `FluxTransformer2DModel` config this implementation accepts.

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

/// diffusers' `FluxTransformer2DModel` config (FLUX.1 dev and schnell).
#[derive(Debug, Clone, Deserialize)]
pub struct FluxConfig {
    /// `FluxTransformer2DModel`.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Only 1: the pipeline packs 2×2 latent patches into each token itself.
    #[serde(default = "one")]
    pub patch_size: usize,
    /// Channels of a packed token: 4 × the latent's channels.
    #[serde(default = "sixty_four")]
    pub in_channels: usize,
    /// Channels out (absent: the input's).
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Double-stream blocks (text and image with their own weights, joint attention).
    #[serde(default = "nineteen")]
    pub num_layers: usize,
    /// Single-stream blocks (one sequence, attention and MLP in parallel).
    #[serde(default = "thirty_eight")]
    pub num_single_layers: usize,
    /// Channels per head.
    #[serde(default = "head_dim")]
    pub attention_head_dim: usize,
    /// Attention heads.
    #[serde(default = "heads")]
    pub num_attention_heads: usize,
    /// Width of the T5 features.
    #[serde(default = "joint")]
    pub joint_attention_dim: usize,
    /// Width of CLIP's pooled embedding.
    #[serde(default = "pooled")]
    pub pooled_projection_dim: usize,
    /// A guidance-scale embedding (FLUX.1 dev), or none (schnell).
    #[serde(default)]
    pub guidance_embeds: bool,
    /// RoPE channels per axis (text/frame, row, column); they sum to the head width.
    #[serde(default = "axes")]
    pub axes_dims_rope: Vec<usize>,
}

fn one() -> usize {
    1
}
fn sixty_four() -> usize {
    64
}
fn nineteen() -> usize {
    19
}
fn thirty_eight() -> usize {
    38
}
fn head_dim() -> usize {
    128
}
fn heads() -> usize {
    24
}
fn joint() -> usize {
    4096
}
fn pooled() -> usize {
    768
}
fn axes() -> Vec<usize> {
    vec![16, 56, 56]
}

impl FluxConfig {
    /// Token width.
    pub fn dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Channels of a packed output token.
    pub fn out(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// The latent's channels (a packed token holds 2×2 of them).
    pub fn latent_channels(&self) -> usize {
        self.out() / 4
    }
}

impl Checked for FluxConfig {
    fn check(&self) -> Result<(), FieldError> {
        if let Some(c) = &self.class_name {
            checks::one_of("_class_name", c, &["FluxTransformer2DModel"])?;
        }
        if self.patch_size != 1 {
            return Err(FieldError::new(
                "patch_size",
                format!(
                    "{}: Flux packs 2×2 patches in the pipeline and has patch_size 1",
                    self.patch_size
                ),
            ));
        }
        checks::positive(&[
            ("in_channels", self.in_channels),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
        ])?;
        if self.num_layers + self.num_single_layers == 0 {
            return Err(FieldError::new("num_layers", "no blocks at all"));
        }
        if !self.in_channels.is_multiple_of(4) || self.out() != self.in_channels {
            return Err(FieldError::new(
                "in_channels",
                format!(
                    "{} in, {} out: a packed token holds 2×2 latent cells, in and out alike",
                    self.in_channels,
                    self.out()
                ),
            ));
        }
        let sum: usize = self.axes_dims_rope.iter().sum();
        if self.axes_dims_rope.len() != 3
            || sum != self.attention_head_dim
            || self.axes_dims_rope.iter().any(|d| d % 2 != 0)
        {
            return Err(FieldError::new(
                "axes_dims_rope",
                format!(
                    "{:?}: three even widths summing to the head width {}",
                    self.axes_dims_rope, self.attention_head_dim
                ),
            ));
        }
        Ok(())
    }
}
