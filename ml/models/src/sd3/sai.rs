//! Stability AI's original single-file layout of the SD3/SD3.5 transformer
//! (`sd3_medium.safetensors`, `sd3.5_large.safetensors`; keys optionally under
//! `model.diffusion_model.`): fused q/k/v, MMDiT's own names, and the last context modulation and
//! the final one in (shift, scale) order. The tensors are mapped onto diffusers' names (fused
//! ones split into views) and the config read off the shapes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use latentflow_weights::TensorFiles;

use super::Sd3Config;
use crate::{ModelError, Result};

/// Where Stability AI's bundled files (`sd3_medium_incl_clips_t5xxlfp8.safetensors`) keep
/// CLIP-L (transformers' names, no projection).
pub const CLIP_L_PREFIX: &str = "text_encoders.clip_l.transformer.";
/// CLIP-G (transformers' names, with its projection).
pub const CLIP_G_PREFIX: &str = "text_encoders.clip_g.transformer.";
/// T5-XXL (transformers' names), when bundled.
pub const T5_PREFIX: &str = "text_encoders.t5xxl.transformer.";
/// The VAE (LDM names).
pub const VAE_PREFIX: &str = "first_stage_model.";

/// SD3's VAE config (16 channels, SD3's scale and shift, no quant convs), for bundled files
/// without a config folder.
pub const BUILTIN_VAE: &str = include_str!("../../configs/sd3/vae.json");
/// T5 v1.1 XXL's config.
pub const BUILTIN_T5: &str = include_str!("../../configs/sd3/t5xxl.json");
/// CLIP ViT-L/14's text config.
pub const BUILTIN_CLIP_L: &str = include_str!("../../configs/sd15/text_encoder.json");
/// OpenCLIP ViT-bigG/14's text config with projection.
pub const BUILTIN_CLIP_G: &str = include_str!("../../configs/sdxl/text_encoder_2.json");

/// Whether a file's header says it is an SD3 file bundling text encoders or a VAE.
pub fn is_bundle(header: &latentflow_weights::Header) -> bool {
    (header.has_prefix("model.diffusion_model.joint_blocks.") || header.has_prefix("joint_blocks."))
        && (header.has_prefix(CLIP_L_PREFIX) || header.has_prefix(VAE_PREFIX))
}

/// The key prefix of the file's transformer, if it is in this layout.
pub fn prefix(files: &TensorFiles) -> Option<&'static str> {
    ["model.diffusion_model.", ""].into_iter().find(|p| {
        files
            .shape(&format!("{p}joint_blocks.0.x_block.attn.qkv.weight"))
            .is_some()
    })
}

/// The config the file's shapes describe; MMDiT's heads are 64 wide unless RMS norms say
/// otherwise.
pub fn config(files: &TensorFiles, source: &Path) -> Result<Sd3Config> {
    let p = prefix(files).ok_or_else(|| {
        ModelError::format(source, "not an SD3 transformer in Stability AI's layout (no joint_blocks.0.x_block.attn.qkv.weight)")
    })?;
    let shape = |name: &str| -> Result<Vec<usize>> {
        files
            .shape(&format!("{p}{name}"))
            .map(<[usize]>::to_vec)
            .ok_or_else(|| ModelError::format(source, format!("no `{p}{name}`")))
    };
    let (dim, in_channels, patch) = match shape("x_embedder.proj.weight")?.as_slice() {
        [d, c, k, _] => (*d, *c, *k),
        s => {
            return Err(ModelError::format(
                source,
                format!("x_embedder.proj.weight is {s:?}"),
            ))
        }
    };
    let layers = (0..)
        .take_while(|i| {
            files
                .shape(&format!("{p}joint_blocks.{i}.x_block.attn.qkv.weight"))
                .is_some()
        })
        .count();
    let qk = files.shape(&format!("{p}joint_blocks.0.x_block.attn.ln_q.weight"));
    let head_dim = qk.and_then(|s| s.first().copied()).unwrap_or(64);
    let dual: Vec<usize> = (0..layers)
        .filter(|i| {
            files
                .shape(&format!("{p}joint_blocks.{i}.x_block.attn2.qkv.weight"))
                .is_some()
        })
        .collect();
    let context = shape("context_embedder.weight")?;
    let pos = shape("pos_embed")?;
    let side = (pos.get(1).copied().unwrap_or(0) as f64).sqrt().round() as usize;
    let out = shape("final_layer.linear.weight")?[0] / (patch * patch).max(1);
    if head_dim == 0 || dim % head_dim != 0 {
        return Err(ModelError::format(
            source,
            format!("token width {dim} is not a multiple of the head width {head_dim}"),
        ));
    }
    Ok(Sd3Config {
        class_name: None,
        sample_size: 128,
        patch_size: patch,
        in_channels,
        out_channels: Some(out),
        num_layers: layers,
        attention_head_dim: head_dim,
        num_attention_heads: dim / head_dim,
        joint_attention_dim: context.get(1).copied().unwrap_or(0),
        caption_projection_dim: context.first().copied().unwrap_or(0),
        pooled_projection_dim: shape("y_embedder.mlp.0.weight")?
            .get(1)
            .copied()
            .unwrap_or(0),
        pos_embed_max_size: Some(side),
        dual_attention_layers: dual,
        qk_norm: qk.map(|_| "rms_norm".into()),
    })
}

