//! Segmentation heads on UNet features (VPD-style dense prediction), in LatentFlow's own
//! `.safetensors` format, `latentflow-seghead-v1`:
//!
//! | tensor | shape | meaning |
//! |---|---|---|
//! | `lateral.{k}.weight`, `lateral.{k}.bias` | D×C_k×1×1, D | 1×1 conv of feature level k (0 = finest) |
//! | `classifier.weight`, `classifier.bias` | K×D×1×1, K | 1×1 conv to K class logits |
//!
//! Metadata: `format = latentflow-seghead-v1`, optional `classes` (comma-separated names).
//! Forward: each level's lateral projection is upsampled (nearest) to the finest level's size
//! and summed, then ReLU and the classifier give per-pixel logits at latent resolution.

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use candle_nn::Conv2d;

use crate::{ModelError, Result};

/// A loaded head.
pub struct SegHead {
    laterals: Vec<Conv2d>,
    classifier: Conv2d,
    /// Class names, when the file gives them.
    pub classes: Vec<String>,
}

fn conv(tensors: &std::collections::HashMap<String, Tensor>, name: &str) -> Result<Conv2d> {
    let w = tensors
        .get(&format!("{name}.weight"))
        .ok_or_else(|| ModelError::invalid(format!("segmentation head: missing `{name}.weight`")))?
        .to_dtype(candle_core::DType::F32)?;
    let b = match tensors.get(&format!("{name}.bias")) {
        Some(b) => Some(b.to_dtype(candle_core::DType::F32)?),
        None => None,
    };
    if w.rank() != 4 || w.dim(2)? != 1 || w.dim(3)? != 1 {
        return Err(ModelError::invalid(format!(
            "segmentation head: `{name}.weight` must be O×C×1×1, got {:?}",
            w.dims()
        )));
    }
    Ok(Conv2d::new(w, b, Default::default()))
}

impl SegHead {
    /// Loads a `latentflow-seghead-v1` file.
    pub fn load(path: &Path) -> Result<Self> {
        let err = |e: String| ModelError::format(path, e);
        let info = latentflow_weights::Header::read(path)?.metadata;
        if info.get("format").map(String::as_str) != Some("latentflow-seghead-v1") {
            return Err(err(
                "not a segmentation head (metadata format must be latentflow-seghead-v1)".into(),
            ));
        }
        let tensors =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| err(e.to_string()))?;
        let mut laterals = Vec::new();
        while tensors.contains_key(&format!("lateral.{}.weight", laterals.len())) {
            laterals.push(conv(&tensors, &format!("lateral.{}", laterals.len()))?);
        }
        if laterals.is_empty() {
            return Err(err("no `lateral.0.weight`".into()));
        }
        let classes = info
            .get("classes")
            .map(|c| c.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default();
        Ok(Self {
            laterals,
            classifier: conv(&tensors, "classifier")?,
            classes,
        })
    }

    /// Per-pixel logits (N×K×h×w at the finest feature's size) from features, finest first.
    pub fn forward(&self, features: &[Tensor]) -> Result<Tensor> {
        if features.len() < self.laterals.len() {
            return Err(ModelError::invalid(format!(
                "the head takes {} feature levels; the UNet gives {}",
                self.laterals.len(),
                features.len()
            )));
        }
        let (h, w) = (features[0].dim(2)?, features[0].dim(3)?);
        let mut sum: Option<Tensor> = None;
        for (lateral, f) in self.laterals.iter().zip(features) {
            let p = lateral
                .forward(f)
                .map_err(|e| ModelError::invalid(format!("segmentation head lateral: {e}")))?
                .upsample_nearest2d(h, w)?;
            sum = Some(match sum {
                Some(s) => (s + p)?,
                None => p,
            });
        }
        let sum = sum
            .ok_or_else(|| ModelError::invalid("no features"))?
            .relu()?;
        Ok(self.classifier.forward(&sum)?)
    }
}
