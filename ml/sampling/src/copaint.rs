//! CoPaint (Zhang et al., "Towards Coherent Image Inpainting Using Denoising Diffusion Implicit
//! Models"), as the Tiramisu authors run it (`O_DDIMSampler` in their CoPaint copy): before each
//! DDIM step, x_t is moved by a few gradient steps on
//! ‖m ⊙ (x0_known − x̂0(x_t))‖² + λ‖x_t − x_t^orig‖², with a learning rate that follows the
//! noise level and backs off by 0.8 until the loss does not grow; then hooks may replace x̂0
//! (Tiramisu's steering) and the step is taken with the model's own noise estimate.
//!
//! Gradients come from the model ([`GradModel::vjp`]); the loop itself needs none.

use candle_core::{DType, Tensor};

use crate::hooks::{HookPoint, StepContext, StepHook};
use crate::noise::Noise;
use crate::respace::SpacedDiffusion;
use crate::SampleError;

/// A model that can give gradients: its output for `x` (N×C′×H×W, the first C channels the
/// noise estimate, any further C the learned-range variance), and the product of a cotangent on
/// that output with the output's Jacobian in `x`.
pub trait GradModel {
    /// The output at `x` for the model timestep `t`.
    fn output(&mut self, x: &Tensor, t: f64) -> Result<Tensor, SampleError>;

    /// `cotangentᵀ · ∂output/∂x` at `x` (the shape of `x`); `cotangent` has the output's shape.
    fn vjp(&mut self, x: &Tensor, t: f64, cotangent: &Tensor) -> Result<Tensor, SampleError>;

    /// Called before each step; an error (cancellation) ends the run.
    fn progress(&mut self, done: usize, total: usize) -> Result<(), SampleError> {
        let _ = (done, total);
        Ok(())
    }
}

/// CoPaint's settings, with the Tiramisu authors' CelebA-HQ defaults.
#[derive(Debug, Clone, Copy)]
pub struct CoPaintConfig {
    /// DDIM steps over the respaced process (its length: every step).
    pub steps: usize,
    /// Gradient steps on x_t per step (2).
    pub iterations: usize,
    /// Learning rate (0.02).
    pub lr: f64,
    /// Learning rate factor per step (1.012).
    pub lr_decay: f64,
    /// Divide the rate by √(1/ᾱ_t)·√ᾱ_0 (true).
    pub smart_lr_decay: bool,
    /// Back off by 0.8 until the loss does not grow (true).
    pub adaptive_lr: bool,
    /// Weight λ of ‖x_t − x_t^orig‖² (1e-4).
    pub reg: f64,
    /// λ's factor per step (1.01).
    pub reg_decay: f64,
    /// DDIM η (0: deterministic).
    pub eta: f64,
    /// Back-offs per gradient step before giving the step up (the reference has no bound).
    pub max_backoffs: usize,
}

impl Default for CoPaintConfig {
    fn default() -> Self {
        CoPaintConfig {
            steps: 250,
            iterations: 2,
            lr: 0.02,
            lr_decay: 1.012,
            smart_lr_decay: true,
            adaptive_lr: true,
            reg: 1e-4,
            reg_decay: 1.01,
            eta: 0.0,
            max_backoffs: 60,
        }
    }
}

/// One run.
pub struct CoPaintRun<'a> {
    /// The respaced process.
    pub diffusion: &'a SpacedDiffusion,
    /// Settings.
    pub config: CoPaintConfig,
    /// The known image x0 (N×C×H×W, in [−1, 1]).
    pub known: Tensor,
    /// 1 where x0 is known, 0 where to paint (broadcastable to the image).
    pub keep: Tensor,
    /// Hooks, in order (x̂0 hooks see the model's variance).
    pub hooks: Vec<&'a mut dyn StepHook>,
    /// Keep every step's x_{t−1} and x̂0.
    pub record: bool,
}

/// What a run produced.
pub struct CoPaintOutput {
    /// The final sample, clamped to [−1, 1] (known pixels not pasted).
    pub image: Tensor,
    /// x_{t−1} after every step (when recording).
    pub steps: Vec<Tensor>,
    /// x̂0 of every step, after the hooks (when recording).
    pub x0: Vec<Tensor>,
    /// The known-region loss of every step's final x̂0.
    pub losses: Vec<f64>,
}

