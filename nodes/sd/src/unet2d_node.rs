//! `sd.load_unet2d`: diffusers' `UNet2DModel` (DDPM's UNet, and ADM — guided-diffusion's —
//! as diffusers writes it) as a `Denoiser` of family `unet2d`. It denoises images (or latents)
//! without text conditioning, takes class labels from the conditioning's `class_labels`, returns
//! learned-sigma models' variance channels as `learned_range`, and gives gradients (`vjp`), so
//! samplers that optimise the sample (CoPaint) can drive it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType as CDType, Tensor as CTensor};
use latentflow_models::unet2d::{UNet2DConfig, UNet2DModel};
use latentflow_models::Checked;
use latentflow_plugin_api::sdk::candle::{compute_device, from_candle};
use latentflow_plugin_api::sdk::denoiser::{
    denoiser_handle, names, DenoiseOutput, DenoiseRequest, Denoised, DenoiserImpl, DenoiserInfo,
    PredictionKind,
};
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::{f32_tensor, fail};

/// The family name of these denoisers.
pub const FAMILY: &str = "unet2d";

/// A diffusers `UNet2DModel` folder, or a pipeline folder holding one in `unet/`.
fn model_dir(path: &Path) -> Result<PathBuf, NodeError> {
    if path.join("config.json").is_file() {
        Ok(path.to_path_buf())
    } else if path.join("unet/config.json").is_file() {
        Ok(path.join("unet"))
    } else {
        Err(NodeError::invalid(format!(
            "{}: not a UNet2DModel folder (no config.json, nor unet/config.json)",
            path.display()
        )))
    }
}

struct UNet2DDenoiser {
    model: Arc<UNet2DModel>,
    name: String,
}

impl UNet2DDenoiser {
    fn labels(req: &DenoiseRequest) -> Result<Option<Vec<u32>>, NodeError> {
        let Some(v) = req.cond.get(names::CLASS_LABELS) else {
            return Ok(None);
        };
        let t = v
            .as_tensor()
            .ok_or_else(|| NodeError::invalid("class_labels must be a tensor of labels"))?;
        let ls = f32_tensor(t)?
            .to_dtype(CDType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(fail)?;
        ls.iter()
            .map(|&l| {
                if l >= 0.0 && l.fract() == 0.0 && l <= u32::MAX as f64 {
                    Ok(l as u32)
                } else {
                    Err(NodeError::invalid(format!(
                        "class label {l} is not a whole number ≥ 0"
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

impl DenoiserImpl for UNet2DDenoiser {
    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            family: FAMILY.into(),
            prediction: PredictionKind::Epsilon,
            description: format!("UNet2DModel({})", self.name),
        }
    }

    fn denoise(&self, _: HostRef, req: DenoiseRequest) -> Denoised {
        let x = f32_tensor(&req.x)?;
        let labels = Self::labels(&req)?;
        let out = self
            .model
            .forward(&x, req.timestep, labels.as_deref())
            .map_err(fail)?;
        let c = self.model.config.in_channels;
        let eps = out.narrow(1, 0, c).map_err(fail)?;
        let mut o = DenoiseOutput::new(from_candle(&eps)?, PredictionKind::Epsilon);
        if self.model.config.learns_variance() {
            let v = out.narrow(1, c, c).map_err(fail)?;
            o.learned_range = Some(from_candle(&v)?);
        }
        Ok(o)
    }

    fn vjp(
        &self,
        _: HostRef,
        req: DenoiseRequest,
        cotangent: &Tensor,
    ) -> Result<Tensor, NodeError> {
        let x = f32_tensor(&req.x)?;
        let labels = Self::labels(&req)?;
        let cot = f32_tensor(cotangent)?;
        if cot.dims() != x.dims() {
            return Err(NodeError::invalid(format!(
                "vjp: the cotangent {:?} is not the prediction's shape {:?}",
                cot.dims(),
                x.dims()
            )));
        }
        let extra = self.model.config.out_channels - self.model.config.in_channels;
        let full = if extra > 0 {
            let (n, _, h, w) = x.dims4().map_err(fail)?;
            let zeros = CTensor::zeros((n, extra, h, w), CDType::F32, x.device()).map_err(fail)?;
            CTensor::cat(&[&cot, &zeros], 1).map_err(fail)?
        } else {
            cot
        };
        let g = self
            .model
            .vjp(&x, req.timestep, labels.as_deref(), &full)
            .map_err(fail)?;
        from_candle(&g)
    }
}

fn load_unet2d(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    // Where the model computes; this build's models run on the CPU only.
    compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let dir = model_dir(&path)?;
    let model = UNet2DModel::load(&dir).map_err(fail)?;
    let d = UNet2DDenoiser {
        model: Arc::new(model),
        name: path.display().to_string(),
    };
    Ok(vec![Value::Object(denoiser_handle(d))])
}

fn check(p: &Params) -> Result<Vec<PortType>, NodeError> {
    let dir = model_dir(Path::new(p.str("path")?))?;
    UNet2DConfig::from_file(&dir.join("config.json")).map_err(fail)?;
    Ok(vec![PortType::handle_of("Denoiser", Family::named(FAMILY))])
}

/// The node.
pub fn node() -> NodeDef {
    NodeDef::new("sd.load_unet2d", load_unet2d).param(Param::device())
        .doc("Loads a diffusers UNet2DModel (DDPM's UNet; ADM, guided-diffusion's, as diffusers writes it — scale-shift ResNets, resampling ResNets, learned sigma): a folder with config.json, or a pipeline folder with unet/. A Denoiser of family unet2d: no text conditioning, class labels for class-conditional models, the learned-range variance of learn-sigma models, and gradients for samplers.copaint. Weights load in f32; the config is checked before anything runs.")
        .param(Param::path("path").doc("UNet2DModel folder (or a pipeline folder with unet/)"))
        .output("model", PortType::handle_of("Denoiser", Family::named(FAMILY)), "the UNet, as a denoiser")
        .infer(check)
}
