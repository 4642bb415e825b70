//! Single-file checkpoints in the original LDM/SGM layout (`model.diffusion_model.*`,
//! `first_stage_model.*`, and the text encoders: `cond_stage_model.transformer.*` for SD 1.x,
//! OpenCLIP's `cond_stage_model.model.*` for SD 2.x, `conditioner.embedders.{0,1}.*` for SDXL):
//! diffusers parameter names are mapped onto the stored keys, so the same model code loads both
//! formats.

use std::path::Path;
use std::sync::Arc;

use latentflow_weights::{Header, Rename};

use super::family::Family;
use crate::{ModelError, Result};

/// Which SD 1.x component a key belongs to.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// VAE keys.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// CLIP text-encoder keys (SD 1.x).
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";

fn resnet(name: &str) -> &str {
    match name {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        other => other,
    }
}

/// `a.b.c` → (`a`, `b.c`).
fn head(s: &str) -> (&str, &str) {
    s.split_once('.').unwrap_or((s, ""))
}

fn index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = head(s);
    Some((i.parse().ok()?, rest))
}

/// The LDM name of a diffusers UNet parameter. `layers` is `layers_per_block`; `cross[i]` says
/// whether up block `i` has attention.
pub fn unet_key(name: &str, layers: usize, up_cross: &[bool]) -> String {
    let n = layers;
    let ldm = (|| -> Option<String> {
        let (first, rest) = head(name);
        Some(match first {
            "time_embedding" => {
                let (lin, tail) = head(rest);
                let idx = if lin == "linear_1" { 0 } else { 2 };
                format!("time_embed.{idx}.{tail}")
            }
            "add_embedding" | "class_embedding" => {
                let (lin, tail) = head(rest);
                let idx = if lin == "linear_1" { 0 } else { 2 };
                format!("label_emb.0.{idx}.{tail}")
            }
            "conv_in" => format!("input_blocks.0.0.{rest}"),
            "conv_norm_out" => format!("out.0.{rest}"),
            "conv_out" => format!("out.2.{rest}"),
            "down_blocks" => {
                let (i, rest) = index(rest)?;
                let (kind, rest) = head(rest);
                let (j, rest) = index(rest)?;
                let block = 1 + i * (n + 1);
                match kind {
                    "resnets" => {
                        let (r, tail) = head(rest);
                        format!("input_blocks.{}.0.{}.{tail}", block + j, resnet(r))
                    }
                    "attentions" => format!("input_blocks.{}.1.{rest}", block + j),
                    _ => {
                        let (_, tail) = head(rest); // conv.weight
                        format!("input_blocks.{}.0.op.{tail}", block + n)
                    }
                }
            }
            "mid_block" => {
                let (kind, rest) = head(rest);
                let (k, rest) = index(rest)?;
                match kind {
                    "resnets" => {
                        let (r, tail) = head(rest);
                        format!("middle_block.{}.{}.{tail}", 2 * k, resnet(r))
                    }
                    _ => format!("middle_block.{}.{rest}", 2 * k + 1),
                }
            }
            "up_blocks" => {
                let (i, rest) = index(rest)?;
                let (kind, rest) = head(rest);
                let (j, rest) = index(rest)?;
                let block = i * (n + 1);
                match kind {
                    "resnets" => {
                        let (r, tail) = head(rest);
                        format!("output_blocks.{}.0.{}.{tail}", block + j, resnet(r))
                    }
                    "attentions" => format!("output_blocks.{}.1.{rest}", block + j),
                    _ => {
                        let (_, tail) = head(rest);
                        let slot = if up_cross.get(i).copied().unwrap_or(false) {
                            2
                        } else {
                            1
                        };
                        format!("output_blocks.{}.{slot}.conv.{tail}", block + n)
                    }
                }
            }
            _ => return None,
        })
    })();
    format!("{UNET_PREFIX}{}", ldm.unwrap_or_else(|| name.to_owned()))
}