/// DDIM's timesteps over a process of `len` steps: `steps` of them, evenly strided and rounded
/// (CoPaint's `ddim_timesteps`), descending.
pub fn ddim_timesteps(steps: usize, len: usize) -> Result<Vec<usize>, SampleError> {
    if steps == 0 || steps > len {
        return Err(SampleError::Invalid(format!(
            "CoPaint steps must be between 1 and the process's {len}, got {steps}"
        )));
    }
    let ratio = len as f64 / steps as f64;
    let mut t: Vec<usize> = (0..steps)
        .map(|i| (i as f64 * ratio).round_ties_even() as usize)
        .collect();
    t.sort_unstable_by(|a, b| b.cmp(a));
    t.dedup();
    Ok(t)
}

fn scalar(t: &Tensor) -> Result<f64, SampleError> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

struct Objective<'a> {
    known_masked: Tensor,
    keep: &'a Tensor,
    origin: Tensor,
    recip: f64,
    recipm1: f64,
    channels: usize,
}

/// What one model evaluation gives the optimisation.
struct Eval {
    output: Tensor,
    raw_x0: Tensor,
    x0: Tensor,
}

impl Objective<'_> {
    fn eval(&self, output: Tensor, x: &Tensor) -> Result<Eval, SampleError> {
        let eps = output.narrow(1, 0, self.channels)?;
        // guided-diffusion's _predict_xstart_from_eps, in f32 coefficients like the reference.
        let raw_x0 = ((x * self.recip as f32 as f64)? - (eps * self.recipm1 as f32 as f64)?)?;
        let x0 = raw_x0.clamp(-1f32, 1f32)?;
        Ok(Eval { output, raw_x0, x0 })
    }

    fn known_loss(&self, x0: &Tensor) -> Result<Tensor, SampleError> {
        let d = (&self.known_masked - x0.broadcast_mul(self.keep)?)?;
        Ok(d.sqr()?.sum_all()?)
    }

    fn loss(&self, e: &Eval, x: &Tensor, reg: f64) -> Result<f64, SampleError> {
        let r = (&self.origin - x)?.sqr()?.sum_all()?;
        Ok(scalar(&self.known_loss(&e.x0)?)? + reg * scalar(&r)?)
    }

    /// ∂loss/∂x = √(1/ᾱ)·g + Jᵀ(−√(1/ᾱ − 1)·g) + 2λ(x − x_orig), g = ∂loss/∂x̂0 through the clamp.
    fn gradient(
        &self,
        model: &mut dyn GradModel,
        e: &Eval,
        x: &Tensor,
        t: f64,
        reg: f64,
    ) -> Result<Tensor, SampleError> {
        let inside = e
            .raw_x0
            .ge(-1f32)?
            .mul(&e.raw_x0.le(1f32)?)?
            .to_dtype(DType::F32)?;
        let residual = (&self.known_masked - e.x0.broadcast_mul(self.keep)?)?;
        let g = (residual.broadcast_mul(self.keep)? * -2.0)?.mul(&inside)?;
        let cot_eps = (&g * -(self.recipm1 as f32 as f64))?;
        let cotangent = match e.output.dim(1)? - self.channels {
            0 => cot_eps,
            extra => {
                let (n, _, h, w) = e.output.dims4()?;
                let zeros = Tensor::zeros((n, extra, h, w), DType::F32, x.device())?;
                Tensor::cat(&[&cot_eps, &zeros], 1)?
            }
        };
        let through_model = model.vjp(x, t, &cotangent)?;
        let direct = (&g * self.recip as f32 as f64)?;
        let reg_grad = ((x - &self.origin)? * (2.0 * reg))?;
        Ok(((direct + through_model)? + reg_grad)?)
    }
}

