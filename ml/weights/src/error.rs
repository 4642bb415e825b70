//! Typed errors: every one names the file, and the tensor or field where there is one.

use std::path::PathBuf;

/// Why weights could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file system refused.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a safetensors file (or its header is damaged).
    #[error("{}: not a safetensors file ({reason})", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        reason: String,
    },
    /// A folder without weights.
    #[error("{} has no .safetensors weights (only safetensors are loaded; convert .bin/.ckpt files first)", dir.display())]
    NoWeights {
        /// The folder.
        dir: PathBuf,
    },
    /// A shard index names a file that is not there.
    #[error("{}: the shard index names `{shard}`, which does not exist", index.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard's file name.
        shard: String,
    },
    /// A shard index that is not what transformers/diffusers write.
    #[error("{}: not a shard index ({reason})", index.display())]
    BadIndex {
        /// The index file.
        index: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One tensor could not be used.
    #[error("{}: tensor `{name}`: {reason}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor's stored name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// candle refused while mapping or converting.
    #[error("{}: {source}", path.display())]
    Candle {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: candle_core::Error,
    },
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or a field has the wrong type (serde names the field and position).
    #[error("{source_name}: {source}")]
    Parse {
        /// The file, or a description of a built-in configuration.
        source_name: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A field holds a value this implementation does not accept.
    #[error("{source_name}: `{field}`: {reason}")]
    Field {
        /// The file, or a description of a built-in configuration.
        source_name: String,
        /// The field.
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
}
