//! Low-rank (LoRA) updates: kohya files (`lora_down`/`lora_up`/`alpha`, LyCORIS LoCon
//! convolutions) and diffusers/PEFT files (`lora_A`/`lora_B`), merged into a copy of the touched
//! weights: W' = W + m·(α/r)·B·A, α from the file's `.alpha` (absent: α = r). Untouched weights
//! stay shared with the base model. Which model a key patches is given by its prefix, from the
//! caller's table (`lora_unet_` → `unet`, ...).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::inspect::regular_file;
use crate::{Store, WeightsError};

/// A model a LoRA file patches, as named by the caller's prefix table (`unet`, ...).
pub type Part = &'static str;

/// One module's low-rank update.
pub struct Update {
    /// The model it patches.
    pub part: Part,
    /// The module as the file names it (kohya stem without prefix, or a dotted PEFT path).
    pub module: String,
    /// A: r×in (or r×in×kh×kw).
    pub down: Tensor,
    /// B: out×r (or out×r×1×1).
    pub up: Tensor,
    /// α, when the file gives it.
    pub alpha: Option<f64>,
}

fn tensor_err(path: &Path, name: &str, reason: impl Into<String>) -> WeightsError {
    WeightsError::Tensor {
        path: path.to_path_buf(),
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Reads a LoRA `.safetensors` file; `prefixes` maps key prefixes to the model they patch.
pub fn read(path: &Path, prefixes: &[(&str, Part)]) -> Result<Vec<Update>, WeightsError> {
    regular_file(path)?;
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| {
        WeightsError::Candle {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let mut downs: HashMap<(Part, String), Tensor> = HashMap::new();
    let mut ups: HashMap<(Part, String), Tensor> = HashMap::new();
    let mut alphas: HashMap<(Part, String), f64> = HashMap::new();
    let known: Vec<&str> = prefixes.iter().map(|(p, _)| *p).collect();
    for (key, t) in &tensors {
        let t = t
            .to_dtype(candle_core::DType::F32)
            .map_err(|e| tensor_err(path, key, e.to_string()))?;
        let Some((part, rest)) = prefixes
            .iter()
            .find_map(|(p, part)| key.strip_prefix(p).map(|r| (*part, r)))
        else {
            return Err(tensor_err(
                path,
                key,
                format!(
                    "not a LoRA key this loader knows ({})",
                    known
                        .iter()
                        .map(|p| format!("{p}*"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let module = |suffix: &str| rest.strip_suffix(suffix).map(|m| (part, m.to_owned()));
        if let Some(k) = module(".lora_down.weight").or_else(|| module(".lora_A.weight")) {
            downs.insert(k, t);
        } else if let Some(k) = module(".lora_up.weight").or_else(|| module(".lora_B.weight")) {
            ups.insert(k, t);
        } else if let Some(k) = module(".alpha") {
            let a = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| tensor_err(path, key, e.to_string()))?;
            alphas.insert(k, a.first().copied().unwrap_or(0.0) as f64);
        } else {
            return Err(tensor_err(
                path,
                key,
                "unsupported LoRA tensor (LoHa/LoKr and DoRA are not supported)",
            ));
        }
    }
    let mut out = Vec::with_capacity(downs.len());
    for (k, down) in downs {
        let up = ups
            .remove(&k)
            .ok_or_else(|| tensor_err(path, &k.1, "has no up/B matrix"))?;
        out.push(Update {
            part: k.0,
            alpha: alphas.get(&k).copied(),
            module: k.1,
            down,
            up,
        });
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    Ok(out)
}

/// Why an update could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The update's shape does not fit the weight.
    #[error("LoRA module `{module}`: the update is {up:?}×{down:?}, the weight {weight:?}")]
    Shape {
        /// The module.
        module: String,
        /// B's shape.
        up: Vec<usize>,
        /// A's shape.
        down: Vec<usize>,
        /// The weight's shape.
        weight: Vec<usize>,
    },
    /// A module the lookup table names is not among the weights.
    #[error("LoRA module `{module}`: `{stored}` is not in the model's weights")]
    Missing {
        /// The module.
        module: String,
        /// The stored weight name looked for.
        stored: String,
    },
    /// candle failed.
    #[error("LoRA module `{module}`: {source}")]
    Candle {
        /// The module.
        module: String,
        /// The cause.
        #[source]
        source: candle_core::Error,
    },
}

/// m·(α/r)·B·A shaped like the weight `w`.
fn delta(u: &Update, w: &Tensor, multiplier: f64) -> Result<Tensor, MergeError> {
    let c = |source| MergeError::Candle {
        module: u.module.clone(),
        source,
    };
    let r = u.down.dim(0).map_err(c)?;
    let scale = multiplier * u.alpha.unwrap_or(r as f64) / r as f64;
    let out = u.up.dim(0).map_err(c)?;
    let a = u.down.flatten_from(1).map_err(c)?; // r × (in·kh·kw)
    let b = u.up.reshape((out, r)).map_err(c)?;
    let d = b.matmul(&a).map_err(c)?;
    if d.elem_count() != w.elem_count() {
        return Err(MergeError::Shape {
            module: u.module.clone(),
            up: u.up.dims().to_vec(),
            down: u.down.dims().to_vec(),
            weight: w.dims().to_vec(),
        });
    }
    (d.reshape(w.dims()).and_then(|d| d * scale)).map_err(c)
}

/// How LoRA files spell a model's modules.
pub struct Spelling<'a> {
    /// Prepended to module names that lack it (text encoders are stored with or without
    /// `text_model.`; files use it).
    pub prefix: Option<&'a str>,
    /// Another spelling of each module (e.g. the LDM name of a diffusers UNet module).
    pub alias: Option<&'a dyn Fn(&str) -> String>,
}

/// Module names of a model keyed by how LoRA files spell them: dotted, and with `_` for `.`.
fn lookup(names: &[String], spelling: &Spelling) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for n in names {
        let Some(module) = n.strip_suffix(".weight") else {
            continue;
        };
        let canonical = match spelling.prefix {
            Some(p) if !module.starts_with(p) => format!("{p}{module}"),
            _ => module.to_owned(),
        };
        map.insert(canonical.replace('.', "_"), module.to_owned());
        map.insert(canonical.clone(), module.to_owned());
        if let Some(f) = spelling.alias {
            map.insert(f(module).replace('.', "_"), module.to_owned());
        }
    }
    map
}

/// What applying a LoRA did.
pub struct Applied {
    /// The patched weights.
    pub store: Store,
    /// Modules patched.
    pub patched: usize,
    /// Modules of the file that matched nothing in this model.
    pub unmatched: Vec<String>,
}

/// Merges the updates for `part` into a copy of the touched weights of `store`.
pub fn apply(
    store: &Store,
    updates: &[Update],
    part: Part,
    multiplier: f64,
    spelling: &Spelling,
) -> Result<Applied, MergeError> {
    let table = lookup(&store.names(), spelling);
    let mut replaced = HashMap::new();
    let mut unmatched = Vec::new();
    for u in updates.iter().filter(|u| u.part == part) {
        let Some(module) = table.get(&u.module) else {
            unmatched.push(u.module.clone());
            continue;
        };
        let stored = store.stored_name(&format!("{module}.weight"));
        let w = store.get(&stored).ok_or_else(|| MergeError::Missing {
            module: u.module.clone(),
            stored: stored.clone(),
        })?;
        let base = replaced.get(&stored).unwrap_or(w);
        // Merged in f32 and held in the store's dtype (bf16 weights stay bf16).
        let d = delta(u, w, multiplier)?;
        let merged = base
            .to_dtype(candle_core::DType::F32)
            .and_then(|b| b + d)
            .and_then(|m| m.to_dtype(base.dtype()))
            .map_err(|source| MergeError::Candle {
                module: u.module.clone(),
                source,
            })?;
        replaced.insert(stored, merged);
    }
    let patched = replaced.len();
    Ok(Applied {
        store: store.with(replaced),
        patched,
        unmatched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_alpha_means_scale_one_and_conv_updates_take_the_weight_shape() {
        let dev = Device::Cpu;
        let down = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (2, 3), &dev).unwrap();
        let up = Tensor::from_vec(vec![1f32, 0., 0., 1.], (2, 2), &dev).unwrap();
        let w = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let u = Update {
            part: "unet",
            module: "m".into(),
            down: down.clone(),
            up: up.clone(),
            alpha: None,
        };
        let d = delta(&u, &w, 0.5).unwrap();
        assert_eq!(
            d.to_vec2::<f32>().unwrap(),
            vec![vec![0.5, 1.0, 1.5], vec![2.0, 2.5, 3.0]]
        );
        let u = Update {
            alpha: Some(1.0),
            ..u
        };
        let d = delta(&u, &w, 1.0).unwrap();
        assert_eq!(
            d.to_vec2::<f32>().unwrap()[0],
            vec![0.5, 1.0, 1.5],
            "α/r = 1/2"
        );
        // LoCon: A r×in×3×3, B out×r×1×1 → out×in×3×3.
        let a = Tensor::ones((2, 3, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::ones((4, 2, 1, 1), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 3, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let u = Update {
            part: "unet",
            module: "c".into(),
            down: a,
            up: b,
            alpha: None,
        };
        let d = delta(&u, &w, 1.0).unwrap();
        assert_eq!(d.dims(), &[4, 3, 3, 3]);
        assert_eq!(d.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 2.0);
    }

    #[test]
    fn a_bf16_store_is_merged_in_f32_and_stays_bf16() {
        use candle_core::DType;
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unet.safetensors");
        let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        candle_core::safetensors::save(&HashMap::from([("m.weight".to_string(), w)]), &path)
            .unwrap();
        let store =
            Store::load_as(&crate::Weights::file(&path).unwrap(), |_| true, DType::BF16).unwrap();
        // The model asks for its weights (that is how a store learns the module names).
        store.var_builder().get((2, 3), "m.weight").unwrap();
        let u = Update {
            part: "unet",
            module: "m".into(),
            down: Tensor::new(&[[1f32, 1., 1.]], &dev).unwrap(),
            up: Tensor::new(&[[1f32], [2.]], &dev).unwrap(),
            alpha: None,
        };
        let spelling = Spelling {
            prefix: None,
            alias: None,
        };
        let applied = apply(&store, &[u], "unet", 0.5, &spelling).unwrap();
        assert_eq!(applied.patched, 1);
        let merged = applied.store.get("m.weight").unwrap();
        assert_eq!(merged.dtype(), DType::BF16);
        assert_eq!(applied.store.dtype(), DType::BF16);
        let got = merged
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(got, vec![vec![1.5, 2.5, 3.5], vec![5.0, 6.0, 7.0]]);
    }
}
