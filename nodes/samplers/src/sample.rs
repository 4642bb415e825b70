//! `samplers.sample`: the sampling loop of `latentflow-sampling`, driving a denoiser made by any
//! plugin through the typed `Denoiser` protocol, with classifier-free guidance, img2img strength,
//! inpainting by blending and any sampler hooks.
//!
//! Noise: the initial noise and every stochastic step's noise come, in that order, from one
//! ChaCha8 stream seeded with the `seed` parameter (standard normal, row-major), or, when the
//! `noise` input is connected, from that tensor: K draws of the latent's size, consumed in the
//! same order (this replays noise recorded from another implementation exactly).

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::denoiser::{
    Conditioning, DenoiseRequest, DenoiserClient, PredictionKind, Step as ProtocolStep,
};
use latentflow_plugin_api::sdk::hooks::{HookClient, HookPoint as ProtocolPoint, HookStep};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::free_init::{FilterKind, FreeInit};
use latentflow_sampling::hooks::latent_mask;
use latentflow_sampling::hooks::{HookPoint, Replacement};
use latentflow_sampling::{
    guidance, sample as run_loop, InpaintBlend, Model, Noise, Prediction, Run, SampleError,
    Scheduler, Start, Step, StepContext, StepHook,
};

/// The library's hook point for the protocol's.
pub fn point(at: ProtocolPoint) -> HookPoint {
    match at {
        ProtocolPoint::X0 => HookPoint::X0,
        ProtocolPoint::Latent => HookPoint::Latent,
    }
}

/// A library error as a node error (a model's or hook's own error comes back unchanged).
pub fn node_error(e: SampleError) -> NodeError {
    match e {
        SampleError::Model(inner) => match inner.downcast::<NodeError>() {
            Ok(n) => *n,
            Err(other) => NodeError::failed(other.to_string()),
        },
        SampleError::Invalid(m) => NodeError::invalid(m),
        other => NodeError::failed(other.to_string()),
    }
}

pub(crate) fn model_error(e: NodeError) -> SampleError {
    SampleError::Model(Box::new(e))
}

pub(crate) fn candle(t: &Tensor) -> Result<CTensor, NodeError> {
    to_candle(t, &Device::Cpu)?
        .to_dtype(candle_core::DType::F32)
        .map_err(|e| NodeError::failed(e.to_string()))
}

pub(crate) fn prediction(kind: PredictionKind) -> Prediction {
    match kind {
        PredictionKind::Epsilon => Prediction::Epsilon,
        PredictionKind::V => Prediction::V,
        PredictionKind::Sample => Prediction::Sample,
        PredictionKind::Flow => Prediction::Flow,
    }
}

/// The denoiser, as the loop sees it.
pub(crate) struct Driven<'a, 'h> {
    pub(crate) ctx: &'a Ctx<'h>,
    pub(crate) client: DenoiserClient<'a>,
    pub(crate) cond: Conditioning,
    pub(crate) kind: Prediction,
}

impl Model for Driven<'_, '_> {
    fn predict(
        &mut self,
        x: &CTensor,
        t: f64,
        step: Step,
    ) -> Result<(CTensor, Prediction), SampleError> {
        let mut req =
            DenoiseRequest::new(from_candle(x).map_err(model_error)?, t, self.cond.clone());
        req.step = Some(ProtocolStep {
            index: step.index,
            total: step.total,
            guidance: step.guidance,
        });
        let out = self
            .client
            .denoise(self.ctx.host(), req)
            .map_err(model_error)?;
        Ok((candle(&out.prediction).map_err(model_error)?, self.kind))
    }

    fn progress(&mut self, done: usize, total: usize) -> Result<(), SampleError> {
        self.ctx
            .progress(done as u64, total as u64, "sampling")
            .map_err(model_error)
    }
}

/// A hook from another plugin, as the loop sees it.
pub(crate) struct Remote<'a, 'h> {
    ctx: &'a Ctx<'h>,
    client: HookClient<'a>,
}

/// The `hooks` input's handles.
pub(crate) fn hook_handles(inputs: &Inputs) -> Result<Vec<ObjectHandle>, NodeError> {
    inputs
        .list("hooks")?
        .iter()
        .map(|v| {
            v.as_object()
                .cloned()
                .ok_or_else(|| NodeError::invalid("hooks must be SamplerHook handles"))
        })
        .collect()
}

