//! JSON configurations (`config.json` of diffusers and transformers), read with the file named
//! in every error.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::ConfigError;

/// A field that a configuration's own check refused (the loader adds the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, e.g. `norm_num_groups` or `block_out_channels[2]`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl FieldError {
    /// `field`: `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.reason)
    }
}

/// Where a configuration comes from: a file, or text built into the program.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A `config.json` file.
    File(PathBuf),
    /// Built-in text and a description for messages (e.g. "the built-in SD 1.5 UNet config").
    Builtin(&'static str, String),
}

impl ConfigSource {
    /// A description for messages.
    pub fn name(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Builtin(_, what) => what.clone(),
        }
    }

    /// Reads and parses the configuration, then runs `check` on it.
    pub fn read<T: DeserializeOwned>(
        &self,
        check: impl FnOnce(&T) -> Result<(), FieldError>,
    ) -> Result<T, ConfigError> {
        let text = match self {
            ConfigSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.clone(),
                    source,
                })?
            }
            ConfigSource::Builtin(text, _) => (*text).to_owned(),
        };
        let cfg: T = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            source_name: self.name(),
            source,
        })?;
        check(&cfg).map_err(|f| ConfigError::Field {
            source_name: self.name(),
            field: f.field,
            reason: f.reason,
        })?;
        Ok(cfg)
    }
}

/// Reads the JSON configuration at `path` (no checks beyond its types).
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    ConfigSource::File(path.to_path_buf()).read(|_| Ok(()))
}

/// A configuration that checks its own fields; loading it reads, parses and checks.
pub trait Checked: DeserializeOwned {
    /// The fields this implementation accepts; the error names the field.
    fn check(&self) -> Result<(), FieldError>;

    /// Reads and checks a `config.json` (or built-in text).
    fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        source.read(Self::check)
    }

    /// Reads and checks the file at `path`.
    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::load(&ConfigSource::File(path.to_path_buf()))
    }
}

/// Field checks the model configurations share.
pub mod checks {
    use super::FieldError;

    /// Every `(field, value)` is at least 1.
    pub fn positive(fields: &[(&str, usize)]) -> Result<(), FieldError> {
        match fields.iter().find(|(_, v)| *v == 0) {
            Some((field, _)) => Err(FieldError::new(*field, "must be at least 1")),
            None => Ok(()),
        }
    }

    /// `value` is one of `allowed`.
    pub fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), FieldError> {
        if allowed.contains(&value) {
            return Ok(());
        }
        Err(FieldError::new(
            field,
            format!("{value:?} is not supported ({})", allowed.join(", ")),
        ))
    }

    /// Every entry of the list `field` is one of `allowed`.
    pub fn each_one_of(field: &str, list: &[String], allowed: &[&str]) -> Result<(), FieldError> {
        for (i, v) in list.iter().enumerate() {
            one_of(&format!("{field}[{i}]"), v, allowed)?;
        }
        Ok(())
    }

    /// Each `(field, length)` has `n` entries, one per entry of `of`.
    pub fn lengths(n: usize, of: &str, lists: &[(&str, usize)]) -> Result<(), FieldError> {
        match lists.iter().find(|(_, len)| *len != n) {
            Some((field, len)) => Err(FieldError::new(
                *field,
                format!("{len} entries for {n} {of}"),
            )),
            None => Ok(()),
        }
    }

    /// `groups` (group-norm groups) is positive and divides every channel count.
    pub fn groups_divide(groups: usize, channels: &[usize]) -> Result<(), FieldError> {
        if groups == 0 {
            return Err(FieldError::new("norm_num_groups", "is 0"));
        }
        match channels.iter().find(|c| !c.is_multiple_of(groups)) {
            Some(c) => Err(FieldError::new(
                "norm_num_groups",
                format!("{groups} does not divide {c} channels"),
            )),
            None => Ok(()),
        }
    }
}
