//! `samplers.inpaint_blend`: the inpainting blend as a sampler hook, for graphs that combine it
//! with other hooks or pass it around; `samplers.sample`'s `mask` input runs the same code.

use std::sync::Mutex;

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::hooks::{
    hook_handle, HookPoint, HookStep, Replacement, SamplerHookImpl,
};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::hooks::latent_mask;
use latentflow_sampling::{InpaintBlend, StepContext, StepHook};

use crate::sample::{node_error, point};

fn candle(t: &Tensor) -> Result<CTensor, NodeError> {
    to_candle(t, &Device::Cpu)?
        .to_dtype(candle_core::DType::F32)
        .map_err(|e| NodeError::failed(e.to_string()))
}

struct Blend(Mutex<InpaintBlend>);

impl SamplerHookImpl for Blend {
    fn see(&self, _: HostRef, at: HookPoint, step: &HookStep, x: &Tensor) -> Replacement {
        let noise = candle(&step.initial_noise)?;
        let variance = step.variance.as_ref().map(candle).transpose()?;
        let ctx = StepContext {
            index: step.index,
            total: step.total,
            timestep: step.timestep,
            next_level: step.next_level,
            initial_noise: &noise,
            variance: variance.as_ref(),
            position: step.position,
        };
        let mut blend = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let out = blend
            .see(point(at), &ctx, &candle(x)?)
            .map_err(node_error)?;
        out.map(|t| from_candle(&t)).transpose()
    }

    fn describe(&self) -> String {
        "SamplerHook(inpaint blend)".into()
    }
}

fn inpaint_blend(_: &Ctx, inputs: &Inputs, _: &Params) -> Result<Vec<Value>, NodeError> {
    let known = candle(inputs.tensor("latent")?)?;
    let mask = latent_mask(&candle(inputs.tensor("mask")?)?, known.dims()).map_err(node_error)?;
    let blend = InpaintBlend::new(known, mask).map_err(node_error)?;
    Ok(vec![Value::Object(hook_handle(Blend(Mutex::new(blend))))])
}

/// The hook nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![NodeDef::new("samplers.inpaint_blend", inpaint_blend)
        .doc("The inpainting blend as a sampler hook: after every step the known region of `latent` (mask 0) is put back, noised to the step's level (after the last step: the latent itself). Give it to samplers.sample's `hooks` with the same `latent` as its start latent; equivalent to the sampler's `mask` input.")
        .input("latent", PortType::latent(Dim::Any), "the known latent (the sampler's start latent)")
        .input("mask", PortType::Mask, "1 = repaint (any resolution; binarized at 0.5)")
        .output("hook", PortType::handle("SamplerHook"), "the hook")]
}
