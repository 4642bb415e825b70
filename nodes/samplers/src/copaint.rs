//! `samplers.copaint`: CoPaint inpainting (`latentflow_sampling::copaint`) with any denoiser
//! that gives gradients (`vjp`), over guided-diffusion's respaced schedule, with sampler hooks
//! (Tiramisu's steering among them) that see the model's variance. Images in and out, in pixel
//! space, as ADM models work.

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::from_candle;
use latentflow_plugin_api::sdk::denoiser::{names, Conditioning, DenoiseRequest, DenoiserClient};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::copaint::{
    copaint as run_copaint, repeat_draws, resample_by_fit, CoPaintConfig, CoPaintRun, GradModel,
};
use latentflow_sampling::hooks::latent_mask;
use latentflow_sampling::respace::{named_betas, space_timesteps, SpacedDiffusion};
use latentflow_sampling::{Noise, SampleError, StepHook};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::sample::{candle, hook_handles, model_error, node_error, remotes};

fn fail(e: candle_core::Error) -> NodeError {
    NodeError::failed(e.to_string())
}

/// The denoiser, with its learned-range channels appended to the prediction.
struct Driven<'a, 'h> {
    ctx: &'a Ctx<'h>,
    client: DenoiserClient<'a>,
    cond: Conditioning,
}

impl Driven<'_, '_> {
    fn request(&self, x: &CTensor, t: f64) -> Result<DenoiseRequest, SampleError> {
        Ok(DenoiseRequest::new(
            from_candle(x).map_err(model_error)?,
            t,
            self.cond.clone(),
        ))
    }
}

impl GradModel for Driven<'_, '_> {
    fn output(&mut self, x: &CTensor, t: f64) -> Result<CTensor, SampleError> {
        let out = self
            .client
            .denoise(self.ctx.host(), self.request(x, t)?)
            .map_err(model_error)?;
        let eps = candle(&out.prediction).map_err(model_error)?;
        if eps.dims() != x.dims() {
            return Err(SampleError::Invalid(format!(
                "the denoiser returned {:?} for an input of {:?}",
                eps.dims(),
                x.dims()
            )));
        }
        match &out.learned_range {
            Some(v) => Ok(CTensor::cat(&[&eps, &candle(v).map_err(model_error)?], 1)?),
            None => Ok(eps),
        }
    }

    /// CoPaint's cotangent is zero on the variance channels, so the model's `vjp` of its
    /// prediction is the whole product.
    fn vjp(&mut self, x: &CTensor, t: f64, cotangent: &CTensor) -> Result<CTensor, SampleError> {
        let c = x.dim(1)?;
        let cot = from_candle(&cotangent.narrow(1, 0, c)?.contiguous()?).map_err(model_error)?;
        let g = self
            .client
            .vjp(self.ctx.host(), self.request(x, t)?, &cot)
            .map_err(model_error)?;
        candle(&g).map_err(model_error)
    }

    fn progress(&mut self, done: usize, total: usize) -> Result<(), SampleError> {
        self.ctx
            .progress(done as u64, total as u64, "CoPaint")
            .map_err(model_error)
    }
}