/// Sampler hooks behind `handles`, as the loop sees them.
pub(crate) fn remotes<'a, 'h>(
    ctx: &'a Ctx<'h>,
    handles: &'a [ObjectHandle],
) -> Result<Vec<Remote<'a, 'h>>, NodeError> {
    handles
        .iter()
        .map(|h| {
            Ok(Remote {
                ctx,
                client: HookClient::new(ctx.host(), h)?,
            })
        })
        .collect()
}

impl Remote<'_, '_> {
    fn step(ctx: &StepContext) -> Result<HookStep, SampleError> {
        Ok(HookStep {
            index: ctx.index,
            total: ctx.total,
            timestep: ctx.timestep,
            next_level: ctx.next_level,
            initial_noise: from_candle(ctx.initial_noise).map_err(model_error)?,
            variance: ctx
                .variance
                .map(from_candle)
                .transpose()
                .map_err(model_error)?,
            position: ctx.position,
        })
    }

    fn back(t: Option<Tensor>) -> Result<Option<CTensor>, SampleError> {
        t.map(|t| candle(&t)).transpose().map_err(model_error)
    }
}

impl StepHook for Remote<'_, '_> {
    fn wants_x0(&self) -> bool {
        self.client.wants_x0()
    }

    fn see(&mut self, at: HookPoint, ctx: &StepContext, t: &CTensor) -> Replacement {
        let t = from_candle(t).map_err(model_error)?;
        let at = match at {
            HookPoint::X0 => ProtocolPoint::X0,
            HookPoint::Latent => ProtocolPoint::Latent,
        };
        let out = self
            .client
            .see(self.ctx.host(), at, &Self::step(ctx)?, &t)
            .map_err(model_error)?;
        Self::back(out)
    }
}

/// Positive and negative conditioning as one context for the batch (`[negative; positive]`
/// under guidance), with its token mask when either side has one: masked conditionings (T5 or
/// LLM features) of different lengths are padded with zeros, unmasked ones (CLIP windows)
/// repeated to a common length.
fn context(
    inputs: &Inputs,
    n: usize,
    guided: bool,
) -> Result<(CTensor, Option<CTensor>, bool), NodeError> {
    let fail = |e: candle_core::Error| NodeError::failed(e.to_string());
    let batched = |name: &str, what: &str| -> Result<Option<CTensor>, NodeError> {
        inputs
            .opt_tensor(name)?
            .map(|t| guidance::batch_to(&candle(t)?, n, what).map_err(node_error))
            .transpose()
    };
    let positive = guidance::batch_to(
        &candle(inputs.tensor("positive")?)?,
        n,
        "positive conditioning",
    )
    .map_err(node_error)?;
    let pos_mask = batched("positive_mask", "positive mask")?;
    let negative = batched("negative", "negative conditioning")?;
    let neg_mask = batched("negative_mask", "negative mask")?;
    match negative {
        Some(neg) if guided => {
            if pos_mask.is_some() || neg_mask.is_some() {
                let ((neg, nm), (pos, pm)) =
                    guidance::pad_masked((&neg, neg_mask.as_ref()), (&positive, pos_mask.as_ref()))
                        .map_err(node_error)?;
                let both = CTensor::cat(&[&neg, &pos], 0).map_err(fail)?;
                let mask = CTensor::cat(&[&nm, &pm], 0).map_err(fail)?;
                return Ok((both, Some(mask), true));
            }
            let (neg, pos) = guidance::match_tokens(&neg, &positive).map_err(node_error)?;
            let both = CTensor::cat(&[&neg, &pos], 0).map_err(fail)?;
            Ok((both, None, true))
        }
        _ => Ok((positive, pos_mask, false)),
    }
}

/// The pooled text embeddings (SD3, SDXL): the positive's, or `[negative; positive]` under
/// guidance; both are needed then.
fn pooled(inputs: &Inputs, n: usize, guided: bool) -> Result<Option<CTensor>, NodeError> {
    let fail = |e: candle_core::Error| NodeError::failed(e.to_string());
    let get = |name: &str, what: &str| -> Result<Option<CTensor>, NodeError> {
        if !inputs.is_connected(name) {
            return Ok(None);
        }
        inputs
            .opt_tensor(name)?
            .map(|t| guidance::batch_to(&candle(t)?, n, what).map_err(node_error))
            .transpose()
    };
    let pos = get("positive_pooled", "positive pooled embedding")?;
    let neg = get("negative_pooled", "negative pooled embedding")?;
    match (pos, neg, guided) {
        (None, None, _) => Ok(None),
        (Some(p), Some(q), true) => {
            if p.dims() != q.dims() {
                return Err(NodeError::invalid(format!(
                    "the pooled embeddings differ: positive {:?}, negative {:?}",
                    p.dims(),
                    q.dims()
                )));
            }
            Ok(Some(CTensor::cat(&[&q, &p], 0).map_err(fail)?))
        }
        (Some(p), _, false) => Ok(Some(p)),
        (Some(_), None, true) => Err(NodeError::invalid(
            "guidance needs the negative's pooled embedding too: connect negative_pooled",
        )),
        (None, Some(_), _) => Err(NodeError::invalid(
            "negative_pooled is connected but positive_pooled is not",
        )),
    }
}

