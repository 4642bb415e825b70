//! Inpainting models (9 input channels: latent, mask, masked-image latent), as a denoiser that
//! wraps any other denoiser and appends the two extra inputs, as diffusers'
//! `StableDiffusionInpaintPipeline` does.

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::denoiser::{
    wrapper_handle, DenoiseOutput, DenoiseRequest, DenoiserClient, WrapperImpl,
};
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::fail;

/// A denoiser whose input is extended with `[mask, masked-image latent]`.
pub struct InpaintDenoiser {
    inner: ObjectHandle,
    /// 1×(1+C)×h×w: the latent-resolution mask, then the masked image's latent.
    extra: CTensor,
}

impl WrapperImpl for InpaintDenoiser {
    fn inner(&self) -> &ObjectHandle {
        &self.inner
    }

    fn with_inner(&self, inner: ObjectHandle) -> Self {
        InpaintDenoiser {
            inner,
            extra: self.extra.clone(),
        }
    }

    fn name(&self) -> String {
        "inpainting input".into()
    }

    fn denoise(
        &self,
        host: HostRef<'_>,
        mut req: DenoiseRequest,
    ) -> Result<DenoiseOutput, NodeError> {
        let xs = to_candle(&req.x, &Device::Cpu)?;
        let b = xs.dim(0).map_err(fail)?;
        let extra = self.extra.repeat((b, 1, 1, 1)).map_err(fail)?;
        let full = CTensor::cat(&[&xs, &extra], 1).map_err(fail)?;
        req.x = from_candle(&full)?;
        DenoiserClient::new(&self.inner)?.denoise(host, req)
    }
}

/// The pixel-space mask, binarized at 0.5 (1 = repaint), resampled (nearest) to `h`×`w`.
fn mask_at(mask: &Tensor, h: usize, w: usize) -> Result<Vec<f32>, NodeError> {
    let ms = mask.shape();
    if ms.len() != 3 || ms[0] != 1 {
        return Err(NodeError::invalid(format!(
            "mask must be 1×H×W, got {ms:?}"
        )));
    }
    let (mh, mw) = (ms[1], ms[2]);
    let m = mask.to_f32_vec()?;
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            let v = m[(y * mh / h) * mw + x * mw / w];
            out.push(if v >= 0.5 { 1.0 } else { 0.0 });
        }
    }
    Ok(out)
}

/// `sd.inpaint_model`: wraps `model` with the mask and the VAE latent of the masked image.
pub fn inpaint_model(ctx: &Ctx, inputs: &Inputs, _: &Params) -> Result<Vec<Value>, NodeError> {
    let model = inputs.object("model")?.clone();
    DenoiserClient::new(&model)?;
    let image = inputs.tensor("image")?;
    let shape = image.shape();
    if shape.len() != 4 || shape[0] != 1 || shape[3] != 3 {
        return Err(NodeError::invalid(format!(
            "image must be 1×H×W×3, got {shape:?}"
        )));
    }
    let (h, w) = (shape[1], shape[2]);
    let pixel_mask = mask_at(inputs.tensor("mask")?, h, w)?;
    // The repainted region becomes mid-gray (0 in the VAE's [-1, 1] range).
    let mut px = image.to_f32_vec()?;
    for (i, v) in px.iter_mut().enumerate() {
        if pixel_mask[i / 3] >= 0.5 {
            *v = 0.5;
        }
    }
    let masked = Tensor::from_vec(px, &shape)?;
    let encoded = inputs
        .object("vae")?
        .call(ctx.host(), "encode", vec![Value::Tensor(masked)])?
        .into_iter()
        .next()
        .and_then(|v| v.as_tensor().cloned())
        .ok_or_else(|| NodeError::failed("Vae.encode returned no tensor"))?;
    let latent = to_candle(&encoded, &Device::Cpu)?;
    let (_, _, lh, lw) = latent.dims4().map_err(fail)?;
    let m = CTensor::from_vec(
        mask_at(inputs.tensor("mask")?, lh, lw)?,
        (1, 1, lh, lw),
        &Device::Cpu,
    )
    .map_err(fail)?;
    let extra = CTensor::cat(&[&m, &latent], 1).map_err(fail)?;
    Ok(vec![Value::Object(wrapper_handle(
        ctx.host(),
        InpaintDenoiser {
            inner: model,
            extra,
        },
    )?)])
}

/// The node's definition.
pub fn node() -> NodeDef {
    let f = || Family::var("F");
    NodeDef::new("sd.inpaint_model", inpaint_model)
        .doc("For inpainting models (UNet with 9 input channels, e.g. sd-v1-5-inpainting): wraps the model so every call gets the latent-resolution mask and the VAE latent of the masked image appended to its input, as diffusers does. Sample from an empty latent with the wrapped model and no sampler mask.")
        .input("model", PortType::handle_of("Denoiser", f()), "a 9-channel inpainting denoiser")
        .input("vae", PortType::handle("Vae"), "the VAE")
        .input("image", PortType::Image, "1×H×W×3 image")
        .input("mask", PortType::Mask, "1×H×W mask, 1 = repaint (binarized at 0.5)")
        .output("model", PortType::handle_of("Denoiser", f()), "the wrapped denoiser")
}
