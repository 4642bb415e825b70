//! LoRA for Stable Diffusion: the prefixes of kohya and PEFT files, the LDM spelling of UNet
//! modules, and LoRA'd copies of a UNet and a text encoder (untouched weights shared).

use std::path::Path;

use latentflow_weights::lora::{self, Applied, Spelling, Update};

use super::checkpoint;
use super::clip::ClipTextModel;
use super::loader::LoadedUNet;
use super::text::TextEncoder;
use super::unet::{UNet, UNetConfig};
use crate::Result;

/// The UNet's part name.
pub const UNET: lora::Part = "unet";
/// The text encoder's part name.
pub const TEXT_ENCODER: lora::Part = "text_encoder";

/// Key prefixes of SD LoRA files and the part each patches.
pub const PREFIXES: &[(&str, lora::Part)] = &[
    ("lora_unet_", UNET),
    ("lora_te_", TEXT_ENCODER),
    ("unet.", UNET),
    ("text_encoder.", TEXT_ENCODER),
];

/// Reads an SD LoRA file.
pub fn read(path: &Path) -> Result<Vec<Update>> {
    Ok(lora::read(path, PREFIXES)?)
}

/// The LDM spelling of a UNet module (for kohya files trained on original checkpoints).
pub fn ldm_module(config: &UNetConfig) -> impl Fn(&str) -> String {
    let layers = config.uniform_layers().unwrap_or(2);
    let up_cross = config.up_cross();
    move |module: &str| {
        let full = checkpoint::unet_key(&format!("{module}.weight"), layers, &up_cross);
        full.trim_start_matches(checkpoint::UNET_PREFIX)
            .trim_end_matches(".weight")
            .to_owned()
    }
}

/// A LoRA'd UNet: the same config, the patched weights.
pub fn unet_with(
    base: &LoadedUNet,
    updates: &[Update],
    multiplier: f64,
) -> Result<(LoadedUNet, Applied)> {
    let ldm = ldm_module(&base.unet.config);
    let spelling = Spelling {
        prefix: None,
        alias: Some(&ldm),
    };
    let applied = lora::apply(&base.store, updates, UNET, multiplier, &spelling)?;
    let unet = UNet::new(
        base.unet.config.clone(),
        applied.store.var_builder(),
        &base.source,
    )?;
    Ok((
        LoadedUNet {
            unet,
            prediction: base.prediction,
            store: applied.store.clone(),
            source: base.source.clone(),
            family: base.family,
        },
        applied,
    ))
}

/// A LoRA'd text encoder.
pub fn text_encoder_with(
    base: &TextEncoder,
    updates: &[Update],
    multiplier: f64,
) -> Result<(TextEncoder, Applied)> {
    let spelling = Spelling {
        prefix: Some("text_model."),
        alias: None,
    };
    let applied = lora::apply(&base.store, updates, TEXT_ENCODER, multiplier, &spelling)?;
    let model = ClipTextModel::new(
        base.model.config.clone(),
        applied.store.var_builder(),
        Path::new("LoRA'd text encoder"),
    )?;
    Ok((
        TextEncoder {
            tokenizer: base.tokenizer.clone(),
            model,
            store: applied.store.clone(),
        },
        applied,
    ))
}