/// `steps×shape` tensor of the recorded states (empty when not recording).
fn stacked(states: &[CTensor], shape: &[usize]) -> Result<Tensor, NodeError> {
    let fail = |e: candle_core::Error| NodeError::failed(e.to_string());
    let t = if states.is_empty() {
        let mut s = vec![0];
        s.extend_from_slice(shape);
        CTensor::zeros(s, candle_core::DType::F32, &Device::Cpu).map_err(fail)?
    } else {
        CTensor::stack(states, 0).map_err(fail)?
    };
    from_candle(&t)
}

fn sample(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let client = DenoiserClient::new(inputs.object("model")?)?;
    let latent = inputs.tensor("latent")?;
    let shape = latent.shape();
    if shape.len() < 3 {
        return Err(NodeError::invalid(format!(
            "latent must be N×C×… (at least 3 dimensions), got {shape:?}"
        )));
    }
    let n = shape[0];
    let numel: usize = shape.iter().product();

    let mut cfg = crate::config_from(p, Some(&shape))?;
    let kind = match p.str("prediction")? {
        "auto" => prediction(client.info(ctx.host())?.prediction),
        other => prediction(PredictionKind::parse(other)?),
    };
    cfg.prediction = kind;
    if kind == Prediction::Flow {
        cfg.flow = Some(crate::flow_from(p, Some(&shape))?);
    }
    let steps = p.usize("steps")?;
    let strength = p.f64("strength")?;
    let run_steps = ((steps as f64 * strength) as usize).min(steps);
    let free = free_init(p)?;
    if free.is_some() && strength < 1.0 {
        return Err(NodeError::invalid(
            "FreeInit re-initialises the noise of text-to-video runs: set strength 1 or free_init_iters 1",
        ));
    }
    let passes = free.map_or(1, |f| f.iterations);
    let recorded: usize = (0..passes)
        .map(|k| free.map_or(run_steps, |f| f.steps(k, steps)))
        .sum();
    let record = p.bool("record_steps")?;
    if record {
        ctx.check_alloc("the recorded steps", &[2, recorded, numel], 4)?;
    }
    if run_steps == 0 {
        let mut empty = vec![0];
        empty.extend_from_slice(&shape);
        return Ok(vec![
            Value::Tensor(latent.clone()),
            Value::Tensor(Tensor::from_vec(Vec::<f32>::new(), &empty)?),
            Value::Tensor(Tensor::from_vec(Vec::<f32>::new(), &empty)?),
        ]);
    }
    let known = candle(latent)?;
    let guidance_scale = p.f64("cfg")?;
    let (context, mask, guided) = context(inputs, n, guidance_scale != 1.0)?;
    let pooled = pooled(inputs, n, guided)?;

    let mut noise = match inputs.opt_tensor("noise")? {
        Some(t) => Noise::recorded(t.to_f32_vec()?, numel).map_err(node_error)?,
        None => Noise::seeded(p.seed("seed")?),
    };
    // The video sampler has no mask input.
    let inpaint = match inputs.is_connected("mask") {
        true => inputs.opt_tensor("mask")?,
        false => None,
    };
    let mut blend = match inpaint {
        Some(m) => {
            let mask = latent_mask(&candle(m)?, &shape).map_err(node_error)?;
            Some(InpaintBlend::new(known.clone(), mask).map_err(node_error)?)
        }
        None => None,
    };
    let handles = hook_handles(inputs)?;
    let mut remotes = remotes(ctx, &handles)?;
    let mut model = Driven {
        ctx,
        client,
        cond: Conditioning {
            context: Some(from_candle(&context)?),
            mask: mask.as_ref().map(from_candle).transpose()?,
            pooled: pooled.as_ref().map(from_candle).transpose()?,
            ..Default::default()
        },
        kind,
    };
    // One pass, or FreeInit's passes: each with a fresh scheduler (a multistep solver's history
    // starts over), the first from the initial noise, the others from its re-initialisation.
    let (mut all_steps, mut all_x0) = (Vec::new(), Vec::new());
    let mut first_x: Option<CTensor> = None;
    let mut last: Option<CTensor> = None;
    for k in 0..passes {
        let pass_steps = free.map_or(steps, |f| f.steps(k, steps));
        let scheduler = Scheduler::new(cfg.clone(), pass_steps)
            .map_err(|e| NodeError::invalid(e.to_string()))?;
        let start = match (free, &first_x, &last) {
            (None, _, _) if strength >= 1.0 => Start::Noise,
            (None, _, _) => Start::Partial {
                latent: known.clone(),
                at: steps - run_steps,
            },
            (Some(_), None, _) => {
                let eps = noise.draw(&shape, &Device::Cpu).map_err(node_error)?;
                let x = eps
                    .affine(scheduler.init_noise_sigma(), 0.0)
                    .map_err(|e| NodeError::failed(e.to_string()))?;
                first_x = Some(x.clone());
                Start::Given(x)
            }
            (Some(f), Some(initial), Some(z0)) => {
                let fresh = noise.draw(&shape, &Device::Cpu).map_err(node_error)?;
                let table = &cfg.table;
                let ab = table.alpha_bar(table.len() as i64 - 1);
                ctx.info(&format!(
                    "FreeInit pass {} of {passes}: {pass_steps} steps",
                    k + 1
                ));
                Start::Given(f.reinit(z0, initial, &fresh, ab).map_err(node_error)?)
            }
            (Some(_), Some(_), None) => {
                return Err(NodeError::failed("FreeInit: a pass gave no result"));
            }
        };
        let mut hooks: Vec<&mut dyn StepHook> = Vec::new();
        if let Some(b) = blend.as_mut() {
            hooks.push(b);
        }
        for r in remotes.iter_mut() {
            hooks.push(r);
        }
        let run = Run {
            scheduler,
            shape: shape.clone(),
            start,
            guidance: guided.then_some(guidance_scale),
            hooks,
            record,
        };
        let out = run_loop(run, &mut model, &mut noise).map_err(node_error)?;
        all_steps.extend(out.steps);
        all_x0.extend(out.x0);
        last = Some(out.latent);
    }
    let latent = last.ok_or_else(|| NodeError::failed("the sampler ran no pass"))?;
    Ok(vec![
        Value::Tensor(from_candle(&latent)?),
        Value::Tensor(stacked(&all_steps, &shape)?),
        Value::Tensor(stacked(&all_x0, &shape)?),
    ])
}

