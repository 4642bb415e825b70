//! Decoder-only LLMs as text encoders: the hidden states of a chosen layer of a Llama, Mistral,
//! Qwen2 or Qwen3 model (transformers' `hidden_states[k]`), with a padding mask, as recent DiTs
//! and LLM adapters take them.

pub mod config;
pub mod model;

pub use config::DecoderConfig;
pub use model::Decoder;
