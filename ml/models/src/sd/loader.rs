//! Loading the components of a Stable Diffusion model from a diffusers folder, a component
//! folder or a single-file checkpoint, each loaded once however many nodes refer to it.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use candle_core::{DType, Device};
use latentflow_weights::{ConfigSource, Header, Store, TensorFiles, Weights};

use super::checkpoint::{self, Layout};
use super::clip::{ClipConfig, ClipTextModel};
use super::open_clip;
use super::sdxl_text::SdxlText;
use super::text::TextEncoder;
use super::tokenizer::ClipTokenizer;
use super::unet::{UNet, UNetConfig};
use super::vae::{Vae, VaeConfig};
use crate::text_encoders::Clip;
use crate::{Checked, ModelError, Result};

/// What a model predicts, from its scheduler config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise ε.
    Epsilon,
    /// The velocity v.
    V,
    /// The clean sample x0.
    Sample,
}

impl PredictionType {
    /// diffusers' spelling.
    pub fn name(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::V => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }

    /// From diffusers' spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::V,
            "sample" => PredictionType::Sample,
            _ => return None,
        })
    }
}

/// A UNet with the prediction type of its scheduler config.
pub struct LoadedUNet {
    /// The network.
    pub unet: UNet,
    /// What it predicts.
    pub prediction: PredictionType,
    /// Its weights (shared with LoRA'd variants).
    pub store: Store,
    /// Where it came from.
    pub source: PathBuf,
    /// Its family: a folder's from its config, a single file's from its text-encoder keys.
    pub family: super::Family,
}

/// A UNet from a diffusers `unet/` folder, computing in `dtype` (`F32`, or `BF16`: weights
/// stored in bf16 are then held as they are).
pub fn unet_folder(dir: &Path, prediction: PredictionType, dtype: DType) -> Result<LoadedUNet> {
    let config = UNetConfig::from_file(&dir.join("config.json"))?;
    let store = Store::load_as(&Weights::folder(dir)?, |_| true, dtype)?;
    let family = super::Family::of_unet(&config);
    let unet = UNet::new(config, store.var_builder(), dir)?;
    Ok(LoadedUNet {
        unet,
        prediction,
        store,
        source: dir.to_path_buf(),
        family,
    })
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A diffusers pipeline folder (`model_index.json`).
    Pipeline(PathBuf),
    /// A single-file checkpoint and an optional diffusers folder with the configs.
    Checkpoint(PathBuf, Option<PathBuf>),
}

fn canonical(p: &Path) -> Result<PathBuf> {
    p.canonicalize()
        .map_err(|e| ModelError::format(p, e.to_string()))
}

impl Source {
    /// Classifies a path given by the user.
    pub fn detect(path: &Path, config: Option<&Path>) -> Result<Self> {
        let p = canonical(path)?;
        if p.is_dir() {
            if !p.join("unet").is_dir() {
                return Err(ModelError::format(
                    &p,
                    "not a diffusers pipeline folder (no unet/); load single components with sd.load_unet / sd.load_clip / sd.load_vae",
                ));
            }
            return Ok(Source::Pipeline(p));
        }
        let config = config.map(canonical).transpose()?;
        Ok(Source::Checkpoint(p, config))
    }

    /// The path, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Pipeline(p) | Source::Checkpoint(p, _) => p.display().to_string(),
        }
    }

    /// A component's config: the pipeline's or config folder's file, else the built-in one of
    /// the checkpoint's layout.
    fn config(&self, component: &str, layout: Layout) -> Result<ConfigSource> {
        match self {
            Source::Pipeline(dir) | Source::Checkpoint(_, Some(dir)) => {
                Ok(ConfigSource::File(dir.join(component).join("config.json")))
            }
            Source::Checkpoint(file, None) => match layout.builtin(component) {
                Some(text) => Ok(ConfigSource::Builtin(
                    text,
                    format!("the built-in {} {component} config", layout.builtin_name()),
                )),
                None => Err(ModelError::format(
                    file,
                    format!("an {} checkpoint has no {component}", layout.display_name()),
                )),
            },
        }
    }
}

