//! A component's tensors loaded once and shared: a model and the variants made from it (LoRA)
//! hold the same untouched tensors, not copies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::files::{Rename, Weights};
use crate::reader::TensorFiles;
use crate::WeightsError;

/// Tensors by stored name, plus the renaming that maps model names onto them.
#[derive(Clone)]
pub struct Store {
    tensors: Arc<HashMap<String, Tensor>>,
    rename: Option<Rename>,
    /// Parameter names (model spelling) that the model built from this store asked for.
    names: Arc<Mutex<Vec<String>>>,
    /// The dtype the tensors are held in and a model built from them computes in.
    dtype: DType,
}

impl Store {
    /// Loads (as f32) the tensors of `weights` whose stored name passes `keep`.
    pub fn load(weights: &Weights, keep: impl Fn(&str) -> bool) -> Result<Self, WeightsError> {
        Self::load_as(weights, keep, DType::F32)
    }

    /// Loads the tensors of `weights` whose stored name passes `keep` as `dtype`: a tensor
    /// stored in `dtype` is read as it is, into its one buffer, so a bf16 file held in bf16
    /// costs its size once.
    pub fn load_as(
        weights: &Weights,
        keep: impl Fn(&str) -> bool,
        dtype: DType,
    ) -> Result<Self, WeightsError> {
        let mut tensors = HashMap::new();
        for file in weights.files() {
            // One file at a time, one tensor at a time: nothing is held twice.
            let files = TensorFiles::open(std::slice::from_ref(file))?;
            let mut names: Vec<&str> = files.names().filter(|n| keep(n)).collect();
            names.sort_unstable();
            for name in names {
                let t = files
                    .read(name, &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .map_err(|e| WeightsError::Tensor {
                        path: file.clone(),
                        name: name.to_string(),
                        reason: e.to_string(),
                    })?;
                tensors.insert(name.to_string(), t);
            }
        }
        Ok(Self {
            tensors: Arc::new(tensors),
            rename: weights.rename().cloned(),
            names: Default::default(),
            dtype,
        })
    }

    /// A store over f32 tensors already under the model's names (a layout mapped by hand:
    /// fused tensors split, transposed ones turned).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors: Arc::new(tensors),
            rename: None,
            names: Default::default(),
            dtype: DType::F32,
        }
    }

    /// The dtype of the tensors, and of the models built from them.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The stored name of a model parameter.
    pub fn stored_name(&self, name: &str) -> String {
        match &self.rename {
            Some(r) => r(name),
            None => name.to_owned(),
        }
    }

    /// A tensor by stored name.
    pub fn get(&self, stored: &str) -> Option<&Tensor> {
        self.tensors.get(stored)
    }

    /// The parameter names the model built from this store asked for.
    pub fn names(&self) -> Vec<String> {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A var builder over the tensors (no copies); records the names asked for.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        let map: HashMap<String, Tensor> = (*self.tensors).clone();
        let vb = VarBuilder::from_tensors(map, self.dtype, &Device::Cpu);
        let rename = self.rename.clone();
        let names = self.names.clone();
        vb.rename_f(move |name| {
            names
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name.to_owned());
            match &rename {
                Some(r) => r(name),
                None => name.to_owned(),
            }
        })
    }

    /// The same store with some tensors (by stored name) replaced; the others are shared.
    pub fn with(&self, replaced: HashMap<String, Tensor>) -> Self {
        let mut map = (*self.tensors).clone();
        map.extend(replaced);
        Self {
            tensors: Arc::new(map),
            rename: self.rename.clone(),
            names: Default::default(),
            dtype: self.dtype,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bf16_file_is_held_as_stored_or_widened_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let t = Tensor::new(&[1.5f32, -2.0, 0.25], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &path).unwrap();
        let weights = Weights::file(&path).unwrap();
        let held = Store::load_as(&weights, |_| true, DType::BF16).unwrap();
        assert_eq!(held.dtype(), DType::BF16);
        assert_eq!(held.get("w").map(Tensor::dtype), Some(DType::BF16));
        let vb = held.var_builder();
        assert_eq!(vb.get(3, "w").unwrap().dtype(), DType::BF16);
        let wide = Store::load(&weights, |_| true).unwrap();
        assert_eq!(wide.dtype(), DType::F32);
        let w = wide.get("w").unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w, [1.5, -2.0, 0.25]);
    }
}