/// Runs CoPaint from `x_t` (the initial noise, N×C×H×W).
pub fn copaint(
    mut run: CoPaintRun<'_>,
    model: &mut dyn GradModel,
    x_t: &Tensor,
    noise: &mut Noise,
) -> Result<CoPaintOutput, SampleError> {
    let d = run.diffusion;
    let c = run.config;
    let (n, ch, h, w) = x_t.dims4()?;
    if run.known.dims() != x_t.dims() {
        return Err(SampleError::Invalid(format!(
            "the known image {:?} does not match the sample {:?}",
            run.known.dims(),
            x_t.dims()
        )));
    }
    let keep = run.keep.broadcast_as(x_t.dims())?.contiguous()?;
    let known_masked = (&run.known * &keep)?;
    let timesteps = ddim_timesteps(c.steps, d.len())?;
    let pairs: Vec<(usize, usize)> = timesteps.windows(2).map(|p| (p[0], p[1])).collect();
    let total = pairs.len();
    let initial = x_t.clone();
    let mut x = x_t.clone();
    let (mut lr_base, mut reg) = (c.lr, c.reg);
    let mut out = CoPaintOutput {
        image: x.clone(),
        steps: Vec::new(),
        x0: Vec::new(),
        losses: Vec::with_capacity(total),
    };
    for (i, &(cur, prev)) in pairs.iter().enumerate() {
        model.progress(i, total)?;
        let (a_t, a_prev) = (d.alphas_cumprod[cur], d.alphas_cumprod[prev]);
        let t_model = d.timestep_map[cur] as f64;
        let obj = Objective {
            known_masked: known_masked.clone(),
            keep: &keep,
            origin: x.clone(),
            recip: (1.0 / a_t).sqrt(),
            recipm1: (1.0 / a_t - 1.0).sqrt(),
            channels: ch,
        };
        let mut lr = lr_base;
        if c.smart_lr_decay {
            lr /= (1.0 / a_t).sqrt() * d.alphas_cumprod[0].sqrt();
        }
        let mut e = obj.eval(model.output(&x, t_model)?, &x)?;
        for _ in 0..c.iterations {
            let loss = obj.loss(&e, &x, reg)?;
            let grad = obj.gradient(model, &e, &x, t_model, reg)?;
            let mut new_x = (&x - (&grad * lr)?)?;
            let mut new_e = obj.eval(model.output(&new_x, t_model)?, &new_x)?;
            if c.adaptive_lr {
                let mut tries = 0;
                loop {
                    let new_loss = obj.loss(&new_e, &new_x, reg)?;
                    if !new_loss.is_nan() && new_loss <= loss {
                        break;
                    }
                    tries += 1;
                    if tries > c.max_backoffs {
                        // The loss grows at every rate tried: stay where we are.
                        new_x = x.clone();
                        new_e = obj.eval(e.output.clone(), &x)?;
                        break;
                    }
                    lr *= 0.8;
                    new_x = (&x - (&grad * lr)?)?;
                    new_e = obj.eval(model.output(&new_x, t_model)?, &new_x)?;
                }
            }
            x = new_x;
            e = new_e;
        }
        let eps = e.output.narrow(1, 0, ch)?;
        let variance = variance(d, cur, &e.output, ch)?;
        let next_level = Some((a_prev.sqrt(), (1.0 - a_prev).sqrt()));
        let ctx = StepContext {
            index: i,
            total,
            timestep: t_model,
            next_level,
            initial_noise: &initial,
            variance: Some(&variance),
            position: Some((cur, d.len())),
        };
        let mut x0 = e.x0.clone();
        for hook in run.hooks.iter_mut().filter(|h| h.wants_x0()) {
            if let Some(new) = hook.see(HookPoint::X0, &ctx, &x0)? {
                if new.dims() != x0.dims() {
                    return Err(SampleError::Invalid(format!(
                        "a hook replaced x̂0 {:?} with {:?}",
                        x0.dims(),
                        new.dims()
                    )));
                }
                x0 = new;
            }
        }
        out.losses.push(scalar(&obj.known_loss(&x0)?)?);
        let sigma = c.eta * ((1.0 - a_prev) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_prev).sqrt();
        let dir = (1.0 - a_prev - sigma * sigma).max(0.0).sqrt();
        let mut next = ((&x0 * a_prev.sqrt() as f32 as f64)? + (&eps * dir as f32 as f64)?)?;
        if sigma > 0.0 && cur != 0 {
            let z = noise.draw(&[n, ch, h, w], x.device())?;
            next = (next + (z * sigma)?)?;
        }
        for hook in run.hooks.iter_mut() {
            if let Some(new) = hook.see(HookPoint::Latent, &ctx, &next)? {
                next = new;
            }
        }
        x = next;
        if run.record {
            out.steps.push(x.clone());
            out.x0.push(x0);
        }
        lr_base *= c.lr_decay;
        reg *= c.reg_decay;
    }
    model.progress(total, total)?;
    out.image = x.clamp(-1f32, 1f32)?;
    Ok(out)
}

