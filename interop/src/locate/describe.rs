//! What a model file or folder is, from its safetensors headers alone (no weights are read):
//! the family from the tensor names and shapes, the size, and the dtype most bytes are in.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value as Json;

use super::LocateError;

/// The most a safetensors header may take (the format's own bound is 100 MB).
const HEADER_LIMIT: u64 = 100 << 20;

/// A description of one model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Info {
    /// `SD1`, `SD2`, `SDXL`, `SDXL refiner`, `SD3`, `Flux`, `LoRA (SD1)`, `ControlNet`, `VAE`,
    /// `CLIP text encoder`, `T5 encoder`, …, or `unknown`.
    pub family: String,
    /// Bytes on disk.
    pub bytes: u64,
    /// The dtype holding most bytes (`F16`, `BF16`, `F32`, …); empty when not read.
    pub dtype: String,
    /// `safetensors`, `diffusers folder`, `pickle (not read)`, …
    pub format: String,
}

/// Tensor names with shapes, and bytes per dtype, from one safetensors header.
#[derive(Default)]
struct Header {
    shapes: BTreeMap<String, Vec<u64>>,
    dtype_bytes: BTreeMap<String, u64>,
}

fn read_header(path: &Path, into: &mut Header) -> Result<(), LocateError> {
    let bad = |message: String| LocateError::Describe {
        path: path.to_path_buf(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let file_len = f.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(len);
    if n > HEADER_LIMIT || n + 8 > file_len {
        return Err(bad(format!(
            "the header claims {n} bytes, beyond the file or the 100 MB limit"
        )));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(|e| bad(e.to_string()))?;
    let json: Json =
        serde_json::from_slice(&buf).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let Some(obj) = json.as_object() else {
        return Err(bad("header is not a JSON object".into()));
    };
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let shape: Vec<u64> = t
            .get("shape")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_u64).collect())
            .unwrap_or_default();
        let dtype = t.get("dtype").and_then(Json::as_str).unwrap_or("?");
        let bytes = match t.get("data_offsets").and_then(Json::as_array) {
            Some(o) if o.len() == 2 => o[1]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(o[0].as_u64().unwrap_or(0)),
            _ => 0,
        };
        *into.dtype_bytes.entry(dtype.to_string()).or_default() += bytes;
        into.shapes.insert(name.clone(), shape);
    }
    Ok(())
}

impl Header {
    fn any(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.shapes.keys().any(|k| pred(k))
    }

    fn starts(&self, prefix: &str) -> bool {
        self.shapes
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    /// The last dimension of the first cross-attention key projection: 768 (SD1), 1024 (SD2),
    /// 2048 (SDXL).
    fn context_dim(&self) -> Option<u64> {
        self.shapes
            .iter()
            .find(|(k, _)| k.ends_with("attn2.to_k.weight"))
            .and_then(|(_, s)| s.get(1).copied())
    }

    fn sd_family(&self) -> &'static str {
        match self.context_dim() {
            Some(768) => "SD1",
            Some(1024) => "SD2",
            Some(2048) => "SDXL",
            Some(1280) => "SDXL refiner",
            _ => "SD",
        }
    }

    fn dtype(&self) -> String {
        self.dtype_bytes
            .iter()
            .max_by_key(|(_, b)| **b)
            .map(|(d, _)| d.clone())
            .unwrap_or_default()
    }

    fn family(&self) -> String {
        let lora = self.any(|k| {
            k.contains("lora_up")
                || k.contains("lora_down")
                || k.contains(".lora_A")
                || k.contains(".lora_B")
        });
        if lora {
            let base = if self.any(|k| k.starts_with("lora_te2_") || k.contains("text_encoder_2")) {
                "SDXL"
            } else if self
                .any(|k| k.contains("double_blocks") || k.contains("single_transformer_blocks"))
            {
                "Flux"
            } else {
                "SD"
            };
            return format!("LoRA ({base})");
        }
        if self.any(|k| k.contains("double_blocks.") || k.contains("single_transformer_blocks.")) {
            return "Flux".into();
        }
        if self.any(|k| k.contains("joint_blocks.") || k.contains("context_embedder")) {
            return "SD3".into();
        }
        if self.starts("control_model.")
            || self.any(|k| k.starts_with("controlnet_cond_embedding."))
        {
            return format!("ControlNet ({})", self.sd_family());
        }
        if self.starts("conditioner.embedders.1.") {
            return "SDXL".into();
        }
        if self.starts("conditioner.embedders.0.model.") {
            return "SDXL refiner".into();
        }
        if self.starts("model.diffusion_model.") {
            if self.starts("cond_stage_model.model.") {
                return "SD2".into();
            }
            if self.starts("cond_stage_model.transformer.") {
                return "SD1".into();
            }
            return format!("{} UNet", self.sd_family());
        }
        if self.starts("down_blocks.")
            && self.starts("conv_in.")
            && self.any(|k| k.contains("attn2"))
        {
            return format!("{} UNet", self.sd_family());
        }
        if (self.starts("encoder.down") || self.starts("encoder.down_blocks."))
            && self.any(|k| k.starts_with("decoder."))
        {
            return "VAE".into();
        }
        if self.starts("first_stage_model.") {
            return "VAE".into();
        }
        if self.starts("text_model.encoder.") || self.starts("transformer.text_model.") {
            return "CLIP text encoder".into();
        }
        if self.any(|k| k.starts_with("encoder.block.0.layer.0.SelfAttention")) {
            return "T5 encoder".into();
        }
        "unknown".into()
    }
}

fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors") || e.eq_ignore_ascii_case("sft"))
}

/// Describes a file or a diffusers folder.
pub fn describe(path: &Path) -> Result<Info, LocateError> {
    if path.is_dir() {
        return describe_folder(path);
    }
    let bytes = std::fs::metadata(path)
        .map_err(|e| LocateError::Describe {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .len();
    if !is_safetensors(path) {
        return Ok(Info {
            family: "unknown".into(),
            bytes,
            dtype: String::new(),
            format: "pickle or other (not read)".into(),
        });
    }
    let mut h = Header::default();
    read_header(path, &mut h)?;
    Ok(Info {
        family: h.family(),
        bytes,
        dtype: h.dtype(),
        format: "safetensors".into(),
    })
}

fn folder_bytes(dir: &Path, depth: usize) -> u64 {
    if depth > 4 {
        return 0;
    }
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            total += folder_bytes(&p, depth + 1);
        } else if let Ok(m) = std::fs::metadata(&p) {
            total += m.len();
        }
    }
    total
}

/// A diffusers pipeline folder (`model_index.json`) or one component folder.
fn describe_folder(dir: &Path) -> Result<Info, LocateError> {
    let bytes = folder_bytes(dir, 0);
    let index: Option<Json> = std::fs::read(dir.join("model_index.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let class = index
        .as_ref()
        .and_then(|i| i.get("_class_name"))
        .and_then(Json::as_str)
        .unwrap_or("");
    let mut h = Header::default();
    for sub in ["unet", "transformer", "."] {
        let d = dir.join(sub);
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if is_safetensors(&e.path()) {
                read_header(&e.path(), &mut h)?;
            }
        }
        if !h.shapes.is_empty() {
            break;
        }
    }
    let family = match class {
        "StableDiffusionPipeline"
        | "StableDiffusionInpaintPipeline"
        | "StableDiffusionImg2ImgPipeline" => match h.sd_family() {
            "SD" => "SD1".to_string(),
            f => f.to_string(),
        },
        c if c.starts_with("StableDiffusionXL") => "SDXL".into(),
        c if c.starts_with("StableDiffusion3") => "SD3".into(),
        c if c.starts_with("Flux") => "Flux".into(),
        c if c.starts_with("PixArt") => "PixArt".into(),
        "" if !h.shapes.is_empty() => h.family(),
        "" => "unknown".into(),
        other => other.to_string(),
    };
    Ok(Info {
        family,
        bytes,
        dtype: h.dtype(),
        format: "diffusers folder".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a safetensors file with zero-sized data for the given names and shapes.
    fn write(path: &Path, tensors: &[(&str, &[u64])]) {
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for (name, shape) in tensors {
            let n: u64 = shape.iter().product::<u64>() * 2;
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + n]}),
            );
            offset += n;
        }
        let text = Json::Object(header).to_string();
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(text.as_bytes());
        bytes.resize(bytes.len() + offset as usize, 0);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn tells_the_families_apart_by_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        type Tensors<'a> = &'a [(&'a str, &'a [u64])];
        let cases: &[(&str, Tensors)] = &[
            (
                "SD1",
                &[
                    ("model.diffusion_model.input_blocks.0.0.weight", &[2]),
                    (
                        "cond_stage_model.transformer.text_model.embeddings.position_ids",
                        &[2],
                    ),
                ],
            ),
            (
                "SD2",
                &[
                    ("model.diffusion_model.input_blocks.0.0.weight", &[2]),
                    (
                        "cond_stage_model.model.transformer.resblocks.0.ln_1.weight",
                        &[2],
                    ),
                ],
            ),
            (
                "SDXL",
                &[
                    ("model.diffusion_model.input_blocks.0.0.weight", &[2]),
                    ("conditioner.embedders.1.model.ln_final.weight", &[2]),
                ],
            ),
            ("Flux", &[("double_blocks.0.img_attn.qkv.weight", &[2])]),
            (
                "SD3",
                &[(
                    "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
                    &[2],
                )],
            ),
            (
                "LoRA (SD)",
                &[(
                    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
                    &[2],
                )],
            ),
            (
                "SD2 UNet",
                &[
                    (
                        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                        &[320, 1024],
                    ),
                    ("conv_in.weight", &[2]),
                ],
            ),
            (
                "VAE",
                &[
                    ("encoder.down.0.block.0.conv1.weight", &[2]),
                    ("decoder.conv_in.weight", &[2]),
                ],
            ),
        ];
        for (want, tensors) in cases {
            let p = dir.path().join("m.safetensors");
            write(&p, tensors);
            let info = describe(&p).unwrap();
            assert_eq!(info.family, *want, "{tensors:?}");
            assert_eq!(info.dtype, "F16");
        }
    }

    #[test]
    fn a_lying_header_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        let mut bytes = (u64::MAX / 2).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&p, bytes).unwrap();
        let e = describe(&p).unwrap_err().to_string();
        assert!(e.contains("beyond the file"), "{e}");
    }
}