/// A checkpoint loaded under the built-in configs that does not fit them: says which configs
/// and how to give others.
fn builtin_hint(e: ModelError, src: &Source, layout: Layout) -> ModelError {
    match (src, e.kind()) {
        (
            Source::Checkpoint(file, None),
            crate::ModelErrorKind::Mismatch {
                component, source, ..
            },
        ) => ModelError::format(
            file,
            format!(
                "{component} weights do not fit the built-in {} config ({source}); for a model of other sizes, set `config` to a diffusers folder with its configs",
                layout.builtin_name()
            ),
        ),
        _ => e,
    }
}

/// Returns the loaded value for `key`, loading it at most once while anyone holds it.
fn shared<T: Send + Sync + 'static>(
    key: (Source, &'static str),
    load: impl FnOnce() -> Result<T>,
) -> Result<Arc<T>> {
    type Cache = HashMap<(Source, &'static str), Weak<dyn Any + Send + Sync>>;
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    // Holding the lock while loading keeps two nodes from loading the same model twice.
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    if let Some(v) = cache.get(&key).and_then(Weak::upgrade) {
        if let Ok(v) = v.downcast::<T>() {
            return Ok(v);
        }
    }
    let v = Arc::new(load()?);
    let any: Arc<dyn Any + Send + Sync> = v.clone();
    cache.insert(key, Arc::downgrade(&any));
    Ok(v)
}

/// The prediction type named by a pipeline's `scheduler/scheduler_config.json`. No file means
/// ε; a file that cannot be read or names an unknown type is an error naming it.
pub fn prediction_type(dir: &Path) -> Result<PredictionType> {
    let file = dir.join("scheduler/scheduler_config.json");
    if !file.exists() {
        return Ok(PredictionType::Epsilon);
    }
    let json: serde_json::Value = latentflow_weights::read_config(&file)?;
    match json.get("prediction_type") {
        None | Some(serde_json::Value::Null) => Ok(PredictionType::Epsilon),
        Some(serde_json::Value::String(s)) => PredictionType::parse(s).ok_or_else(|| {
            ModelError::from(latentflow_weights::ConfigError::Field {
                source_name: file.display().to_string(),
                field: "prediction_type".into(),
                reason: format!("{s:?} is not one of epsilon, v_prediction, sample"),
            })
        }),
        Some(other) => Err(ModelError::from(latentflow_weights::ConfigError::Field {
            source_name: file.display().to_string(),
            field: "prediction_type".into(),
            reason: format!("{other} is not a string"),
        })),
    }
}

/// The cache key of a UNet loaded to compute in `dtype` (one model per dtype).
pub fn unet_key(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("unet"),
        DType::BF16 => Ok("unet:bf16"),
        other => Err(ModelError::invalid(format!(
            "a UNet computes in f32 or bf16, not {other:?}"
        ))),
    }
}

/// The UNet of a model, computing in `dtype` (see [`unet_folder`]).
pub fn unet(src: &Source, dtype: DType) -> Result<Arc<LoadedUNet>> {
    shared((src.clone(), unet_key(dtype)?), || match src {
        Source::Pipeline(dir) => unet_folder(&dir.join("unet"), prediction_type(dir)?, dtype),
        Source::Checkpoint(file, cfg_dir) => {
            let info = checkpoint::inspect(file)?;
            let mut config = UNetConfig::load(&src.config("unet", info.layout)?)?;
            if cfg_dir.is_none() {
                if let Some(c) = info.unet_in_channels {
                    config.in_channels = c; // 9 for inpainting checkpoints
                }
            }
            let layers = config.uniform_layers().ok_or_else(|| {
                ModelError::format(
                    file,
                    "single-file checkpoints need the same layers_per_block for every block",
                )
            })?;
            let w = Weights::renamed(file, checkpoint::unet_rename(layers, config.up_cross()));
            let store = Store::load_as(&w, |n| n.starts_with(checkpoint::UNET_PREFIX), dtype)?;
            let prediction = match cfg_dir {
                Some(d) => prediction_type(d)?,
                None => info.layout.default_prediction(),
            };
            Ok(LoadedUNet {
                unet: UNet::new(config, store.var_builder(), file)
                    .map_err(|e| builtin_hint(e, src, info.layout))?,
                prediction,
                store,
                source: file.clone(),
                family: info.layout.family(),
            })
        }
    })
}