/// The LDM name of a diffusers AutoencoderKL parameter; `levels` is the number of blocks.
pub fn vae_key(name: &str, levels: usize) -> String {
    let ldm = (|| -> Option<String> {
        let (part, rest) = head(name); // encoder / decoder / quant_conv / post_quant_conv
        let (what, rest2) = head(rest);
        let mapped = match what {
            "down_blocks" | "up_blocks" => {
                let (i, rest) = index(rest2)?;
                let (kind, rest) = head(rest);
                let (level, word, sampler) = if what == "down_blocks" {
                    (i, "down", "downsample")
                } else {
                    (levels.checked_sub(1 + i)?, "up", "upsample")
                };
                if kind == "resnets" {
                    let (j, tail) = index(rest)?;
                    format!("{word}.{level}.block.{j}.{tail}")
                } else {
                    let (_, tail) = head(rest); // 0.conv.weight → conv.weight
                    format!("{word}.{level}.{sampler}.{tail}")
                }
            }
            "mid_block" => {
                let (kind, rest) = head(rest2);
                let (k, tail) = index(rest)?;
                if kind == "resnets" {
                    format!("mid.block_{}.{tail}", k + 1)
                } else {
                    let (layer, param) = tail.rsplit_once('.')?;
                    let l = match layer {
                        "group_norm" => "norm",
                        "to_q" | "query" => "q",
                        "to_k" | "key" => "k",
                        "to_v" | "value" => "v",
                        "to_out.0" | "proj_attn" => "proj_out",
                        other => other,
                    };
                    format!("mid.attn_1.{l}.{param}")
                }
            }
            "conv_norm_out" => format!("norm_out.{rest2}"),
            _ => return Some(name.to_owned()),
        };
        Some(format!("{part}.{mapped}").replace("conv_shortcut", "nin_shortcut"))
    })();
    format!("{VAE_PREFIX}{}", ldm.unwrap_or_else(|| name.to_owned()))
}

/// Renames for the UNet of a checkpoint.
pub fn unet_rename(layers: usize, up_cross: Vec<bool>) -> Rename {
    Arc::new(move |name| unet_key(name, layers, &up_cross))
}

/// Renames for the VAE of a checkpoint.
pub fn vae_rename(levels: usize) -> Rename {
    Arc::new(move |name| vae_key(name, levels))
}

/// Renames for the text encoder of a checkpoint.
pub fn clip_rename() -> Rename {
    Arc::new(|name| format!("{CLIP_PREFIX}{name}"))
}

/// Which model a single-file checkpoint holds, from its key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// SD 1.x: CLIP ViT-L under `cond_stage_model.transformer.`.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H under `cond_stage_model.model.`.
    Sd2,
    /// SDXL base: CLIP-L under `conditioner.embedders.0.transformer.`, OpenCLIP bigG under
    /// `conditioner.embedders.1.model.`.
    SdxlBase,
    /// SDXL refiner: OpenCLIP bigG alone, under `conditioner.embedders.0.model.`.
    SdxlRefiner,
}

/// SD 2.x's OpenCLIP text tower.
pub const SD2_TEXT_PREFIX: &str = "cond_stage_model.model.";
/// SDXL base's CLIP-L (transformers' layout).
pub const SDXL_CLIP_L_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// SDXL base's OpenCLIP bigG.
pub const SDXL_BIGG_PREFIX: &str = "conditioner.embedders.1.model.";
/// The SDXL refiner's OpenCLIP bigG.
pub const REFINER_BIGG_PREFIX: &str = "conditioner.embedders.0.model.";

impl Layout {
    /// The model family.
    pub fn family(self) -> Family {
        match self {
            Layout::Sd1 => Family::Sd1,
            Layout::Sd2 => Family::Sd2,
            Layout::SdxlBase | Layout::SdxlRefiner => Family::Sdxl,
        }
    }

