//! The configuration of transformers' `T5Config` (`config.json` of a T5 folder).

use latentflow_weights::{checks, Checked, FieldError};
use serde::Deserialize;

/// The fields of `T5Config` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    /// `t5` or `mt5` (same encoder); absent in some hand-written configs.
    #[serde(default = "t5")]
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share a bucket.
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    /// RMS-norm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (original T5) or `gated-gelu` (t5-v1_1, flan-t5), also `gated-silu`, `gelu`.
    #[serde(default = "relu")]
    pub feed_forward_proj: String,
    /// The padding id.
    #[serde(default)]
    pub pad_token_id: u32,
    /// The end-of-sequence id.
    #[serde(default = "eos")]
    pub eos_token_id: u32,
}

fn t5() -> String {
    "t5".into()
}
fn buckets() -> usize {
    32
}
fn max_distance() -> usize {
    128
}
fn eps() -> f64 {
    1e-6
}
fn relu() -> String {
    "relu".into()
}
fn eos() -> u32 {
    1
}

/// The feed-forward block of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedForward {
    /// `wo(act(wi(x)))`.
    Dense(Activation),
    /// `wo(act(wi_0(x)) · wi_1(x))`.
    Gated(Activation),
}

/// Activations of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// ReLU.
    Relu,
    /// GELU, tanh approximation (transformers' `gelu_new`, what `gated-gelu` means).
    GeluTanh,
    /// GELU with erf.
    Gelu,
    /// SiLU.
    Silu,
}

impl T5Config {
    /// The feed-forward block `feed_forward_proj` names.
    pub fn feed_forward(&self) -> FeedForward {
        let (gated, act) = match self.feed_forward_proj.strip_prefix("gated-") {
            Some(a) => (true, a),
            None => (false, self.feed_forward_proj.as_str()),
        };
        let act = match (gated, act) {
            (_, "relu") => Activation::Relu,
            // transformers maps `gated-gelu` to `gelu_new`.
            (true, "gelu") | (_, "gelu_new") => Activation::GeluTanh,
            (_, "silu") => Activation::Silu,
            _ => Activation::Gelu,
        };
        if gated {
            FeedForward::Gated(act)
        } else {
            FeedForward::Dense(act)
        }
    }
}

impl Checked for T5Config {
    fn check(&self) -> Result<(), FieldError> {
        checks::one_of("model_type", &self.model_type, &["t5", "mt5", "t5encoder"])?;
        checks::one_of(
            "feed_forward_proj",
            &self.feed_forward_proj,
            &[
                "relu",
                "gelu",
                "gelu_new",
                "silu",
                "gated-relu",
                "gated-gelu",
                "gated-gelu_new",
                "gated-silu",
            ],
        )?;
        checks::positive(&[
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ])?;
        if self.relative_attention_num_buckets < 4 {
            return Err(FieldError::new(
                "relative_attention_num_buckets",
                "must be at least 4 (half for each direction, half of those exact)",
            ));
        }
        if self.relative_attention_max_distance < self.relative_attention_num_buckets / 4 {
            return Err(FieldError::new(
                "relative_attention_max_distance",
                "is smaller than the exact range of the buckets",
            ));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err(FieldError::new("layer_norm_epsilon", "must be positive"));
        }
        Ok(())
    }
}