/// One text encoder of a checkpoint: its config (the config folder's `component`, else the
/// built-in one), its weights under `prefix` (OpenCLIP's layout or transformers'), and its
/// tokenizer (the config folder's `tokenizer`, else the built-in CLIP vocabulary; OpenCLIP's
/// pads with `!`).
fn checkpoint_clip(
    src: &Source,
    layout: Layout,
    component: &str,
    tokenizer: &str,
    prefix: &str,
) -> Result<(ClipTextModel, ClipTokenizer, Store)> {
    let Source::Checkpoint(file, cfg_dir) = src else {
        return Err(ModelError::invalid("not a single-file checkpoint"));
    };
    let config = ClipConfig::load(&src.config(component, layout)?)?;
    let is_open_clip = prefix.ends_with(".model.");
    let store = if is_open_clip {
        let files = TensorFiles::open(std::slice::from_ref(file))?;
        // SD 2.x's UNet takes the text itself; SDXL's bigG is projected for the pooled embedding.
        let projection = layout.family() == super::Family::Sdxl;
        let tensors =
            open_clip::tensors(file, &files, prefix, config.num_hidden_layers, projection)
                .map_err(|e| match cfg_dir {
                    None => ModelError::invalid(format!(
                "{e} (the built-in {} config; set `config` to a diffusers folder for other sizes)",
                layout.builtin_name()
            )),
                    Some(_) => e,
                })?;
        Store::from_tensors(tensors)
    } else {
        let owned = prefix.to_owned();
        let rename: latentflow_weights::Rename = Arc::new(move |name| format!("{owned}{name}"));
        Store::load(&Weights::renamed(file, rename), |n| n.starts_with(prefix))?
    };
    let model = ClipTextModel::new(config, store.var_builder(), file)
        .map_err(|e| builtin_hint(e, src, layout))?;
    let tokenizer = match cfg_dir
        .as_ref()
        .map(|d| d.join(tokenizer))
        .filter(|d| d.is_dir())
    {
        Some(dir) => ClipTokenizer::load(&dir)?,
        None if is_open_clip => ClipTokenizer::builtin("!")?,
        None => ClipTokenizer::builtin(ClipTokenizer::EOS)?,
    };
    Ok((model, tokenizer, store))
}

/// The text encoder and tokenizer of a model.
pub fn text_encoder(src: &Source) -> Result<Arc<TextEncoder>> {
    shared((src.clone(), "text_encoder"), || match src {
        Source::Pipeline(dir) => {
            load_text_encoder(&dir.join("text_encoder"), &dir.join("tokenizer"))
        }
        Source::Checkpoint(file, _) => {
            let layout = checkpoint::inspect(file)?.layout;
            let prefix = match layout {
                Layout::Sd1 => checkpoint::CLIP_PREFIX,
                Layout::Sd2 => checkpoint::SD2_TEXT_PREFIX,
                Layout::SdxlBase | Layout::SdxlRefiner => {
                    return Err(ModelError::format(
                        file,
                        format!(
                            "an {} checkpoint: its text encoders load with sd.load_sdxl_text",
                            layout.display_name()
                        ),
                    ))
                }
            };
            let (model, tokenizer, store) =
                checkpoint_clip(src, layout, "text_encoder", "tokenizer", prefix)?;
            Ok(TextEncoder {
                tokenizer,
                model,
                store,
            })
        }
    })
}

