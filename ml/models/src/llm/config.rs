//! The configuration of transformers' Llama, Mistral, Qwen2 and Qwen3 models.

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

/// RoPE parameters: transformers 5 writes `rope_parameters`, older files `rope_theta` and
/// `rope_scaling`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeParameters {
    /// `default` or `llama3`.
    #[serde(default)]
    pub rope_type: Option<String>,
    /// Older spelling of `rope_type`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// llama3: the scaling factor.
    #[serde(default)]
    pub factor: Option<f64>,
    /// llama3.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// llama3.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// llama3.
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

/// The fields of the decoder configs the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct DecoderConfig {
    /// `llama`, `mistral`, `qwen2` or `qwen3`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); absent: as many as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head width; absent: hidden_size / heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMS-norm epsilon.
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    /// Older spelling of the RoPE base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Older spelling of the RoPE parameters.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers 5's RoPE parameters.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Biases on q, k, v (Llama's option; Qwen2 always has them).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// `silu` (all of these families).
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// Mistral's (and Qwen2's, when `use_sliding_window`) attention window; prompts longer than
    /// it are refused rather than encoded differently from the reference.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2/Qwen3: whether `sliding_window` applies.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
}

fn eps() -> f64 {
    1e-6
}
fn silu() -> String {
    "silu".into()
}

/// How RoPE frequencies are set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rope {
    /// `θ^(−2i/d)`.
    Default {
        /// The base θ.
        theta: f64,
    },
    /// Llama 3.1's long-context rescaling of the default frequencies.
    Llama3 {
        /// The base θ.
        theta: f64,
        /// Scaling factor.
        factor: f64,
        /// Low-frequency factor.
        low: f64,
        /// High-frequency factor.
        high: f64,
        /// The original context length.
        original: f64,
    },
}

impl DecoderConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one head.
    pub fn head_width(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q, k and v have biases.
    pub fn qkv_bias(&self) -> bool {
        match self.model_type.as_str() {
            "qwen2" => self.attention_bias.unwrap_or(true),
            _ => self.attention_bias.unwrap_or(false),
        }
    }

    /// The attention window, when one applies.
    pub fn window(&self) -> Option<usize> {
        match self.model_type.as_str() {
            "mistral" => self.sliding_window,
            "qwen2" | "qwen3" if self.use_sliding_window == Some(true) => self.sliding_window,
            _ => None,
        }
    }

    /// Whether q and k are RMS-normed per head before RoPE (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.model_type == "qwen3"
    }

    /// The RoPE settings.
    pub fn rope(&self) -> Result<Rope, FieldError> {
        let p = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or_default();
        let theta = p.rope_theta.or(self.rope_theta).unwrap_or(10000.0);
        let kind = p.rope_type.or(p.kind).unwrap_or_else(|| "default".into());
        match kind.as_str() {
            "default" => Ok(Rope::Default { theta }),
            "llama3" => {
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| {
                        FieldError::new("rope_parameters", format!("llama3 RoPE without `{name}`"))
                    })
                };
                Ok(Rope::Llama3 {
                    theta,
                    factor: need(p.factor, "factor")?,
                    low: need(p.low_freq_factor, "low_freq_factor")?,
                    high: need(p.high_freq_factor, "high_freq_factor")?,
                    original: need(
                        p.original_max_position_embeddings,
                        "original_max_position_embeddings",
                    )?,
                })
            }
            other => Err(FieldError::new(
                "rope_parameters",
                format!("RoPE type {other:?} is not supported (default, llama3)"),
            )),
        }
    }
}

impl Checked for DecoderConfig {
    fn check(&self) -> Result<(), FieldError> {
        checks::one_of(
            "model_type",
            &self.model_type,
            &["llama", "mistral", "qwen2", "qwen3"],
        )?;
        checks::one_of("hidden_act", &self.hidden_act, &["silu"])?;
        checks::positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_width()),
        ])?;
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(FieldError::new(
                "num_key_value_heads",
                format!(
                    "{} query heads do not share {} key/value heads evenly",
                    self.num_attention_heads,
                    self.kv_heads()
                ),
            ));
        }
        if !self.head_width().is_multiple_of(2) {
            return Err(FieldError::new("head_dim", "RoPE needs an even head width"));
        }
        self.rope().map(|_| ())
    }
}
