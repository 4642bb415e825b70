//! An out-of-tree denoiser wrapper: guidance rescale (Lin et al. 2024, "Common Diffusion Noise
//! Schedules and Sample Steps are Flawed", §3.4), as diffusers' `guidance_rescale`.
//!
//! It wraps any denoiser of any family. Under classifier-free guidance the sampler combines the
//! two halves of the batch as `u + g·(c − u)`; the wrapper computes that result, rescales it with
//! `latentflow_sampling::guidance::rescale`, and returns a positive half for which the sampler's
//! own combination gives the rescaled prediction. Everything else is forwarded.

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::denoiser::{
    wrapper_node, DenoiseRequest, Denoised, DenoiserClient, WrapperImpl,
};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::guidance::rescale;

fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

struct Rescale {
    phi: f64,
}

impl Rescale {
    /// `[u; c']` with `u + g·(c' − u)` equal to the rescaled `u + g·(c − u)`.
    fn adjust(&self, pred: &CTensor, g: f64) -> candle_core::Result<CTensor> {
        let n = pred.dim(0)? / 2;
        let (u, c) = (pred.narrow(0, 0, n)?, pred.narrow(0, n, n)?);
        let guided = (&u + ((&c - &u)? * g)?)?;
        let target =
            rescale(&guided, &c, self.phi).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let positive = (&u + ((target - &u)? / g)?)?;
        CTensor::cat(&[&u, &positive], 0)
    }
}

impl WrapperImpl for Rescale {
    fn rewrapped(&self) -> Self {
        Rescale { phi: self.phi }
    }

    fn name(&self) -> String {
        format!("guidance rescale {}", self.phi)
    }

    fn denoise(&self, inner: &DenoiserClient, host: HostRef, req: DenoiseRequest) -> Denoised {
        let guidance = req.step.and_then(|s| s.guidance);
        let mut out = inner.denoise(host, req)?;
        if let Some(g) = guidance.filter(|g| *g != 0.0 && self.phi != 0.0) {
            let pred = to_candle(&out.prediction, &Device::Cpu)?;
            out.prediction = from_candle(&self.adjust(&pred, g).map_err(fail)?)?;
        }
        Ok(out)
    }
}

fn cfg_rescale() -> NodeDef {
    wrapper_node("cfg_rescale.wrap", "the wrapped denoiser", |_, _, p| {
        Ok(Rescale {
            phi: p.f64("rescale")?,
        })
    })
    .doc("Guidance rescale (diffusers' guidance_rescale): under classifier-free guidance the guided prediction is rescaled to the spread of the positive one and mixed with it by `rescale`.")
    .param(Param::float("rescale").default(0.7).range(0.0, 1.0).doc("φ: 0 is plain guidance"))
}

latentflow_plugin_api::export_plugin!(
    PluginDef::new("cfg_rescale", env!("CARGO_PKG_VERSION")).node(cfg_rescale())
);