/// SDXL's two text encoders (the refiner's one): a diffusers pipeline folder's, or a single
/// file's (CLIP-L in transformers' layout, bigG in OpenCLIP's).
pub fn sdxl_text(src: &Source) -> Result<Arc<SdxlText>> {
    shared((src.clone(), "sdxl_text"), || match src {
        Source::Pipeline(dir) => SdxlText::load(dir, &Device::Cpu),
        Source::Checkpoint(file, _) => {
            let layout = checkpoint::inspect(file)?.layout;
            let clip = |component: &str, tokenizer: &str, prefix: &str| -> Result<Clip> {
                let (model, tok, _) = checkpoint_clip(src, layout, component, tokenizer, prefix)?;
                Clip::new(model, tok, file)
            };
            let (clip_l, clip_g) = match layout {
                Layout::SdxlBase => (
                    Some(clip("text_encoder", "tokenizer", checkpoint::SDXL_CLIP_L_PREFIX)?),
                    clip("text_encoder_2", "tokenizer_2", checkpoint::SDXL_BIGG_PREFIX)?,
                ),
                Layout::SdxlRefiner => (
                    None,
                    clip("text_encoder_2", "tokenizer_2", checkpoint::REFINER_BIGG_PREFIX)?,
                ),
                other => {
                    return Err(ModelError::format(
                        file,
                        format!(
                            "an {} checkpoint, not SDXL: load its text encoder with sd.load_checkpoint or sd.load_clip",
                            other.display_name()
                        ),
                    ))
                }
            };
            Ok(SdxlText {
                clip_l,
                clip_g,
                source: file.clone(),
            })
        }
    })
}

/// A text encoder from its folder and a tokenizer folder (or none: the built-in CLIP vocabulary).
pub fn load_text_encoder(model_dir: &Path, tokenizer_dir: &Path) -> Result<TextEncoder> {
    let config = ClipConfig::from_file(&model_dir.join("config.json"))?;
    let store = Store::load(&Weights::folder(model_dir)?, |_| true)?;
    let model = ClipTextModel::new(config, store.var_builder(), model_dir)?;
    let tokenizer = if tokenizer_dir.is_dir() {
        ClipTokenizer::load(tokenizer_dir)?
    } else {
        ClipTokenizer::builtin(ClipTokenizer::EOS)?
    };
    Ok(TextEncoder {
        tokenizer,
        model,
        store,
    })
}

/// The VAE of a model.
pub fn vae(src: &Source) -> Result<Arc<Vae>> {
    shared((src.clone(), "vae"), || match src {
        Source::Pipeline(dir) => Vae::load(&dir.join("vae")),
        Source::Checkpoint(file, cfg_dir) if crate::sd3::sai::is_bundle(&Header::read(file)?) => {
            // An SD3 file with its VAE (`sd3_medium_incl_clips.safetensors`).
            let config = VaeConfig::load(&match cfg_dir {
                Some(dir) => ConfigSource::File(dir.join("vae/config.json")),
                None => ConfigSource::Builtin(
                    crate::sd3::sai::BUILTIN_VAE,
                    "the built-in SD3 vae config".into(),
                ),
            })?;
            let w = Weights::renamed(
                file,
                checkpoint::vae_rename(config.block_out_channels.len()),
            );
            Vae::from_weights(config, &w, file)
        }
        Source::Checkpoint(file, _) => {
            let layout = checkpoint::inspect(file)?.layout;
            let config = VaeConfig::load(&src.config("vae", layout)?)?;
            let w = Weights::renamed(
                file,
                checkpoint::vae_rename(config.block_out_channels.len()),
            );
            Vae::from_weights(config, &w, file).map_err(|e| builtin_hint(e, src, layout))
        }
    })
}

/// A component folder loaded on its own (`unet/`, `vae/`), shared like whole models.
pub fn component<T: Send + Sync + 'static>(
    dir: &Path,
    kind: &'static str,
    load: impl FnOnce(&Path) -> Result<T>,
) -> Result<Arc<T>> {
    let dir = canonical(dir)?;
    shared((Source::Pipeline(dir.clone()), kind), || load(&dir))
}
