//! LoRA files (kohya `lora_unet_*`/`lora_te_*` with diffusers or LDM module names, LyCORIS
//! LoCon convolutions, diffusers/PEFT `lora_A`/`lora_B`), merged into a copy of the touched
//! weights: W' = W + m·(α/r)·B·A, α from the file's `.alpha` (absent: α = r). Untouched
//! weights stay shared with the base model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::weights::Store;
use crate::SdError;

/// Which model a LoRA module patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The UNet.
    Unet,
    /// The CLIP text encoder.
    TextEncoder,
}

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

/// Reads a LoRA `.safetensors` file.
pub fn read(path: &Path) -> Result<Vec<Update>, SdError> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| SdError::new(format!("{}: {e}", path.display())))?;
    let mut downs: HashMap<(Part, String), Tensor> = HashMap::new();
    let mut ups: HashMap<(Part, String), Tensor> = HashMap::new();
    let mut alphas: HashMap<(Part, String), f64> = HashMap::new();
    for (key, t) in &tensors {
        let t = t.to_dtype(candle_core::DType::F32)?;
        let (part, rest) = if let Some(r) = key.strip_prefix("lora_unet_") {
            (Part::Unet, r)
        } else if let Some(r) = key.strip_prefix("lora_te_") {
            (Part::TextEncoder, r)
        } else if let Some(r) = key.strip_prefix("unet.") {
            (Part::Unet, r)
        } else if let Some(r) = key.strip_prefix("text_encoder.") {
            (Part::TextEncoder, r)
        } else {
            return Err(SdError::new(format!(
                "{}: key `{key}` is not a LoRA key this loader knows (lora_unet_*, lora_te_*, unet.*, text_encoder.*)",
                path.display()
            )));
        };
        let module = |suffix: &str| rest.strip_suffix(suffix).map(|m| (part, m.to_owned()));
        if let Some(k) = module(".lora_down.weight").or_else(|| module(".lora_A.weight")) {
            downs.insert(k, t);
        } else if let Some(k) = module(".lora_up.weight").or_else(|| module(".lora_B.weight")) {
            ups.insert(k, t);
        } else if let Some(k) = module(".alpha") {
            alphas.insert(
                k,
                t.flatten_all()?
                    .to_vec1::<f32>()?
                    .first()
                    .copied()
                    .unwrap_or(0.0) as f64,
            );
        } else {
            return Err(SdError::new(format!(
                "{}: `{key}`: unsupported LoRA tensor (LoHa/LoKr and DoRA are not supported)",
                path.display()
            )));
        }
    }
    let mut out = Vec::with_capacity(downs.len());
    for (k, down) in downs {
        let up = ups.remove(&k).ok_or_else(|| {
            SdError::new(format!("{}: `{}` has no up/B matrix", path.display(), k.1))
        })?;
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

/// m·(α/r)·B·A shaped like the weight `w`.
fn delta(u: &Update, w: &Tensor, multiplier: f64) -> Result<Tensor, SdError> {
    let r = u.down.dim(0)?;
    let scale = multiplier * u.alpha.unwrap_or(r as f64) / r as f64;
    let out = u.up.dim(0)?;
    let a = u.down.flatten_from(1)?; // r × (in·kh·kw)
    let b = u.up.reshape((out, r))?;
    let d = b.matmul(&a)?;
    if d.elem_count() != w.elem_count() {
        return Err(SdError::new(format!(
            "`{}`: the LoRA update has shape {:?}×{:?}, the weight {:?}",
            u.module,
            u.up.dims(),
            u.down.dims(),
            w.dims()
        )));
    }
    Ok((d.reshape(w.dims())? * scale)?)
}

/// Module names of a model keyed by how LoRA files spell them: dotted, and with `_` for `.`.
/// `ldm` adds the LDM spelling of UNet modules (kohya files trained on original checkpoints).
fn lookup(
    names: &[String],
    part: Part,
    ldm: Option<&dyn Fn(&str) -> String>,
) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for n in names {
        let Some(module) = n.strip_suffix(".weight") else {
            continue;
        };
        // Text encoders are stored with or without `text_model.`; files use it.
        let canonical = if part == Part::TextEncoder && !module.starts_with("text_model.") {
            format!("text_model.{module}")
        } else {
            module.to_owned()
        };
        map.insert(canonical.replace('.', "_"), module.to_owned());
        map.insert(canonical.clone(), module.to_owned());
        if let Some(f) = ldm {
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
    ldm: Option<&dyn Fn(&str) -> String>,
) -> Result<Applied, SdError> {
    let table = lookup(&store.names(), part, ldm);
    let mut replaced = HashMap::new();
    let mut unmatched = Vec::new();
    for u in updates.iter().filter(|u| u.part == part) {
        let Some(module) = table.get(&u.module) else {
            unmatched.push(u.module.clone());
            continue;
        };
        let stored = store.stored_name(&format!("{module}.weight"));
        let w = store
            .get(&stored)
            .ok_or_else(|| SdError::new(format!("`{stored}` is not in the model's weights")))?;
        let base = replaced.get(&stored).unwrap_or(w);
        let merged = (base + delta(u, w, multiplier)?)?;
        replaced.insert(stored, merged);
    }
    let patched = replaced.len();
    Ok(Applied {
        store: store.with(replaced),
        patched,
        unmatched,
    })
}

/// The LDM spelling of a UNet module (for kohya files trained on original checkpoints).
pub fn ldm_module(config: &crate::unet::UNetConfig) -> impl Fn(&str) -> String {
    let layers = match &config.layers_per_block {
        crate::unet::PerBlock::One(n) => *n,
        crate::unet::PerBlock::Each(v) => v.first().copied().unwrap_or(2),
    };
    let up_cross: Vec<bool> = config
        .up_block_types
        .iter()
        .map(|b| b.starts_with("CrossAttn"))
        .collect();
    move |module: &str| {
        let full = crate::checkpoint::unet_key(&format!("{module}.weight"), layers, &up_cross);
        full.trim_start_matches(crate::checkpoint::UNET_PREFIX)
            .trim_end_matches(".weight")
            .to_owned()
    }
}

/// A LoRA'd UNet: the same config, the patched weights.
pub fn unet_with(
    base: &crate::models::Denoiser,
    updates: &[Update],
    multiplier: f64,
) -> Result<(crate::models::Denoiser, Applied), SdError> {
    let ldm = ldm_module(&base.unet.config);
    let applied = apply(&base.store, updates, Part::Unet, multiplier, Some(&ldm))?;
    let unet = crate::unet::UNet::new(base.unet.config.clone(), applied.store.var_builder())?;
    Ok((
        crate::models::Denoiser {
            unet,
            prediction_type: base.prediction_type.clone(),
            store: applied.store.clone(),
        },
        applied,
    ))
}

/// A LoRA'd text encoder.
pub fn text_encoder_with(
    base: &crate::models::TextEncoder,
    updates: &[Update],
    multiplier: f64,
) -> Result<(crate::models::TextEncoder, Applied), SdError> {
    let applied = apply(&base.store, updates, Part::TextEncoder, multiplier, None)?;
    let model =
        crate::clip::ClipTextModel::new(base.model.config.clone(), applied.store.var_builder())?;
    Ok((
        crate::models::TextEncoder {
            tokenizer: base.tokenizer.clone(),
            model,
            store: applied.store.clone(),
        },
        applied,
    ))
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
            part: Part::Unet,
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
            part: Part::Unet,
            module: "c".into(),
            down: a,
            up: b,
            alpha: None,
        };
        let d = delta(&u, &w, 1.0).unwrap();
        assert_eq!(d.dims(), &[4, 3, 3, 3]);
        assert_eq!(d.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 2.0);
    }
}
