//! `tpm.load_vq`, `tpm.vq_encode`, `tpm.vq_decode`.

use latentflow_plugin_api::sdk::candle::compute_device;
use std::path::PathBuf;
use std::sync::Arc;

use latentflow_models::vq::{VqConfig, VqModel};
use latentflow_models::Checked;
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::fail;
use crate::objects::VqObject;

fn load_vq(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    // Where the model computes; this build's models run on the CPU only.
    compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let vq = VqModel::load(&path).map_err(fail)?;
    let obj = VqObject {
        vq: Arc::new(vq),
        name: path.display().to_string(),
    };
    Ok(vec![Value::Object(ObjectHandle::new(obj))])
}

fn call(
    ctx: &Ctx,
    inputs: &Inputs,
    method: &str,
    arg: &str,
    n: usize,
) -> Result<Vec<Value>, NodeError> {
    let t = inputs.get(arg)?.clone();
    let out = inputs.object("vq")?.call(ctx.host(), method, vec![t])?;
    if out.len() < n {
        return Err(NodeError::failed(format!(
            "Vq.{method} returned too few values"
        )));
    }
    Ok(out.into_iter().take(n).collect())
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("tpm.load_vq", load_vq).param(Param::device())
            .doc("Loads a diffusers VQModel (VQ-GAN) folder: config.json and its weights. The config is checked before anything runs.")
            .param(Param::path("path").doc("a diffusers VQModel folder"))
            .output("vq", PortType::handle("Vq"), "the VQ model")
            .infer(|p| {
                let path = PathBuf::from(p.str("path")?);
                VqConfig::from_file(&path.join("config.json")).map_err(fail)?;
                Ok(vec![PortType::handle("Vq")])
            }),
        NodeDef::new("tpm.vq_encode", |ctx, inputs, _| call(ctx, inputs, "encode", "image", 2))
            .doc("Image → VQ codes (the nearest codebook entry of each latent vector, N×h×w) and soft codes (log-probabilities N×h×w×K, log_softmax(−√(‖z − e‖²/d)) as Tiramisu's VQ-GAN computes them).")
            .input("vq", PortType::handle("Vq"), "from tpm.load_vq")
            .input("image", PortType::Image, "N×H×W×3 in [0, 1]; sides multiples of the model's downscale")
            .output("codes", PortType::tensor(Some(DType::F32), Dim::Fixed(3)), "N×h×w code indices")
            .output("soft_codes", PortType::tensor(Some(DType::F32), Dim::Fixed(4)), "N×h×w×K log-probabilities"),
        NodeDef::new("tpm.vq_decode", |ctx, inputs, _| call(ctx, inputs, "decode", "codes", 1))
            .doc("VQ codes → image: the codebook vectors of the codes, decoded.")
            .input("vq", PortType::handle("Vq"), "from tpm.load_vq")
            .input("codes", PortType::tensor(Some(DType::F32), Dim::Fixed(3)), "N×h×w code indices")
            .output("image", PortType::Image, "N×H×W×3 in [0, 1]"),
    ]
}
