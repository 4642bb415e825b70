//! `dit.load`: a DiT as a `Denoiser`. Its conditioning is one class label per sample, carried
//! as an N×1×1 context (what `dit.class_labels` makes), so the samplers' classifier-free
//! guidance batches the label and the "no class" label like any two conditionings. Learned
//! sigma comes back as `learned_range`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType as CDType;
use latentflow_models::dit::{ClassNames, DiT, DiTConfig};
use latentflow_models::Checked;
use latentflow_plugin_api::sdk::candle::{
    compute_device, compute_dtype, dtype_param, from_candle, to_candle_f32,
};
use latentflow_plugin_api::sdk::denoiser::{
    denoiser_handle, Call, DenoiseOutput, DenoiseRequest, Denoised, DenoiserImpl, DenoiserInfo,
    PredictionKind,
};
use latentflow_plugin_api::sdk::prelude::*;

use crate::{fail, FAMILY};

struct DiTDenoiser {
    model: Arc<DiT>,
    names: Arc<ClassNames>,
    name: String,
}

impl DiTDenoiser {
    /// The class label of every sample, from the N×1×1 context.
    fn labels(&self, req: &DenoiseRequest, n: usize) -> Result<Vec<u32>, NodeError> {
        let ctx = req
            .cond
            .require_context("a DiT (class labels from dit.class_labels)")?;
        let t = to_candle_f32(ctx)?;
        let dims = t.dims().to_vec();
        if dims.len() != 3 || dims[1] != 1 || dims[2] != 1 {
            return Err(NodeError::invalid(format!(
                "a DiT is conditioned on class labels (N×1×1, from dit.class_labels), got a {dims:?} conditioning"
            )));
        }
        let values = t
            .to_dtype(CDType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(fail)?;
        let labels = values
            .iter()
            .map(|&l| {
                if l >= 0.0 && l.fract() == 0.0 && l <= self.model.null_label() as f64 {
                    Ok(l as u32)
                } else {
                    Err(NodeError::invalid(format!(
                        "class label {l} is not one of this DiT's 0..={}",
                        self.model.null_label()
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        match labels.len() {
            1 => Ok(vec![labels[0]; n]),
            k if k == n => Ok(labels),
            k => Err(NodeError::invalid(format!(
                "{k} class labels for a batch of {n}"
            ))),
        }
    }

    /// `label_ids(labels…)` → `[ids as an N×1×1 tensor, the no-class tensor]`.
    fn label_ids(&self, args: &[Value]) -> Result<Vec<Value>, NodeError> {
        let classes = self.model.config.classes();
        let ids = args
            .iter()
            .map(|a| {
                let s = match a {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => return Err(NodeError::invalid("class labels are names or ids")),
                };
                self.names
                    .resolve(&s, classes)
                    .map(|id| id as f32)
                    .map_err(NodeError::invalid)
            })
            .collect::<Result<Vec<f32>, _>>()?;
        let n = ids.len();
        let null = vec![self.model.null_label() as f32; n];
        Ok(vec![
            Value::Tensor(Tensor::from_vec(ids, &[n, 1, 1])?),
            Value::Tensor(Tensor::from_vec(null, &[n, 1, 1])?),
        ])
    }
}

impl DenoiserImpl for DiTDenoiser {
    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            family: FAMILY.into(),
            prediction: PredictionKind::Epsilon,
            description: format!("DiT {}", self.name),
        }
    }

    fn denoise(&self, _: HostRef, req: DenoiseRequest) -> Denoised {
        let x = to_candle_f32(&req.x)?;
        let n = x.dims().first().copied().unwrap_or(0);
        let labels = self.labels(&req, n)?;
        let out = self
            .model
            .forward(&x, req.timestep, &labels)
            .map_err(|e| NodeError::invalid(e.to_string()))?;
        let c = self.model.config.in_channels;
        let eps = out.narrow(1, 0, c).map_err(fail)?;
        let mut o = DenoiseOutput::new(from_candle(&eps)?, PredictionKind::Epsilon);
        if self.model.config.learns_sigma() {
            o.learned_range = Some(from_candle(&out.narrow(1, c, c).map_err(fail)?)?);
        }
        Ok(o)
    }

    fn call_extra(&self, _: HostRef, call: Call) -> Option<Reply> {
        match call.method {
            "label_ids" => Some(self.label_ids(call.args)),
            _ => None,
        }
    }
}

fn load(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let model = DiT::load(&path, compute_dtype(p)?, &device).map_err(fail)?;
    // Names live in the pipeline folder's model_index.json.
    let names = if path.join("model_index.json").is_file() {
        ClassNames::read(&path).map_err(fail)?
    } else {
        path.parent()
            .map(ClassNames::read)
            .transpose()
            .map_err(fail)?
            .unwrap_or_default()
    };
    let d = DiTDenoiser {
        model: Arc::new(model),
        names: Arc::new(names),
        name: path.display().to_string(),
    };
    Ok(vec![Value::Object(denoiser_handle(d))])
}

fn check(p: &Params) -> Result<Vec<PortType>, NodeError> {
    let dir = DiT::folder(Path::new(p.str("path")?)).map_err(fail)?;
    DiTConfig::from_file(&dir.join("config.json")).map_err(fail)?;
    Ok(vec![PortType::handle_of("Denoiser", Family::named(FAMILY))])
}

/// The node.
pub fn node() -> NodeDef {
    NodeDef::new("dit.load", load).param(Param::device())
        .doc("Loads a DiT (diffusers' DiTTransformer2DModel, or Transformer2DModel with norm_type ada_norm_zero): a DiTPipeline folder (transformer/, vae/, scheduler/; class names from model_index.json's id2label) or a transformer folder. A Denoiser of family dit: class-conditional through dit.class_labels, any latent size that splits into patches (positions recomputed for the grid), learned sigma returned as the learned-range variance. Sample with linear betas 0.0001 → 0.02 (DiT's). Load the VAE with sd.load_vae on the same folder. The config is checked before anything runs.")
        .param(Param::path("path").doc("DiTPipeline folder, or a transformer folder"))
        .param(dtype_param())
        .output("model", PortType::handle_of("Denoiser", Family::named(FAMILY)), "the DiT, as a denoiser")
        .infer(check)
}
