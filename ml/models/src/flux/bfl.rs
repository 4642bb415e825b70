//! Black Forest Labs' original single-file layout of FLUX.1 (`flux1-dev.safetensors`): fused
//! q/k/v (and, in the single-stream blocks, q/k/v plus the MLP input) in one matrix, other
//! names, and the final modulation in (shift, scale) order. The file's tensors are mapped onto
//! diffusers' names (fused ones split into views, not copies) and the config is read off the
//! shapes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use latentflow_weights::TensorFiles;

use super::FluxConfig;
use crate::{ModelError, Result};

/// Whether the file at `path` is in BFL's layout (it has `double_blocks.0.img_attn.qkv.weight`
/// or `img_in.weight`).
pub fn is_bfl(files: &TensorFiles) -> bool {
    files.shape("img_in.weight").is_some()
}

fn count(files: &TensorFiles, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            files
                .shape(&format!(
                    "{prefix}.{i}.{}",
                    if prefix == "double_blocks" {
                        "img_mod.lin.weight"
                    } else {
                        "linear2.weight"
                    }
                ))
                .is_some()
        })
        .count()
}

/// The config a BFL file's shapes describe.
pub fn config(files: &TensorFiles, source: &Path) -> Result<FluxConfig> {
    let shape = |name: &str| -> Result<Vec<usize>> {
        files.shape(name).map(<[usize]>::to_vec).ok_or_else(|| {
            ModelError::format(
                source,
                format!("not a FLUX.1 file in BFL's layout: no `{name}`"),
            )
        })
    };
    let img_in = shape("img_in.weight")?;
    let txt_in = shape("txt_in.weight")?;
    let vector = shape("vector_in.in_layer.weight")?;
    let (num_layers, num_single_layers) =
        (count(files, "double_blocks"), count(files, "single_blocks"));
    let head_dim = if num_layers > 0 {
        shape("double_blocks.0.img_attn.norm.query_norm.scale")?[0]
    } else {
        shape("single_blocks.0.norm.query_norm.scale")?[0]
    };
    let (dim, in_channels) = match img_in.as_slice() {
        [d, c] => (*d, *c),
        s => {
            return Err(ModelError::format(
                source,
                format!("img_in.weight is {s:?}, not a matrix"),
            ))
        }
    };
    if head_dim == 0 || dim % head_dim != 0 {
        return Err(ModelError::format(
            source,
            format!("token width {dim} is not a multiple of the head width {head_dim}"),
        ));
    }
    // BFL's axes (the file does not store them): 16 for the first, the rest split evenly
    // between rows and columns, as FLUX.1's 16/56/56.
    let rest = head_dim.saturating_sub(16);
    if head_dim <= 16 || rest % 4 != 0 {
        return Err(ModelError::format(
            source,
            format!("head width {head_dim}: the rotary axes cannot be inferred; give the model's config (a diffusers transformer folder)"),
        ));
    }
    let axes = vec![16, rest / 2, rest / 2];
    Ok(FluxConfig {
        class_name: None,
        patch_size: 1,
        in_channels,
        out_channels: None,
        num_layers,
        num_single_layers,
        attention_head_dim: head_dim,
        num_attention_heads: dim / head_dim,
        joint_attention_dim: txt_in.get(1).copied().unwrap_or(0),
        pooled_projection_dim: vector.get(1).copied().unwrap_or(0),
        guidance_embeds: files.shape("guidance_in.in_layer.weight").is_some(),
        axes_dims_rope: axes,
    })
}