/// The file's tensors under diffusers' names, as f32.
pub fn tensors(
    files: &TensorFiles,
    c: &Sd3Config,
    dtype: DType,
    source: &Path,
) -> Result<HashMap<String, Tensor>> {
    let p = prefix(files).unwrap_or("");
    let read = |name: &str| -> Result<Tensor> {
        files
            .read(&format!("{p}{name}"), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|e| ModelError::format(source, format!("{p}{name}: {e}")))
    };
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let linear = |out: &mut HashMap<String, Tensor>, theirs: &str, ours: &str| -> Result<()> {
        for s in ["weight", "bias"] {
            out.insert(format!("{ours}.{s}"), read(&format!("{theirs}.{s}"))?);
        }
        Ok(())
    };
    let qkv = |out: &mut HashMap<String, Tensor>, theirs: &str, ours: [String; 3]| -> Result<()> {
        for s in ["weight", "bias"] {
            let t = read(&format!("{theirs}.{s}"))?;
            let n = t.dim(0)? / 3;
            for (k, name) in ours.iter().enumerate() {
                out.insert(format!("{name}.{s}"), t.narrow(0, k * n, n)?);
            }
        }
        Ok(())
    };
    // (shift, scale) → (scale, shift).
    let swapped = |out: &mut HashMap<String, Tensor>, theirs: &str, ours: &str| -> Result<()> {
        for s in ["weight", "bias"] {
            let t = read(&format!("{theirs}.{s}"))?;
            let half = t.dim(0)? / 2;
            out.insert(
                format!("{ours}.{s}"),
                Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)?,
            );
        }
        Ok(())
    };
    out.insert("pos_embed.pos_embed".into(), read("pos_embed")?);
    linear(&mut out, "x_embedder.proj", "pos_embed.proj")?;
    linear(
        &mut out,
        "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_1",
    )?;
    linear(
        &mut out,
        "t_embedder.mlp.2",
        "time_text_embed.timestep_embedder.linear_2",
    )?;
    linear(
        &mut out,
        "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_1",
    )?;
    linear(
        &mut out,
        "y_embedder.mlp.2",
        "time_text_embed.text_embedder.linear_2",
    )?;
    linear(&mut out, "context_embedder", "context_embedder")?;
    let rms = c.qk_rms();
    for i in 0..c.num_layers {
        let (x, t, o) = (
            format!("joint_blocks.{i}.x_block"),
            format!("joint_blocks.{i}.context_block"),
            format!("transformer_blocks.{i}"),
        );
        let last = i + 1 == c.num_layers;
        let names = |a: &str, names: [&str; 3]| names.map(|n| format!("{o}.{a}.{n}"));
        qkv(
            &mut out,
            &format!("{x}.attn.qkv"),
            names("attn", ["to_q", "to_k", "to_v"]),
        )?;
        qkv(
            &mut out,
            &format!("{t}.attn.qkv"),
            names("attn", ["add_q_proj", "add_k_proj", "add_v_proj"]),
        )?;
        if rms {
            for (theirs, ours) in [
                (format!("{x}.attn.ln_q"), "attn.norm_q"),
                (format!("{x}.attn.ln_k"), "attn.norm_k"),
                (format!("{t}.attn.ln_q"), "attn.norm_added_q"),
                (format!("{t}.attn.ln_k"), "attn.norm_added_k"),
            ] {
                out.insert(
                    format!("{o}.{ours}.weight"),
                    read(&format!("{theirs}.weight"))?,
                );
            }
        }
        linear(
            &mut out,
            &format!("{x}.attn.proj"),
            &format!("{o}.attn.to_out.0"),
        )?;
        if c.dual_attention_layers.contains(&i) {
            qkv(
                &mut out,
                &format!("{x}.attn2.qkv"),
                names("attn2", ["to_q", "to_k", "to_v"]),
            )?;
            if rms {
                for (theirs, ours) in [("ln_q", "norm_q"), ("ln_k", "norm_k")] {
                    out.insert(
                        format!("{o}.attn2.{ours}.weight"),
                        read(&format!("{x}.attn2.{theirs}.weight"))?,
                    );
                }
            }
            linear(
                &mut out,
                &format!("{x}.attn2.proj"),
                &format!("{o}.attn2.to_out.0"),
            )?;
        }
        linear(
            &mut out,
            &format!("{x}.adaLN_modulation.1"),
            &format!("{o}.norm1.linear"),
        )?;
        linear(
            &mut out,
            &format!("{x}.mlp.fc1"),
            &format!("{o}.ff.net.0.proj"),
        )?;
        linear(&mut out, &format!("{x}.mlp.fc2"), &format!("{o}.ff.net.2"))?;
        if last {
            swapped(
                &mut out,
                &format!("{t}.adaLN_modulation.1"),
                &format!("{o}.norm1_context.linear"),
            )?;
        } else {
            linear(
                &mut out,
                &format!("{t}.attn.proj"),
                &format!("{o}.attn.to_add_out"),
            )?;
            linear(
                &mut out,
                &format!("{t}.adaLN_modulation.1"),
                &format!("{o}.norm1_context.linear"),
            )?;
            linear(
                &mut out,
                &format!("{t}.mlp.fc1"),
                &format!("{o}.ff_context.net.0.proj"),
            )?;
            linear(
                &mut out,
                &format!("{t}.mlp.fc2"),
                &format!("{o}.ff_context.net.2"),
            )?;
        }
    }
    linear(&mut out, "final_layer.linear", "proj_out")?;
    swapped(
        &mut out,
        "final_layer.adaLN_modulation.1",
        "norm_out.linear",
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Checked;
    use latentflow_weights::ConfigSource;

    /// The configs bundled files fall back on parse, pass their checks and are the published
    /// sizes.
    #[test]
    fn the_built_in_bundle_configs_are_the_published_ones() {
        let src = |text: &'static str| ConfigSource::Builtin(text, "built-in".into());
        let vae = crate::sd::vae::VaeConfig::load(&src(BUILTIN_VAE)).unwrap();
        assert_eq!((vae.latent_channels, vae.shift_factor), (16, Some(0.0609)));
        let t5 = crate::t5::T5Config::load(&src(BUILTIN_T5)).unwrap();
        assert_eq!((t5.d_model, t5.num_layers, t5.num_heads), (4096, 24, 64));
        let l = crate::sd::clip::ClipConfig::load(&src(BUILTIN_CLIP_L)).unwrap();
        let g = crate::sd::clip::ClipConfig::load(&src(BUILTIN_CLIP_G)).unwrap();
        assert_eq!(
            (l.hidden_size, g.hidden_size, g.projection_dim),
            (768, 1280, 1280)
        );
    }
}
