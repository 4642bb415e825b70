//! Loading the components of a Stable Diffusion model from a diffusers folder, a component
//! folder or a single-file checkpoint, each loaded once however many nodes refer to it.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::checkpoint::{self, sd15};
use crate::clip::{ClipConfig, ClipTextModel};
use crate::tokenizer::ClipTokenizer;
use crate::unet::{UNet, UNetConfig};
use crate::vae::{Vae, VaeConfig};
use crate::weights::{Store, Weights};
use crate::SdError;

/// The original CLIP vocabulary, for checkpoints that come without a tokenizer folder.
const BPE_VOCAB: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

/// A text encoder with its tokenizer.
pub struct TextEncoder {
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The model.
    pub model: ClipTextModel,
    /// Its weights (shared with LoRA'd variants).
    pub store: Store,
}

/// A UNet with the prediction type of its scheduler config.
pub struct Denoiser {
    /// The network.
    pub unet: UNet,
    /// `epsilon` or `v_prediction`.
    pub prediction_type: String,
    /// Its weights (shared with LoRA'd variants).
    pub store: Store,
}

/// A UNet from a diffusers `unet/` folder.
pub fn unet_folder(dir: &Path, prediction_type: String) -> Result<Denoiser, SdError> {
    let config = UNetConfig::from_file(&dir.join("config.json"))?;
    let store = Store::load(&Weights::folder(dir)?, |_| true)?;
    let unet = UNet::new(config, store.var_builder())
        .map_err(|e| SdError::new(format!("{}: {e}", dir.display())))?;
    Ok(Denoiser {
        unet,
        prediction_type,
        store,
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

impl Source {
    /// Classifies a path given by the user.
    pub fn detect(path: &Path, config: Option<&Path>) -> Result<Self, SdError> {
        let canon = |p: &Path| {
            p.canonicalize()
                .map_err(|e| SdError::new(format!("{}: {e}", p.display())))
        };
        let p = canon(path)?;
        if p.is_dir() {
            if !p.join("unet").is_dir() {
                return Err(SdError::new(format!(
                    "{}: not a diffusers pipeline folder (no unet/); load single components with sd.load_unet / sd.load_clip / sd.load_vae",
                    p.display()
                )));
            }
            return Ok(Source::Pipeline(p));
        }
        let config = config.map(canon).transpose()?;
        Ok(Source::Checkpoint(p, config))
    }

    fn describe(&self) -> String {
        match self {
            Source::Pipeline(p) | Source::Checkpoint(p, _) => p.display().to_string(),
        }
    }
}

/// Returns the loaded value for `key`, loading it at most once while anyone holds it.
fn shared<T: Send + Sync + 'static>(
    key: (Source, &'static str),
    load: impl FnOnce() -> Result<T, SdError>,
) -> Result<Arc<T>, SdError> {
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

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, SdError> {
    serde_json::from_str(text).map_err(|e| SdError::new(format!("{what}: {e}")))
}

fn config_text(
    config_dir: &Option<PathBuf>,
    component: &str,
    builtin: &str,
) -> Result<String, SdError> {
    match config_dir {
        Some(dir) => {
            let p = dir.join(component).join("config.json");
            std::fs::read_to_string(&p).map_err(|e| SdError::new(format!("{}: {e}", p.display())))
        }
        None => Ok(builtin.to_owned()),
    }
}

/// The prediction type named by a pipeline's `scheduler/scheduler_config.json`.
fn prediction_type(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("scheduler/scheduler_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("prediction_type")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "epsilon".into())
}

/// The UNet of a model.
pub fn unet(src: &Source) -> Result<Arc<Denoiser>, SdError> {
    shared((src.clone(), "unet"), || {
        match src {
            Source::Pipeline(dir) => unet_folder(&dir.join("unet"), prediction_type(dir)),
            Source::Checkpoint(file, cfg_dir) => {
                let info = checkpoint::inspect(file)?;
                let mut config: UNetConfig =
                    parse(&config_text(cfg_dir, "unet", sd15::UNET)?, "UNet config")?;
                if cfg_dir.is_none() {
                    if let Some(c) = info.unet_in_channels {
                        config.in_channels = c; // 9 for inpainting checkpoints
                    }
                }
                let layers = match &config.layers_per_block {
                    crate::unet::PerBlock::One(n) => *n,
                    crate::unet::PerBlock::Each(v) => {
                        let n = v.first().copied().unwrap_or(2);
                        if v.iter().any(|x| *x != n) {
                            return Err(SdError::new("single-file checkpoints need the same layers_per_block for every block"));
                        }
                        n
                    }
                };
                let up_cross = config
                    .up_block_types
                    .iter()
                    .map(|b| b.starts_with("CrossAttn"))
                    .collect();
                let w = Weights::renamed(file, checkpoint::unet_rename(layers, up_cross));
                let store = Store::load(&w, |n| n.starts_with(checkpoint::UNET_PREFIX))?;
                let prediction_type = match cfg_dir {
                    Some(d) => prediction_type(d),
                    None => "epsilon".into(),
                };
                Ok(Denoiser {
                    unet: UNet::new(config, store.var_builder())
                        .map_err(|e| SdError::new(format!("{}: {e}", file.display())))?,
                    prediction_type,
                    store,
                })
            }
        }
    })
}

/// The text encoder and tokenizer of a model.
pub fn text_encoder(src: &Source) -> Result<Arc<TextEncoder>, SdError> {
    shared((src.clone(), "text_encoder"), || match src {
        Source::Pipeline(dir) => {
            load_text_encoder(&dir.join("text_encoder"), &dir.join("tokenizer"))
        }
        Source::Checkpoint(file, cfg_dir) => {
            checkpoint::inspect(file)?;
            let config: ClipConfig = parse(
                &config_text(cfg_dir, "text_encoder", sd15::TEXT_ENCODER)?,
                "text encoder config",
            )?;
            let w = Weights::renamed(file, checkpoint::clip_rename());
            let store = Store::load(&w, |n| n.starts_with(checkpoint::CLIP_PREFIX))?;
            let model = ClipTextModel::new(config, store.var_builder())
                .map_err(|e| SdError::new(format!("{}: text encoder: {e}", file.display())))?;
            let tokenizer = match cfg_dir
                .as_ref()
                .map(|d| d.join("tokenizer"))
                .filter(|d| d.is_dir())
            {
                Some(dir) => ClipTokenizer::load(&dir)?,
                None => ClipTokenizer::from_bpe_gz_bytes(BPE_VOCAB)?,
            };
            Ok(TextEncoder {
                tokenizer,
                model,
                store,
            })
        }
    })
}

/// A text encoder from its folder and a tokenizer folder (or none: the built-in CLIP vocabulary).
pub fn load_text_encoder(model_dir: &Path, tokenizer_dir: &Path) -> Result<TextEncoder, SdError> {
    let config = ClipConfig::from_file(&model_dir.join("config.json"))?;
    let store = Store::load(&Weights::folder(model_dir)?, |_| true)?;
    let model = ClipTextModel::new(config, store.var_builder())
        .map_err(|e| SdError::new(format!("{}: {e}", model_dir.display())))?;
    let tokenizer = if tokenizer_dir.is_dir() {
        ClipTokenizer::load(tokenizer_dir)?
    } else {
        ClipTokenizer::from_bpe_gz_bytes(BPE_VOCAB)?
    };
    Ok(TextEncoder {
        tokenizer,
        model,
        store,
    })
}

/// The VAE of a model.
pub fn vae(src: &Source) -> Result<Arc<Vae>, SdError> {
    shared((src.clone(), "vae"), || match src {
        Source::Pipeline(dir) => Vae::load(&dir.join("vae")),
        Source::Checkpoint(file, cfg_dir) => {
            checkpoint::inspect(file)?;
            let config: VaeConfig = parse(&config_text(cfg_dir, "vae", sd15::VAE)?, "VAE config")?;
            config
                .check_fields()
                .map_err(|f| SdError::new(format!("unsupported VAE configuration: {f}")))?;
            let w = Weights::renamed(
                file,
                checkpoint::vae_rename(config.block_out_channels.len()),
            );
            Vae::from_weights(config, &w, file)
        }
    })
}

/// A component folder loaded on its own (`unet/`, `vae/`), shared like whole models.
pub fn component<T: Send + Sync + 'static>(
    dir: &Path,
    kind: &'static str,
    load: impl FnOnce(&Path) -> Result<T, SdError>,
) -> Result<Arc<T>, SdError> {
    let dir = dir
        .canonicalize()
        .map_err(|e| SdError::new(format!("{}: {e}", dir.display())))?;
    shared((Source::Pipeline(dir.clone()), kind), || load(&dir))
}

/// For messages.
pub fn describe(src: &Source) -> String {
    src.describe()
}