/// FreeInit's settings, when the node has them and asks for more than one pass.
fn free_init(p: &Params) -> Result<Option<FreeInit>, NodeError> {
    if !p.has("free_init_iters") || p.usize("free_init_iters")? <= 1 {
        return Ok(None);
    }
    Ok(Some(FreeInit {
        iterations: p.usize("free_init_iters")?,
        kind: FilterKind::parse(p.str("free_init_method")?, p.f64("free_init_order")?)
            .map_err(node_error)?,
        d_s: p.f64("free_init_d_s")?,
        d_t: p.f64("free_init_d_t")?,
        fast: p.bool("free_init_fast")?,
    }))
}

/// The inputs, outputs and parameters both sampling nodes share; `latent` is the latent
/// port type, `steps` the rank of the recorded steps.
fn common(d: NodeDef, latent: fn(Dim) -> PortType, what: &str, steps: i64) -> NodeDef {
    let f = || Family::var("F");
    crate::schedule_params(
        d.input("model", PortType::handle_of("Denoiser", f()), "the denoiser")
            .input("positive", PortType::conditioning_of(Dim::var("D"), f()), "conditioning")
            .optional_input("negative", PortType::conditioning_of(Dim::var("D"), f()), "unconditional / negative conditioning (enables CFG)")
            .optional_input("positive_mask", PortType::tensor(Some(DType::F32), Dim::Fixed(2)), "token mask of the positive conditioning (N×L, 1 = token), as T5 and LLM encoders give it: masked conditionings of different lengths are padded with zeros instead of repeated, and the model sees the mask")
            .optional_input("negative_mask", PortType::tensor(Some(DType::F32), Dim::Fixed(2)), "token mask of the negative conditioning")
            .optional_input("positive_pooled", PortType::tensor(Some(DType::F32), Dim::Fixed(2)), "pooled text embedding of the positive (SD3: dit.sd3_encode's pooled), N×P")
            .optional_input("negative_pooled", PortType::tensor(Some(DType::F32), Dim::Fixed(2)), "pooled text embedding of the negative; needed with guidance when positive_pooled is given")
            .input("latent", latent(Dim::var("C")), &format!("start {what} (an empty one for text-to-{what})"))
            .optional_input("noise", PortType::tensor(Some(DType::F32), Dim::Any), "recorded noise to replay instead of the seeded stream: the initial draw, then each stochastic step's")
            .optional_input("hooks", PortType::list(PortType::handle("SamplerHook")), "per-step hooks, applied in order after the inpainting blend")
            .output("latent", latent(Dim::var("C")), &format!("the denoised {what}"))
            .output("steps", PortType::tensor(Some(DType::F32), Dim::Fixed(steps)), "the latent after every step (steps×latent shape) when record_steps is on; empty otherwise")
            .output("x0", PortType::tensor(Some(DType::F32), Dim::Fixed(steps)), "the model's predicted clean latent x̂0 at every step when record_steps is on; empty otherwise")
            .param(Param::bool("record_steps").default(false).doc("keep the latent and the predicted x̂0 of every step (the `steps` and `x0` outputs)"))
            .param(Param::float("cfg").default(7.5).range(0.0, 100.0).doc("classifier-free guidance scale"))
            .param(Param::seed("seed").default(0).doc("noise seed, or `random`"))
            .param(Param::float("strength").default(1.0).range(0.0, 1.0).doc("img2img: fraction of the schedule to run"))
            .param(Param::choice("prediction", &["auto", "epsilon", "v_prediction", "sample", "flow_prediction"]).default("auto").doc("auto: ask the model")),
    )
}

