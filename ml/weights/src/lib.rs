//! Where a model's numbers come from: `.safetensors` files (single, in a folder, or sharded
//! with an index), read tensor by tensor with positioned reads (`reader`), optionally under renamed keys; their headers, read without
//! loading anything; JSON configurations; and low-rank (LoRA) updates merged into them.
//!
//! Models are built from a [`candle_nn::VarBuilder`] made here and never see a path.

mod config;
mod error;
mod files;
pub mod inspect;
pub mod lora;
pub mod reader;
mod store;

pub use config::{checks, read_config, Checked, ConfigSource, FieldError};
pub use error::{ConfigError, WeightsError};
pub use files::{Rename, Weights};
pub use inspect::Header;
pub use lora::MergeError;
pub use reader::TensorFiles;
pub use store::Store;