fn copaint(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let client = DenoiserClient::new(inputs.object("model")?)?;
    let image = candle(inputs.tensor("image")?)?;
    let (images, h, w, c) = image.dims4().map_err(fail)?;
    // Each image is drawn `samples` times (one batch), and `keep_samples` of its draws kept.
    let per = p.usize("samples")?;
    let n = images * per;
    ctx.check_alloc("the CoPaint state", &[8, n, c, h, w], 4)?;
    let image = repeat_draws(&image, per).map_err(node_error)?;
    // Images are N×H×W×C in [0, 1]; the model works on N×C×H×W in [−1, 1].
    let known = image
        .permute((0, 3, 1, 2))
        .and_then(|t| t.affine(2.0, -1.0))
        .and_then(|t| t.contiguous())
        .map_err(fail)?;
    let mask = candle(inputs.tensor("mask")?)?;
    let mask = match mask.dims().first() {
        Some(&b) if b == images && per > 1 => repeat_draws(&mask, per).map_err(node_error)?,
        _ => mask,
    };
    let repaint = latent_mask(&mask, &[n, c, h, w]).map_err(node_error)?;
    let keep = repaint.affine(-1.0, 1.0).map_err(fail)?;
    let base = named_betas(p.str("beta_schedule")?, p.usize("train_steps")?).map_err(node_error)?;
    let keep_steps = space_timesteps(base.len(), p.str("respacing")?).map_err(node_error)?;
    let diffusion = SpacedDiffusion::new(&base, &keep_steps).map_err(node_error)?;
    let steps = match p.usize("steps")? {
        0 => diffusion.len(),
        s => s,
    };
    let config = CoPaintConfig {
        steps,
        iterations: p.usize("iterations")?,
        lr: p.f64("lr")?,
        lr_decay: p.f64("lr_decay")?,
        smart_lr_decay: p.bool("smart_lr_decay")?,
        adaptive_lr: p.bool("adaptive_lr")?,
        reg: p.f64("reg")?,
        reg_decay: p.f64("reg_decay")?,
        eta: p.f64("eta")?,
        ..CoPaintConfig::default()
    };
    let mut cond = Conditioning::default();
    let label = p.int("class_label")?;
    if label >= 0 {
        let labels = Tensor::from_vec(vec![label as f32; n], &[n])?;
        cond.set(names::CLASS_LABELS, Value::Tensor(labels));
    }
    let mut model = Driven { ctx, client, cond };
    let seed = p.seed("seed")?;
    let mut noise = Noise::seeded(seed);
    let x_t = noise
        .draw(&[n, c, h, w], &Device::Cpu)
        .map_err(node_error)?;
    let handles = hook_handles(inputs)?;
    let mut hooks = remotes(ctx, &handles)?;
    let run = CoPaintRun {
        diffusion: &diffusion,
        config,
        known: known.clone(),
        keep: keep.clone(),
        hooks: hooks.iter_mut().map(|h| h as &mut dyn StepHook).collect(),
        record: false,
    };
    let out = run_copaint(run, &mut model, &x_t, &mut noise).map_err(node_error)?;
    let mut result = out.image;
    if p.bool("paste_known")? {
        result = ((result * &repaint).and_then(|r| r + (&known * &keep)?)).map_err(fail)?;
    }
    let kept = p.usize("keep_samples")?;
    if kept > 0 {
        result = keep_best(
            &result,
            &known,
            &keep,
            per,
            kept,
            p.f64("resample_temperature")?,
            seed,
        )?;
    }
    let pixels = ((result + 1.0).and_then(|t| t / 2.0))
        .and_then(|t| t.clamp(0f32, 1f32))
        .and_then(|t| t.permute((0, 2, 3, 1)))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.to_dtype(CDType::F32))
        .map_err(fail)?;
    let losses = out.losses.iter().map(|&l| l as f32).collect::<Vec<_>>();
    let nl = losses.len();
    Ok(vec![
        Value::Tensor(from_candle(&pixels)?),
        Value::Tensor(Tensor::from_vec(losses, &[nl])?),
    ])
}

