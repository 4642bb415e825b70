//! The fields of diffusers' `PixArtTransformer2DModel` config this implementation accepts.

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

/// diffusers' `PixArtTransformer2DModel` config (also written as `Transformer2DModel` with
/// `norm_type: ada_norm_single`, which diffusers maps to the PixArt class).
#[derive(Debug, Clone, Deserialize)]
pub struct PixArtConfig {
    /// `PixArtTransformer2DModel` or `Transformer2DModel`.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Attention heads.
    #[serde(default = "heads")]
    pub num_attention_heads: usize,
    /// Channels per head.
    #[serde(default = "head_dim")]
    pub attention_head_dim: usize,
    /// Latent channels in.
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Channels out: the latent's, or twice that with learned sigma.
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Transformer blocks.
    #[serde(default = "layers")]
    pub num_layers: usize,
    /// Width of the text features the cross-attentions read (the token width).
    #[serde(default)]
    pub cross_attention_dim: Option<usize>,
    /// Width of the text encoder's features (T5: 4096), projected to the token width.
    #[serde(default)]
    pub caption_channels: Option<usize>,
    /// Latent side the positions were trained at.
    #[serde(default = "sample")]
    pub sample_size: usize,
    /// Patch side.
    #[serde(default = "two")]
    pub patch_size: usize,
    /// Only `gelu-approximate`.
    #[serde(default = "gelu")]
    pub activation_fn: String,
    /// Only `ada_norm_single`.
    #[serde(default = "ada_norm_single")]
    pub norm_type: String,
    /// Only false.
    #[serde(default)]
    pub norm_elementwise_affine: bool,
    /// The block norms' epsilon.
    #[serde(default = "eps")]
    pub norm_eps: f64,
    /// Biases on the q/k/v projections.
    #[serde(default = "yes")]
    pub attention_bias: bool,
    /// The positions' scale (absent: `max(sample_size / 64, 1)`).
    #[serde(default)]
    pub interpolation_scale: Option<f64>,
    /// Resolution and aspect-ratio conditions (absent: for `sample_size` 128, PixArt-α 1024).
    #[serde(default)]
    pub use_additional_conditions: Option<bool>,
}

fn heads() -> usize {
    16
}
fn head_dim() -> usize {
    72
}
fn four() -> usize {
    4
}
fn layers() -> usize {
    28
}
fn sample() -> usize {
    128
}
fn two() -> usize {
    2
}
fn gelu() -> String {
    "gelu-approximate".into()
}
fn ada_norm_single() -> String {
    "ada_norm_single".into()
}
fn eps() -> f64 {
    1e-6
}
fn yes() -> bool {
    true
}

impl PixArtConfig {
    /// Token width.
    pub fn dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Channels out.
    pub fn out(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Whether the output carries the variance after the noise.
    pub fn learns_sigma(&self) -> bool {
        self.out() == 2 * self.in_channels
    }

    /// Whether the timestep embedding takes the resolution and aspect ratio.
    pub fn additional_conditions(&self) -> bool {
        self.use_additional_conditions
            .unwrap_or(self.sample_size == 128)
    }

    /// The positions' scale.
    pub fn interpolation(&self) -> f64 {
        self.interpolation_scale
            .unwrap_or((self.sample_size / 64).max(1) as f64)
    }

    /// The width of the text features the model takes.
    pub fn text_width(&self) -> usize {
        self.caption_channels.unwrap_or(self.dim())
    }
}

impl Checked for PixArtConfig {
    fn check(&self) -> Result<(), FieldError> {
        if let Some(c) = &self.class_name {
            checks::one_of(
                "_class_name",
                c,
                &["PixArtTransformer2DModel", "Transformer2DModel"],
            )?;
        }
        if self.norm_type != "ada_norm_single" {
            let what = match self.norm_type.as_str() {
                "ada_norm_zero" => " (that is DiT's transformer: load it with dit.load)",
                _ => "",
            };
            return Err(FieldError::new(
                "norm_type",
                format!(
                    "`{}`{what}: a PixArt transformer has `ada_norm_single`",
                    self.norm_type
                ),
            ));
        }
        checks::one_of("activation_fn", &self.activation_fn, &["gelu-approximate"])?;
        if self.norm_elementwise_affine {
            return Err(FieldError::new(
                "norm_elementwise_affine",
                "PixArt's block norms have no parameters (false)",
            ));
        }
        checks::positive(&[
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out()),
            ("num_layers", self.num_layers),
            ("sample_size", self.sample_size),
            ("patch_size", self.patch_size),
            ("caption_channels", self.text_width()),
        ])?;
        if let Some(d) = self.cross_attention_dim {
            if d != self.dim() {
                return Err(FieldError::new(
                    "cross_attention_dim",
                    format!(
                        "{d}: the projected captions are as wide as the tokens ({})",
                        self.dim()
                    ),
                ));
            }
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
        if self.additional_conditions() && !self.dim().is_multiple_of(3) {
            return Err(FieldError::new(
                "use_additional_conditions",
                format!(
                    "the size conditions split the token width {} in thirds",
                    self.dim()
                ),
            ));
        }
        if !self.sample_size.is_multiple_of(self.patch_size) {
            return Err(FieldError::new(
                "sample_size",
                format!(
                    "{} is not a multiple of the patch size {}",
                    self.sample_size, self.patch_size
                ),
            ));
        }
        if self.out() != self.in_channels && !self.learns_sigma() {
            return Err(FieldError::new(
                "out_channels",
                format!(
                    "{} channels out for {} in: expected the same, or twice (learned sigma)",
                    self.out(),
                    self.in_channels
                ),
            ));
        }
        Ok(())
    }
}
