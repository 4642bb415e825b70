//! OpenCLIP's text tower as single-file checkpoints store it (SD 2.x under
//! `cond_stage_model.model.`, SDXL's bigG under `conditioner.embedders.1.model.`, the refiner's
//! under `conditioner.embedders.0.model.`), mapped onto transformers' `CLIPTextModel` names:
//! the fused `attn.in_proj_*` split into q, k, v (views, not copies), `text_projection` turned
//! from OpenCLIP's in×out into a linear layer's out×in, and only the layers the config runs
//! (SD 2.x files hold 24 resblocks, the model uses 23).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use latentflow_weights::TensorFiles;

use crate::{ModelError, Result};

/// transformers' name of each per-layer tensor OpenCLIP stores under its own name.
const LAYER: [(&str, &str); 5] = [
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
];

/// The number of resblocks the file holds under `prefix`.
pub fn layers(files: &TensorFiles, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            files
                .shape(&format!("{prefix}transformer.resblocks.{i}.ln_1.weight"))
                .is_some()
        })
        .count()
}

/// The first `layers` layers of the text tower under `prefix`, by transformers' names (with the
/// `text_model.` prefix); with `projection`, `text_projection.weight` too.
pub fn tensors(
    path: &Path,
    files: &TensorFiles,
    prefix: &str,
    layers: usize,
    projection: bool,
) -> Result<HashMap<String, Tensor>> {
    let stored = self::layers(files, prefix);
    if stored < layers {
        return Err(ModelError::format(
            path,
            format!("the text encoder under `{prefix}` has {stored} layers; its config asks for {layers}"),
        ));
    }
    let read = |name: &str| -> Result<Tensor> {
        let full = format!("{prefix}{name}");
        if files.shape(&full).is_none() {
            return Err(ModelError::format(path, format!("no `{full}`")));
        }
        files
            .read(&full, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| ModelError::format(path, format!("{full}: {e}")))
    };
    let mut out = HashMap::new();
    let m = "text_model.";
    out.insert(
        format!("{m}embeddings.token_embedding.weight"),
        read("token_embedding.weight")?,
    );
    out.insert(
        format!("{m}embeddings.position_embedding.weight"),
        read("positional_embedding")?,
    );
    for s in ["weight", "bias"] {
        out.insert(
            format!("{m}final_layer_norm.{s}"),
            read(&format!("ln_final.{s}"))?,
        );
    }
    if projection {
        out.insert(
            "text_projection.weight".into(),
            read("text_projection")?.t()?.contiguous()?,
        );
    }
    for i in 0..layers {
        let (theirs, ours) = (
            format!("transformer.resblocks.{i}."),
            format!("{m}encoder.layers.{i}."),
        );
        for (a, b) in LAYER {
            for s in ["weight", "bias"] {
                out.insert(format!("{ours}{b}.{s}"), read(&format!("{theirs}{a}.{s}"))?);
            }
        }
        for s in ["weight", "bias"] {
            let fused = read(&format!("{theirs}attn.in_proj_{s}"))?;
            let rows = fused.dim(0)?;
            if rows % 3 != 0 {
                return Err(ModelError::format(
                    path,
                    format!("{prefix}{theirs}attn.in_proj_{s} has {rows} rows, not 3 × the width"),
                ));
            }
            let n = rows / 3;
            for (k, p) in ["q", "k", "v"].into_iter().enumerate() {
                out.insert(
                    format!("{ours}self_attn.{p}_proj.{s}"),
                    fused.narrow(0, k * n, n)?,
                );
            }
        }
    }
    Ok(out)
}