    /// The name used in messages.
    pub fn display_name(self) -> &'static str {
        match self {
            Layout::Sd1 => "SD 1.x",
            Layout::Sd2 => "SD 2.x",
            Layout::SdxlBase => "SDXL base",
            Layout::SdxlRefiner => "SDXL refiner",
        }
    }

    /// The key prefixes the text encoders are stored under, first to last.
    pub fn text_prefixes(self) -> &'static [&'static str] {
        match self {
            Layout::Sd1 => &[CLIP_PREFIX],
            Layout::Sd2 => &[SD2_TEXT_PREFIX],
            Layout::SdxlBase => &[SDXL_CLIP_L_PREFIX, SDXL_BIGG_PREFIX],
            Layout::SdxlRefiner => &[REFINER_BIGG_PREFIX],
        }
    }

    /// The built-in diffusers config of `component` (`unet`, `vae`, `text_encoder`,
    /// `text_encoder_2`) for checkpoints that come without a config folder: SD 1.5's,
    /// SD 2.1's (768, v-prediction), SDXL base 1.0's and refiner 1.0's.
    pub fn builtin(self, component: &str) -> Option<&'static str> {
        Some(match (self, component) {
            (_, "vae") if self.family() == Family::Sdxl => builtin::SDXL_VAE,
            (_, "vae") => builtin::SD15_VAE,
            (Layout::Sd1, "unet") => builtin::SD15_UNET,
            (Layout::Sd1 | Layout::SdxlBase, "text_encoder") => builtin::CLIP_L,
            (Layout::Sd2, "unet") => builtin::SD21_UNET,
            (Layout::Sd2, "text_encoder") => builtin::SD21_TEXT,
            (Layout::SdxlBase, "unet") => builtin::SDXL_UNET,
            (Layout::SdxlRefiner, "unet") => builtin::SDXL_REFINER_UNET,
            (Layout::SdxlBase | Layout::SdxlRefiner, "text_encoder_2") => builtin::BIGG,
            _ => return None,
        })
    }

    /// The name of the built-in configs, for messages.
    pub fn builtin_name(self) -> &'static str {
        match self {
            Layout::Sd1 => "SD 1.5",
            Layout::Sd2 => "SD 2.1 (768, v-prediction)",
            Layout::SdxlBase => "SDXL base 1.0",
            Layout::SdxlRefiner => "SDXL refiner 1.0",
        }
    }

    /// What the model predicts when no config folder says: diffusers' default for the layout
    /// (SD 2.x files are taken for SD 2.1 768, a v-prediction model; SD 2.x-base users pass
    /// `prediction=epsilon`).
    pub fn default_prediction(self) -> super::loader::PredictionType {
        match self {
            Layout::Sd2 => super::loader::PredictionType::V,
            _ => super::loader::PredictionType::Epsilon,
        }
    }

    /// The layout of a checkpoint from its header.
    pub fn of(path: &Path, header: &Header) -> Result<Layout> {
        if !header.has_prefix(UNET_PREFIX) {
            return Err(ModelError::format(
                path,
                format!("no `{UNET_PREFIX}*` keys: not a single-file Stable Diffusion checkpoint"),
            ));
        }
        Ok(if header.has_prefix(SDXL_BIGG_PREFIX) {
            Layout::SdxlBase
        } else if header.has_prefix(REFINER_BIGG_PREFIX) {
            Layout::SdxlRefiner
        } else if header.has_prefix(SD2_TEXT_PREFIX) {
            Layout::Sd2
        } else {
            Layout::Sd1
        })
    }
}

