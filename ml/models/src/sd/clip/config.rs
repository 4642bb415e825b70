//! The configuration of transformers' `CLIPTextModel` (`text_encoder/config.json`).

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

/// The fields of transformers' `CLIPTextConfig` that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Sequence length.
    pub max_position_embeddings: usize,
    /// `quick_gelu` (SD 1.x) or `gelu` (SD 2.x).
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// Layer-norm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// End-of-text id; the legacy value 2 means "the highest id in the sequence".
    #[serde(default = "legacy_eos")]
    pub eos_token_id: u32,
    /// Width of `text_projection` (`CLIPTextModelWithProjection`: SDXL's and SD3's second
    /// encoder, SD3's first).
    #[serde(default = "projection")]
    pub projection_dim: usize,
}

fn projection() -> usize {
    512
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}
fn legacy_eos() -> u32 {
    2
}

impl Checked for ClipConfig {
    fn check(&self) -> Result<(), FieldError> {
        checks::one_of("hidden_act", &self.hidden_act, &["quick_gelu", "gelu"])?;
        checks::positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        if self.max_position_embeddings < 3 {
            return Err(FieldError::new(
                "max_position_embeddings",
                "must leave room for the start and end tokens (at least 3)",
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(FieldError::new(
                "num_attention_heads",
                format!(
                    "hidden_size {} does not split into {} heads",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        Ok(())
    }
}