/// The node.
pub fn node() -> NodeDef {
    NodeDef::new("samplers.copaint", copaint)
        .doc("CoPaint inpainting (Zhang et al.) as the Tiramisu authors run it: before each DDIM step, gradient steps on x_t against the known region (‖m⊙(x0 − x̂0(x_t))‖² + λ‖x_t − x_t^orig‖², a rate that follows the noise level and backs off by 0.8 until the loss does not grow), then the step with the model's own noise estimate. Needs a denoiser that gives gradients (sd.load_unet2d's; wrappers give none) and works on images: pixel-space models such as ADM, over guided-diffusion's respaced schedule. Sampler hooks see x̂0 with the model's variance (learned-range, or the posterior variance), which Tiramisu's steering (tpm.tiramisu) uses. Noise: one ChaCha8 stream from `seed`.")
        .input("model", PortType::handle_of("Denoiser", Family::named("unet2d")), "a denoiser that gives gradients (family unet2d: sd.load_unet2d)")
        .input("image", PortType::Image, "the image; its known region is kept")
        .input("mask", PortType::Mask, "1 = repaint (any resolution; binarized at 0.5)")
        .optional_input("hooks", PortType::list(PortType::handle("SamplerHook")), "per-step hooks, in order (x̂0 hooks replace x̂0 before the step)")
        .output("image", PortType::Image, "the inpainted image")
        .output("losses", PortType::tensor(Some(DType::F32), Dim::Fixed(1)), "the known-region loss of every step's final x̂0")
        .param(Param::int("train_steps").default(1000).range(1.0, 100000.0).doc("steps of the model's training process"))
        .param(Param::choice("beta_schedule", &["linear", "cosine"]).default("linear").doc("guided-diffusion's named schedule"))
        .param(Param::string("respacing").default("250").doc("timestep respacing: counts per section (\"250\", \"10,15,20\") or \"ddimN\""))
        .param(Param::int("steps").default(0).range(0.0, 100000.0).doc("DDIM steps over the respaced process; 0: every one"))
        .param(Param::int("iterations").default(2).range(0.0, 100.0).doc("gradient steps on x_t per step"))
        .param(Param::float("lr").default(0.02).range(0.0, 1e6).doc("learning rate"))
        .param(Param::float("lr_decay").default(1.012).range(0.0, 10.0).doc("learning-rate factor per step"))
        .param(Param::bool("smart_lr_decay").default(true).doc("divide the rate by √(1/ᾱ_t)·√ᾱ_0"))
        .param(Param::bool("adaptive_lr").default(true).doc("back off by 0.8 until the loss does not grow"))
        .param(Param::float("reg").default(1e-4).range(0.0, 1e6).doc("weight λ of ‖x_t − x_t^orig‖²"))
        .param(Param::float("reg_decay").default(1.01).range(0.0, 10.0).doc("λ's factor per step"))
        .param(Param::float("eta").default(0.0).range(0.0, 1.0).doc("DDIM stochasticity"))
        .param(Param::int("class_label").default(-1).range(-1.0, 1e9).doc("class label for class-conditional models (−1: none)"))
        .param(Param::bool("paste_known").default(true).doc("paste the known pixels into the result"))
        .param(Param::int("samples").default(1).range(1.0, 1024.0).doc("draws per image, in one batch (the authors: 10)"))
        .param(Param::int("keep_samples").default(0).range(0.0, 1024.0).doc("draws kept per image by their fit to the known region, as the authors' last step (the authors: 2; 0: keep every draw, no resampling)"))
        .param(Param::float("resample_temperature").default(100.0).range(1e-6, 1e9).doc("temperature of that choice: softmax(temperature / normalised error)"))
        .param(Param::seed("seed").default(0).doc("noise seed (and of the resampling draw), or `random`"))
}

/// For each group of `per` draws of one image in `result` (N×C×H×W), the `kept` chosen by
/// [`resample_by_fit`] against that image's known region.
fn keep_best(
    result: &CTensor,
    known: &CTensor,
    keep: &CTensor,
    per: usize,
    kept: usize,
    temperature: f64,
    seed: u64,
) -> Result<CTensor, NodeError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_7361_6d70_6c65);
    let keep = keep.broadcast_as(result.dims()).map_err(fail)?;
    let mut picked = Vec::new();
    for g in 0..result.dim(0).map_err(fail)? / per {
        let part = |t: &CTensor| t.narrow(0, g * per, per).map_err(fail);
        let chosen = resample_by_fit(
            &part(result)?,
            &part(known)?.narrow(0, 0, 1).map_err(fail)?,
            &part(&keep)?.narrow(0, 0, 1).map_err(fail)?,
            kept,
            temperature,
            &mut rng,
        )
        .map_err(node_error)?;
        picked.extend(chosen.into_iter().map(|i| (g * per + i) as u32));
    }
    let index = CTensor::from_vec(picked.clone(), picked.len(), result.device()).map_err(fail)?;
    result.index_select(&index, 0).map_err(fail)
}
