//! The fields of diffusers' `DiTTransformer2DModel` config this implementation accepts.

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

/// diffusers' `DiTTransformer2DModel` config (also written as `Transformer2DModel` with
/// `norm_type: ada_norm_zero`, which diffusers maps to the DiT class).
#[derive(Debug, Clone, Deserialize)]
pub struct DiTConfig {
    /// `DiTTransformer2DModel` or `Transformer2DModel`.
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
    /// Channels out: the latent's, or twice that with learned sigma (absent: the input's).
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Transformer blocks.
    #[serde(default = "layers")]
    pub num_layers: usize,
    /// Latent side the positions were trained at.
    #[serde(default = "sample")]
    pub sample_size: usize,
    /// Patch side.
    #[serde(default = "two")]
    pub patch_size: usize,
    /// Only `gelu-approximate`.
    #[serde(default = "gelu")]
    pub activation_fn: String,
    /// Classes of the label embedding (the "no class" label is this number).
    #[serde(default = "classes")]
    pub num_embeds_ada_norm: Option<usize>,
    /// Only `ada_norm_zero` (DiT); PixArt's `ada_norm_single` is another model.
    #[serde(default = "ada_norm_zero")]
    pub norm_type: String,
    /// Only false.
    #[serde(default)]
    pub norm_elementwise_affine: bool,
    /// The feed-forward norm's epsilon.
    #[serde(default = "eps")]
    pub norm_eps: f64,
    /// Biases on the q/k/v projections.
    #[serde(default = "yes")]
    pub attention_bias: bool,
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
    32
}
fn two() -> usize {
    2
}
fn gelu() -> String {
    "gelu-approximate".into()
}
fn classes() -> Option<usize> {
    Some(1000)
}
fn ada_norm_zero() -> String {
    "ada_norm_zero".into()
}
fn eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl DiTConfig {
    /// Token width.
    pub fn dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Channels out.
    pub fn out(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Whether the output carries the variance (learned sigma) after the noise.
    pub fn learns_sigma(&self) -> bool {
        self.out() == 2 * self.in_channels
    }

    /// Classes of the label embedding.
    pub fn classes(&self) -> usize {
        self.num_embeds_ada_norm.unwrap_or(0)
    }
}

impl Checked for DiTConfig {
    fn check(&self) -> Result<(), FieldError> {
        if let Some(c) = &self.class_name {
            checks::one_of(
                "_class_name",
                c,
                &["DiTTransformer2DModel", "Transformer2DModel"],
            )?;
        }
        if self.norm_type != "ada_norm_zero" {
            let what = match self.norm_type.as_str() {
                "ada_norm_single" => " (that is PixArt's transformer, not DiT's)",
                _ => "",
            };
            return Err(FieldError::new(
                "norm_type",
                format!("`{}`{what}: a DiT has `ada_norm_zero`", self.norm_type),
            ));
        }
        checks::one_of("activation_fn", &self.activation_fn, &["gelu-approximate"])?;
        if self.norm_elementwise_affine {
            return Err(FieldError::new(
                "norm_elementwise_affine",
                "a DiT's block norms have no parameters (false)",
            ));
        }
        if self.num_embeds_ada_norm.is_none() {
            return Err(FieldError::new(
                "num_embeds_ada_norm",
                "a DiT needs the number of classes",
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
            ("num_embeds_ada_norm", self.classes()),
        ])?;
        if !self.dim().is_multiple_of(4) {
            return Err(FieldError::new(
                "attention_head_dim",
                format!(
                    "the token width {} must be divisible by 4 for the 2-D positions",
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