/// The variance of p(x_{t−1} | x_t) at respaced step `i` for a model `output` (guided-diffusion's
/// `p_mean_variance`): learned-range from the output's extra channels, or the clipped posterior
/// variance for models without them.
pub fn variance(
    d: &SpacedDiffusion,
    i: usize,
    output: &Tensor,
    channels: usize,
) -> Result<Tensor, SampleError> {
    let (n, c_out, h, w) = output.dims4()?;
    if c_out == 2 * channels {
        let v = output.narrow(1, channels, channels)?;
        let (max_log, min_log) = (d.betas[i].ln(), d.posterior_log_variance_clipped[i]);
        // frac·max + (1 − frac)·min with frac = (v + 1)/2.
        let frac = ((v + 1.0)? / 2.0)?;
        let log = ((&frac * max_log as f32 as f64)?
            + (frac.affine(-1.0, 1.0)? * min_log as f32 as f64)?)?;
        return Ok(log.exp()?);
    }
    let fixed = d.posterior_log_variance_clipped[i].exp() as f32;
    Ok(Tensor::full(fixed, (n, channels, h, w), output.device())?)
}

/// The authors' last step (`resample_based_on_x_prev`): of `samples` (N×C×H×W, draws for one
/// known image), picks `keep` indices by how well each fits the `known` image (C×H×W or
/// 1×C×H×W) where `keep_mask` (broadcastable) is 1. Each sample's squared error on the known
/// region, divided by the errors' mean, gives the weights softmax(temperature / error); sample
/// i is taken ⌊keep·w_i⌋ times and the rest are drawn without replacement in proportion to the
/// fractional parts (uniform weights if any is not finite). Indices come in ascending order.
pub fn resample_by_fit(
    samples: &Tensor,
    known: &Tensor,
    keep_mask: &Tensor,
    keep: usize,
    temperature: f64,
    rng: &mut impl rand::Rng,
) -> Result<Vec<usize>, SampleError> {
    let n = samples.dim(0)?;
    if n == 0 || keep == 0 {
        return Err(SampleError::Invalid(
            "resampling needs at least one sample and one to keep".into(),
        ));
    }
    let known = known.broadcast_as(samples.dims())?;
    let errors: Vec<f64> = samples
        .broadcast_sub(&known)?
        .broadcast_mul(keep_mask)?
        .sqr()?
        .flatten_from(1)?
        .sum(1)?
        .to_dtype(DType::F64)?
        .to_vec1()?;
    let mean = errors.iter().sum::<f64>() / n as f64;
    let logits: Vec<f64> = errors.iter().map(|e| temperature / (e / mean)).collect();
    let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut w: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
    let total: f64 = w.iter().sum();
    if w.iter().any(|v| !v.is_finite()) || !total.is_finite() || total < 1e-6 {
        w = vec![1.0; n];
    }
    let total: f64 = w.iter().sum();
    let scaled: Vec<f64> = w.iter().map(|v| keep as f64 * v / total).collect();
    let mut picked: Vec<usize> = Vec::with_capacity(keep);
    for (i, s) in scaled.iter().enumerate() {
        picked.extend(std::iter::repeat_n(i, s.floor() as usize));
    }
    let mut rest: Vec<f64> = scaled.iter().map(|s| s - s.floor()).collect();
    while picked.len() < keep {
        let sum: f64 = rest.iter().sum();
        let i = if sum > 0.0 {
            let mut u = rng.random_range(0.0..sum);
            let mut chosen = n - 1;
            for (i, r) in rest.iter().enumerate() {
                if u < *r {
                    chosen = i;
                    break;
                }
                u -= r;
            }
            chosen
        } else {
            rng.random_range(0..n)
        };
        rest[i] = 0.0;
        picked.push(i);
    }
    picked.truncate(keep);
    picked.sort_unstable();
    Ok(picked)
}

/// Each image of the batch `t` repeated `times` times in a row (image i at i·times + j): the
/// layout of several draws per image in one CoPaint batch.
pub fn repeat_draws(t: &Tensor, times: usize) -> Result<Tensor, SampleError> {
    if times <= 1 {
        return Ok(t.clone());
    }
    let index: Vec<u32> = (0..t.dim(0)? as u32)
        .flat_map(|i| std::iter::repeat_n(i, times))
        .collect();
    let len = index.len();
    Ok(t.index_select(&Tensor::from_vec(index, len, t.device())?, 0)?)
}
