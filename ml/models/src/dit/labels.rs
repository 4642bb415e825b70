//! Class names of a DiT pipeline: `id2label` in its `model_index.json` (ImageNet's for the
//! published models), each entry a comma-separated list of synonyms, as `DiTPipeline` reads it.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{ModelError, Result};

/// Names to class ids.
#[derive(Debug, Clone, Default)]
pub struct ClassNames {
    ids: BTreeMap<String, u32>,
}

impl ClassNames {
    /// The names of the pipeline folder `dir` (none when it has no `id2label`).
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("model_index.json");
        if !path.is_file() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ModelError::format(path.clone(), e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::format(path.clone(), e.to_string()))?;
        let mut ids = BTreeMap::new();
        if let Some(map) = json.get("id2label").and_then(|m| m.as_object()) {
            for (key, names) in map {
                let id: u32 = key.trim().parse().map_err(|_| {
                    ModelError::format(
                        path.clone(),
                        format!("id2label key `{key}` is not a class id"),
                    )
                })?;
                let names = names.as_str().ok_or_else(|| {
                    ModelError::format(path.clone(), format!("id2label[{key}] is not a string"))
                })?;
                for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    ids.insert(name.to_string(), id);
                }
            }
        }
        Ok(Self { ids })
    }

    /// How many names there are.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The class id of `label`: a number below `classes`, or a name (exactly, else ignoring
    /// case).
    pub fn resolve(&self, label: &str, classes: usize) -> std::result::Result<u32, String> {
        let label = label.trim();
        if let Ok(id) = label.parse::<u64>() {
            return if (id as usize) < classes {
                Ok(id as u32)
            } else {
                Err(format!(
                    "class {id} is out of range: the model knows 0..{}",
                    classes.saturating_sub(1)
                ))
            };
        }
        if let Some(&id) = self.ids.get(label) {
            return Ok(id);
        }
        let lower = label.to_lowercase();
        if let Some((_, &id)) = self.ids.iter().find(|(n, _)| n.to_lowercase() == lower) {
            return Ok(id);
        }
        if self.ids.is_empty() {
            return Err(format!(
                "`{label}` is not a class id, and this model has no class names (id2label in model_index.json)"
            ));
        }
        let near: Vec<&str> = self
            .ids
            .keys()
            .filter(|n| {
                let n = n.to_lowercase();
                n.contains(&lower) || lower.contains(&n)
            })
            .take(5)
            .map(String::as_str)
            .collect();
        Err(if near.is_empty() {
            format!(
                "`{label}` is not one of the model's {} class names",
                self.ids.len()
            )
        } else {
            format!("`{label}` is not a class name; close: {}", near.join(", "))
        })
    }
}
