//! The configuration of transformers' `CLIPTextModel` (`text_encoder/config.json`).

use std::path::Path;

use latentflow_weights::{ConfigError, ConfigSource, FieldError};
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

impl ClipConfig {
    /// Reads and checks a `config.json` (or built-in text).
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        source.read(Self::check)
    }

    /// Reads and checks the file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::load(&ConfigSource::File(path.to_path_buf()))
    }

    /// The fields this implementation accepts; the error names the field.
    pub fn check(&self) -> Result<(), FieldError> {
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(FieldError::new(
                "hidden_act",
                format!("{:?} is not supported (quick_gelu, gelu)", self.hidden_act),
            ));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(FieldError::new(field, "must be at least 1"));
            }
        }
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
