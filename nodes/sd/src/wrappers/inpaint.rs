//! Inpainting models (9 input channels: latent, mask, masked-image latent), as a denoiser that
//! wraps any other denoiser and appends the two extra inputs, as diffusers'
//! `StableDiffusionInpaintPipeline` does.

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::denoiser::{
    wrapper_node, DenoiseRequest, Denoised, DenoiserClient, WrapperImpl,
};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::hooks::latent_mask;

use crate::convert::fail;

/// A denoiser whose input is extended with `[mask, masked-image latent]`.
pub struct InpaintDenoiser {
    /// 1×(1+C)×h×w: the latent-resolution mask, then the masked image's latent.
    extra: CTensor,
}

impl WrapperImpl for InpaintDenoiser {
    fn rewrapped(&self) -> Self {
        InpaintDenoiser {
            extra: self.extra.clone(),
        }
    }

    fn name(&self) -> String {
        "inpainting input".into()
    }

    fn denoise(&self, inner: &DenoiserClient, host: HostRef, mut req: DenoiseRequest) -> Denoised {
        let xs = to_candle(&req.x, &Device::Cpu)?;
        let b = xs.dim(0).map_err(fail)?;
        let extra = self.extra.repeat((b, 1, 1, 1)).map_err(fail)?;
        let full = CTensor::cat(&[&xs, &extra], 1).map_err(fail)?;
        req.x = from_candle(&full)?;
        inner.denoise(host, req)
    }
}

/// The mask, binarized at 0.5 and sampled (nearest) to `h`×`w`, as a 1×1×h×w tensor.
fn mask_at(mask: &Tensor, h: usize, w: usize) -> Result<CTensor, NodeError> {
    latent_mask(&to_candle(mask, &Device::Cpu)?, &[1, 1, h, w])
        .map_err(|e| NodeError::invalid(e.to_string()))
}

/// The node's definition.
pub fn node() -> NodeDef {
    wrapper_node("sd.inpaint_model", "the wrapped denoiser", |ctx, inputs, _| {
        let image = inputs.tensor("image")?;
        let shape = image.shape();
        if shape.len() != 4 || shape[0] != 1 || shape[3] != 3 {
            return Err(NodeError::invalid(format!(
                "image must be 1×H×W×3, got {shape:?}"
            )));
        }
        let pixel_mask = mask_at(inputs.tensor("mask")?, shape[1], shape[2])?
            .flatten_all()
            .and_then(|m| m.to_vec1::<f32>())
            .map_err(fail)?;
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
        let m = mask_at(inputs.tensor("mask")?, lh, lw)?;
        let extra = CTensor::cat(&[&m, &latent], 1).map_err(fail)?;
        Ok(InpaintDenoiser { extra })
    })
    .doc("For inpainting models (UNet with 9 input channels, e.g. sd-v1-5-inpainting): wraps the model so every call gets the latent-resolution mask and the VAE latent of the masked image appended to its input, as diffusers does. Sample from an empty latent with the wrapped model and no sampler mask.")
    .input("vae", PortType::handle("Vae"), "the VAE")
    .input("image", PortType::Image, "1×H×W×3 image")
    .input("mask", PortType::Mask, "1×H×W mask, 1 = repaint (binarized at 0.5)")
}