/// The sampling node.
pub fn node() -> NodeDef {
    common(
        NodeDef::new("samplers.sample", sample)
            .doc("Denoises a latent with any Denoiser: txt2img (strength 1: starts from pure noise), img2img (strength < 1: noises the input latent part-way), inpainting (mask: 1 = repaint; the rest is blended back every step). Classifier-free guidance when a negative conditioning is given and cfg ≠ 1. Sampler hooks (`hooks`) see and may replace x̂0 and the latent at every step. Noise: one ChaCha8 stream from `seed`, or replayed from the `noise` input.")
            .optional_input("mask", PortType::Mask, "inpainting mask, 1 = repaint (any resolution; binarized at 0.5)"),
        PortType::latent,
        "latent",
        5,
    )
}

/// The video sampling node: the same loop over a video latent, for a video denoiser
/// (`sd.animatediff`).
pub fn video_node() -> NodeDef {
    common(
        NodeDef::new("samplers.sample_video", sample)
            .doc("Denoises a video latent (N×C×F×H×W) with a video denoiser (an SD model with motion modules from sd.animatediff): text-to-video from noise, or video-to-video (strength < 1). Classifier-free guidance, hooks and noise as samplers.sample. AnimateDiff's motion modules were trained on linear betas: set beta_schedule linear (graphs/animatediff.yaml does). FreeInit (free_init_iters > 1, diffusers' enable_free_init): after each pass the result is re-noised to the last training timestep with the first pass's noise, its low spatio-temporal frequencies kept and the high ones drawn afresh, and sampled again with a fresh scheduler; coarse-to-fine (free_init_fast) gives pass k of n ⌊steps·(k+1)/n⌋ steps. The recorded steps are every pass's, in order.")
            .param(Param::int("free_init_iters").default(1).range(1.0, 16.0).doc("FreeInit sampling passes; 1: off (diffusers' default when enabled: 3)"))
            .param(Param::choice("free_init_method", &["butterworth", "gaussian", "ideal", "box"]).default("butterworth").doc("FreeInit's low-pass filter"))
            .param(Param::float("free_init_order").default(4.0).range(0.0, 100.0).doc("Butterworth order"))
            .param(Param::float("free_init_d_s").default(0.25).range(0.0, 1.0).doc("spatial stop frequency"))
            .param(Param::float("free_init_d_t").default(0.25).range(0.0, 1.0).doc("temporal stop frequency"))
            .param(Param::bool("free_init_fast").default(false).doc("coarse-to-fine: fewer steps in the early passes")),
        PortType::video_latent,
        "video latent",
        6,
    )
}