/// The file's tensors under diffusers' names, as f32.
pub fn tensors(
    files: &TensorFiles,
    c: &FluxConfig,
    dtype: DType,
    source: &Path,
) -> Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let read = |name: &str| -> Result<Tensor> {
        files
            .read(name, &dev)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|e| ModelError::format(source, format!("{name}: {e}")))
    };
    let mut out = HashMap::new();
    let mut put = |ours: String, t: Tensor| {
        out.insert(ours, t);
    };
    let linear = |put: &mut dyn FnMut(String, Tensor), theirs: &str, ours: &str| -> Result<()> {
        put(format!("{ours}.weight"), read(&format!("{theirs}.weight"))?);
        put(format!("{ours}.bias"), read(&format!("{theirs}.bias"))?);
        Ok(())
    };
    // Split a fused linear along its output rows into `parts` (name, rows).
    let split = |put: &mut dyn FnMut(String, Tensor),
                 theirs: &str,
                 parts: &[(String, usize)]|
     -> Result<()> {
        for suffix in ["weight", "bias"] {
            let t = read(&format!("{theirs}.{suffix}"))?;
            let total: usize = parts.iter().map(|p| p.1).sum();
            if t.dim(0).ok() != Some(total) {
                return Err(ModelError::format(
                    source,
                    format!(
                        "{theirs}.{suffix} has {:?} rows, expected {total}",
                        t.dims()
                    ),
                ));
            }
            let mut at = 0;
            for (name, rows) in parts {
                put(format!("{name}.{suffix}"), t.narrow(0, at, *rows)?);
                at += rows;
            }
        }
        Ok(())
    };
    let put = &mut put;
    let tt = "time_text_embed";
    linear(
        put,
        "time_in.in_layer",
        &format!("{tt}.timestep_embedder.linear_1"),
    )?;
    linear(
        put,
        "time_in.out_layer",
        &format!("{tt}.timestep_embedder.linear_2"),
    )?;
    linear(
        put,
        "vector_in.in_layer",
        &format!("{tt}.text_embedder.linear_1"),
    )?;
    linear(
        put,
        "vector_in.out_layer",
        &format!("{tt}.text_embedder.linear_2"),
    )?;
    if c.guidance_embeds {
        linear(
            put,
            "guidance_in.in_layer",
            &format!("{tt}.guidance_embedder.linear_1"),
        )?;
        linear(
            put,
            "guidance_in.out_layer",
            &format!("{tt}.guidance_embedder.linear_2"),
        )?;
    }
    linear(put, "txt_in", "context_embedder")?;
    linear(put, "img_in", "x_embedder")?;
    let dim = c.dim();
    for i in 0..c.num_layers {
        let (b, o) = (
            format!("double_blocks.{i}"),
            format!("transformer_blocks.{i}"),
        );
        linear(
            put,
            &format!("{b}.img_mod.lin"),
            &format!("{o}.norm1.linear"),
        )?;
        linear(
            put,
            &format!("{b}.txt_mod.lin"),
            &format!("{o}.norm1_context.linear"),
        )?;
        let qkv = |names: [&str; 3]| -> Vec<(String, usize)> {
            names
                .iter()
                .map(|n| (format!("{o}.attn.{n}"), dim))
                .collect()
        };
        split(
            put,
            &format!("{b}.img_attn.qkv"),
            &qkv(["to_q", "to_k", "to_v"]),
        )?;
        split(
            put,
            &format!("{b}.txt_attn.qkv"),
            &qkv(["add_q_proj", "add_k_proj", "add_v_proj"]),
        )?;
        for (theirs, ours) in [
            ("img_attn.norm.query_norm", "norm_q"),
            ("img_attn.norm.key_norm", "norm_k"),
            ("txt_attn.norm.query_norm", "norm_added_q"),
            ("txt_attn.norm.key_norm", "norm_added_k"),
        ] {
            put(
                format!("{o}.attn.{ours}.weight"),
                read(&format!("{b}.{theirs}.scale"))?,
            );
        }
        linear(
            put,
            &format!("{b}.img_attn.proj"),
            &format!("{o}.attn.to_out.0"),
        )?;
        linear(
            put,
            &format!("{b}.txt_attn.proj"),
            &format!("{o}.attn.to_add_out"),
        )?;
        linear(
            put,
            &format!("{b}.img_mlp.0"),
            &format!("{o}.ff.net.0.proj"),
        )?;
        linear(put, &format!("{b}.img_mlp.2"), &format!("{o}.ff.net.2"))?;
        linear(
            put,
            &format!("{b}.txt_mlp.0"),
            &format!("{o}.ff_context.net.0.proj"),
        )?;
        linear(
            put,
            &format!("{b}.txt_mlp.2"),
            &format!("{o}.ff_context.net.2"),
        )?;
    }
    for i in 0..c.num_single_layers {
        let (b, o) = (
            format!("single_blocks.{i}"),
            format!("single_transformer_blocks.{i}"),
        );
        linear(
            put,
            &format!("{b}.modulation.lin"),
            &format!("{o}.norm.linear"),
        )?;
        split(
            put,
            &format!("{b}.linear1"),
            &[
                (format!("{o}.attn.to_q"), dim),
                (format!("{o}.attn.to_k"), dim),
                (format!("{o}.attn.to_v"), dim),
                (format!("{o}.proj_mlp"), 4 * dim),
            ],
        )?;
        put(
            format!("{o}.attn.norm_q.weight"),
            read(&format!("{b}.norm.query_norm.scale"))?,
        );
        put(
            format!("{o}.attn.norm_k.weight"),
            read(&format!("{b}.norm.key_norm.scale"))?,
        );
        linear(put, &format!("{b}.linear2"), &format!("{o}.proj_out"))?;
    }
    linear(put, "final_layer.linear", "proj_out")?;
    // BFL's final modulation is (shift, scale); diffusers' norm_out is (scale, shift).
    for suffix in ["weight", "bias"] {
        let t = read(&format!("final_layer.adaLN_modulation.1.{suffix}"))?;
        let half = t.dim(0)? / 2;
        let swapped = Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)?;
        put(format!("norm_out.linear.{suffix}"), swapped);
    }
    Ok(out)
}