/// The built-in configurations (`ml/models/configs/`).
mod builtin {
    pub const SD15_UNET: &str = include_str!("../../configs/sd15/unet.json");
    pub const SD15_VAE: &str = include_str!("../../configs/sd15/vae.json");
    pub const CLIP_L: &str = include_str!("../../configs/sd15/text_encoder.json");
    pub const SD21_UNET: &str = include_str!("../../configs/sd21/unet.json");
    pub const SD21_TEXT: &str = include_str!("../../configs/sd21/text_encoder.json");
    pub const SDXL_UNET: &str = include_str!("../../configs/sdxl/unet.json");
    pub const SDXL_VAE: &str = include_str!("../../configs/sdxl/vae.json");
    pub const BIGG: &str = include_str!("../../configs/sdxl/text_encoder_2.json");
    pub const SDXL_REFINER_UNET: &str = include_str!("../../configs/sdxl_refiner/unet.json");
}

/// What a checkpoint file holds, from its key names.
pub struct Inspection {
    /// The model its text-encoder keys say it is.
    pub layout: Layout,
    /// Input channels of the UNet's first convolution (9: an inpainting model).
    pub unet_in_channels: Option<usize>,
}

/// The family of a single-file checkpoint from its header alone.
pub fn family(path: &Path, header: &Header) -> Result<Family> {
    Ok(Layout::of(path, header)?.family())
}

/// Reads the header of a checkpoint and checks that it holds a UNet, a VAE and the text
/// encoders of its layout.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let header = Header::read(path)?;
    let layout = Layout::of(path, &header)?;
    for p in [VAE_PREFIX].iter().chain(layout.text_prefixes()) {
        if !header.has_prefix(p) {
            return Err(ModelError::format(
                path,
                format!(
                    "an {} checkpoint without `{p}*` keys",
                    layout.display_name()
                ),
            ));
        }
    }
    let unet_in_channels = header
        .shape(&format!("{UNET_PREFIX}input_blocks.0.0.weight"))
        .and_then(|s| s.get(1).copied());
    Ok(Inspection {
        layout,
        unet_in_channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_keys_follow_the_ldm_layout() {
        let up = [false, true, true, true];
        let k = |n: &str| unet_key(n, 2, &up);
        assert_eq!(
            k("conv_in.weight"),
            "model.diffusion_model.input_blocks.0.0.weight"
        );
        assert_eq!(
            k("time_embedding.linear_2.bias"),
            "model.diffusion_model.time_embed.2.bias"
        );
        assert_eq!(
            k("down_blocks.1.resnets.0.conv_shortcut.weight"),
            "model.diffusion_model.input_blocks.4.0.skip_connection.weight"
        );
        assert_eq!(
            k("down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight"),
            "model.diffusion_model.input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight"
        );
        assert_eq!(
            k("down_blocks.0.downsamplers.0.conv.bias"),
            "model.diffusion_model.input_blocks.3.0.op.bias"
        );
        assert_eq!(
            k("mid_block.resnets.1.time_emb_proj.weight"),
            "model.diffusion_model.middle_block.2.emb_layers.1.weight"
        );
        assert_eq!(
            k("mid_block.attentions.0.proj_in.weight"),
            "model.diffusion_model.middle_block.1.proj_in.weight"
        );
        assert_eq!(
            k("up_blocks.0.upsamplers.0.conv.weight"),
            "model.diffusion_model.output_blocks.2.1.conv.weight"
        );
        assert_eq!(
            k("up_blocks.1.upsamplers.0.conv.weight"),
            "model.diffusion_model.output_blocks.5.2.conv.weight"
        );
        assert_eq!(
            k("up_blocks.3.resnets.2.norm2.weight"),
            "model.diffusion_model.output_blocks.11.0.out_layers.0.weight"
        );
        assert_eq!(k("conv_out.bias"), "model.diffusion_model.out.2.bias");
    }

    #[test]
    fn vae_keys_follow_the_ldm_layout() {
        let k = |n: &str| vae_key(n, 4);
        assert_eq!(
            k("encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
            "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight"
        );
        assert_eq!(
            k("encoder.down_blocks.0.downsamplers.0.conv.weight"),
            "first_stage_model.encoder.down.0.downsample.conv.weight"
        );
        assert_eq!(
            k("decoder.up_blocks.0.resnets.2.norm1.bias"),
            "first_stage_model.decoder.up.3.block.2.norm1.bias"
        );
        assert_eq!(
            k("decoder.up_blocks.2.upsamplers.0.conv.bias"),
            "first_stage_model.decoder.up.1.upsample.conv.bias"
        );
        assert_eq!(
            k("decoder.mid_block.attentions.0.to_out.0.weight"),
            "first_stage_model.decoder.mid.attn_1.proj_out.weight"
        );
        assert_eq!(
            k("encoder.mid_block.resnets.1.conv2.weight"),
            "first_stage_model.encoder.mid.block_2.conv2.weight"
        );
        assert_eq!(
            k("decoder.conv_norm_out.weight"),
            "first_stage_model.decoder.norm_out.weight"
        );
        assert_eq!(
            k("post_quant_conv.weight"),
            "first_stage_model.post_quant_conv.weight"
        );
    }

    #[test]
    fn sdxl_added_conditioning_keys_are_label_emb() {
        let k = |n: &str| unet_key(n, 2, &[true, false]);
        assert_eq!(
            k("add_embedding.linear_1.weight"),
            "model.diffusion_model.label_emb.0.0.weight"
        );
        assert_eq!(
            k("add_embedding.linear_2.bias"),
            "model.diffusion_model.label_emb.0.2.bias"
        );
    }

    /// Every built-in config parses, passes its checks and describes the published model.
    #[test]
    fn the_built_in_configs_describe_the_published_models() {
        use crate::sd::clip::ClipConfig;
        use crate::sd::unet::UNetConfig;
        use crate::sd::vae::VaeConfig;
        use crate::Checked;
        use latentflow_weights::ConfigSource;
        let src = |layout: Layout, c: &str| {
            ConfigSource::Builtin(
                layout
                    .builtin(c)
                    .unwrap_or_else(|| panic!("{layout:?} {c}")),
                format!("{layout:?} {c}"),
            )
        };
        let all = [
            Layout::Sd1,
            Layout::Sd2,
            Layout::SdxlBase,
            Layout::SdxlRefiner,
        ];
        for layout in all {
            let unet = UNetConfig::load(&src(layout, "unet")).unwrap();
            assert_eq!(Family::of_unet(&unet), layout.family(), "{layout:?}");
            VaeConfig::load(&src(layout, "vae")).unwrap();
        }
        let width = |layout, c| ClipConfig::load(&src(layout, c)).unwrap().hidden_size;
        assert_eq!(width(Layout::Sd1, "text_encoder"), 768);
        assert_eq!(width(Layout::Sd2, "text_encoder"), 1024);
        assert_eq!(width(Layout::SdxlBase, "text_encoder"), 768);
        assert_eq!(width(Layout::SdxlBase, "text_encoder_2"), 1280);
        assert_eq!(width(Layout::SdxlRefiner, "text_encoder_2"), 1280);
        assert!(Layout::SdxlRefiner.builtin("text_encoder").is_none());
        assert!(Layout::Sd2.builtin("text_encoder_2").is_none());
        let vae = |layout| VaeConfig::load(&src(layout, "vae")).unwrap().scaling_factor;
        assert_eq!(vae(Layout::SdxlBase), 0.13025);
        assert_eq!(vae(Layout::Sd2), 0.18215);
    }

    #[test]
    fn layouts_come_from_the_text_encoder_keys() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for (file, layout) in [
            ("tiny-sd-single.safetensors", Layout::Sd1),
            ("tiny-sd2-single.safetensors", Layout::Sd2),
            ("tiny-sdxl-single.safetensors", Layout::SdxlBase),
            ("tiny-sdxl-refiner-single.safetensors", Layout::SdxlRefiner),
        ] {
            let info = inspect(&fixtures.join(file)).unwrap();
            assert_eq!(info.layout, layout, "{file}");
        }
    }
}
