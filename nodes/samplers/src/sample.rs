//! `samplers.sample`: the sampling loop. It drives a denoiser made by any plugin through the
//! ABI's object handles, with classifier-free guidance, img2img strength and inpainting by
//! blending the known region back at every step.
//!
//! Noise: the initial noise and every stochastic step's noise come, in that order, from one
//! ChaCha8 stream seeded with the `seed` parameter (standard normal, row-major N×C×H×W), or,
//! when the `noise` input is connected, from that tensor: K draws of the latent's size, consumed
//! in the same order (this replays noise recorded from another implementation exactly).

use latentflow_plugin_api::sdk::denoiser::{DenoiserClient, Step};
use latentflow_plugin_api::sdk::prelude::*;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::schedulers::{Prediction, Scheduler};

fn normal(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

/// `t` repeated along the batch until it has `n` items (a batch of 1 broadcasts).
fn batch_to(t: &Tensor, n: usize, what: &str) -> Result<(Vec<f32>, Vec<usize>), NodeError> {
    let mut shape = t.shape();
    let data = t.to_f32_vec()?;
    let have = shape.first().copied().unwrap_or(0);
    if have == n {
        return Ok((data, shape));
    }
    if have != 1 {
        return Err(NodeError::invalid(format!(
            "{what} has batch {have}, the latent {n}"
        )));
    }
    shape[0] = n;
    Ok((data.repeat(n), shape))
}

/// Where the noise comes from.
enum Noise {
    Seeded(Box<rand_chacha::ChaCha8Rng>),
    Recorded { data: Vec<f32>, at: usize },
}

impl Noise {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>, NodeError> {
        match self {
            Noise::Seeded(rng) => Ok(normal(rng.as_mut(), n)),
            Noise::Recorded { data, at } => {
                let out = data.get(*at..*at + n).ok_or_else(|| {
                    NodeError::invalid(format!(
                        "the noise input holds {} draws of {n} values; the sampler needs more",
                        data.len() / n
                    ))
                })?;
                *at += n;
                Ok(out.to_vec())
            }
        }
    }
}

/// Values and shape.
type Flat = (Vec<f32>, Vec<usize>);

/// Conditionings with different token counts (prompts of different lengths in 77-token windows)
/// are repeated along the tokens to their least common multiple, as ComfyUI does.
fn match_tokens(a: Flat, b: Flat) -> Result<(Flat, Flat), NodeError> {
    if a.1.len() != 3 || b.1.len() != 3 || a.1[2] != b.1[2] {
        if a.1[1..] == b.1[1..] {
            return Ok((a, b));
        }
        return Err(NodeError::invalid(format!(
            "negative conditioning {:?} and positive {:?} differ",
            a.1, b.1
        )));
    }
    let (la, lb) = (a.1[1], b.1[1]);
    if la == lb || la == 0 || lb == 0 {
        return Ok((a, b));
    }
    let gcd = |mut x: usize, mut y: usize| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    let lcm = la / gcd(la, lb) * lb;
    let repeat = |(data, shape): Flat| {
        let (n, l, d) = (shape[0], shape[1], shape[2]);
        let k = lcm / l;
        let mut out = Vec::with_capacity(n * lcm * d);
        for row in data.chunks(l * d) {
            for _ in 0..k {
                out.extend_from_slice(row);
            }
        }
        (out, vec![n, lcm, d])
    };
    Ok((repeat(a), repeat(b)))
}

/// The mask at latent resolution, one value per latent element (1 = repaint).
fn latent_mask(mask: &Tensor, shape: &[usize]) -> Result<Vec<f32>, NodeError> {
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let ms = mask.shape();
    if ms.len() != 3 || (ms[0] != 1 && ms[0] != n) {
        return Err(NodeError::invalid(format!(
            "mask must be 1×H×W or {n}×H×W, got {ms:?}"
        )));
    }
    let m = mask.to_f32_vec()?;
    let (mh, mw) = (ms[1], ms[2]);
    let mut out = Vec::with_capacity(n * c * h * w);
    for b in 0..n {
        let plane = if ms[0] == 1 { 0 } else { b };
        for _ in 0..c {
            for y in 0..h {
                for x in 0..w {
                    // Nearest sample of the (usually pixel-resolution) mask, binarized at 0.5
                    // as diffusers' mask processor does.
                    let (my, mx) = (y * mh / h, x * mw / w);
                    let v = m[plane * mh * mw + my * mw + mx];
                    out.push(if v >= 0.5 { 1.0 } else { 0.0 });
                }
            }
        }
    }
    Ok(out)
}

fn sample(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let model = DenoiserClient::new(inputs.object("model")?)?;
    let latent = inputs.tensor("latent")?;
    let shape = latent.shape();
    if shape.len() != 4 {
        return Err(NodeError::invalid(format!(
            "latent must be N×C×H×W, got {shape:?}"
        )));
    }
    let (n, numel) = (shape[0], latent.numel());
    let known = latent.to_f32_vec()?;

    let mut cfg = crate::config_from(p)?;
    cfg.prediction = match p.str("prediction")? {
        "auto" => match model.prediction_type(ctx.host())?.as_str() {
            "v_prediction" => Prediction::V,
            _ => Prediction::Epsilon,
        },
        "v_prediction" => Prediction::V,
        _ => Prediction::Epsilon,
    };
    let steps = p.usize("steps")?;
    let mut sched = Scheduler::new(cfg, steps).map_err(|e| NodeError::invalid(e.0))?;
    let strength = p.f64("strength")?;
    let run_steps = ((steps as f64 * strength) as usize).min(steps);
    if run_steps == 0 {
        let mut empty = vec![0];
        empty.extend_from_slice(&shape);
        return Ok(vec![
            Value::Tensor(latent.clone()),
            Value::Tensor(Tensor::from_vec(Vec::<f32>::new(), &empty)?),
            Value::Tensor(Tensor::from_vec(Vec::<f32>::new(), &empty)?),
        ]);
    }
    let start = steps - run_steps;
    sched.start_at(start).map_err(|e| NodeError::invalid(e.0))?;

    let positive = batch_to(inputs.tensor("positive")?, n, "positive conditioning")?;
    let guidance = p.f64("cfg")?;
    let (positive, negative) = match inputs.opt_tensor("negative")? {
        Some(t) if guidance != 1.0 => {
            let (neg, pos) = match_tokens(batch_to(t, n, "negative conditioning")?, positive)?;
            (pos, Some(neg))
        }
        _ => (positive, None),
    };
    let (pos, pos_shape) = positive;
    // Classifier-free guidance runs one batch: [negative; positive].
    let context = match &negative {
        Some((neg, neg_shape)) => {
            if neg_shape[1..] != pos_shape[1..] {
                return Err(NodeError::invalid(format!(
                    "negative conditioning {neg_shape:?} and positive {pos_shape:?} differ"
                )));
            }
            let mut both = neg.clone();
            both.extend_from_slice(&pos);
            let mut s = pos_shape.clone();
            s[0] *= 2;
            Tensor::from_vec(both, &s)?
        }
        None => Tensor::from_vec(pos, &pos_shape)?,
    };
    let mask = inputs
        .opt_tensor("mask")?
        .map(|m| latent_mask(m, &shape))
        .transpose()?;

    let mut rng = match inputs.opt_tensor("noise")? {
        Some(t) => {
            let data = t.to_f32_vec()?;
            if data.is_empty() || data.len() % numel != 0 {
                return Err(NodeError::invalid(format!(
                    "the noise input has {} values, not a multiple of the latent's {numel}",
                    data.len()
                )));
            }
            Noise::Recorded { data, at: 0 }
        }
        None => Noise::Seeded(Box::new(Ctx::rng_from(p.seed("seed")?))),
    };
    let noise = rng.draw(numel)?;
    let record = p.bool("record_steps")?;
    let mut history: Vec<f32> = Vec::new();
    let mut x0_history: Vec<f32> = Vec::new();
    let full = strength >= 1.0;
    let mut x: Vec<f32> = if full {
        let s = sched.init_noise_sigma() as f32;
        noise.iter().map(|z| z * s).collect()
    } else {
        sched.add_noise(&known, &noise, start)
    };

    for i in start..steps {
        ctx.progress((i - start) as u64, run_steps as u64, "sampling")?;
        let t = sched.timesteps()[i];
        let x_in = sched.scale_model_input(&x);
        let out = if negative.is_some() {
            let mut doubled = x_in.clone();
            doubled.extend_from_slice(&x_in);
            let mut s2 = shape.clone();
            s2[0] *= 2;
            let pred = model.predict_step(
                ctx.host(),
                Tensor::from_vec(doubled, &s2)?,
                t,
                Some(context.clone()),
                Some(Step {
                    index: i - start,
                    total: run_steps,
                    cfg: true,
                }),
            )?;
            let pred = pred.to_f32_vec()?;
            if pred.len() != 2 * numel {
                return Err(NodeError::failed(format!(
                    "the denoiser returned {} values for {}",
                    pred.len(),
                    2 * numel
                )));
            }
            let (u, c) = pred.split_at(numel);
            let g = guidance as f32;
            u.iter()
                .zip(c)
                .map(|(u, c)| u + g * (c - u))
                .collect::<Vec<f32>>()
        } else {
            let pred = model.predict_step(
                ctx.host(),
                Tensor::from_vec(x_in, &shape)?,
                t,
                Some(context.clone()),
                Some(Step {
                    index: i - start,
                    total: run_steps,
                    cfg: false,
                }),
            )?;
            let pred = pred.to_f32_vec()?;
            if pred.len() != numel {
                return Err(NodeError::failed(format!(
                    "the denoiser returned {} values for {numel}",
                    pred.len()
                )));
            }
            pred
        };
        if record {
            x0_history.extend(sched.predict_x0(&out, &x));
        }
        let z = if sched.needs_noise() {
            Some(rng.draw(numel)?)
        } else {
            None
        };
        x = sched
            .step(&out, &x, z.as_deref())
            .map_err(|e| NodeError::failed(e.0))?;
        if let Some(m) = &mask {
            // Keep the known region: the original latent, noised to the next step's level
            // (after the last step: the original itself), as diffusers does.
            let known_now = if i + 1 < steps {
                sched.add_noise(&known, &noise, i + 1)
            } else {
                known.clone()
            };
            x.iter_mut()
                .zip(m)
                .zip(&known_now)
                .for_each(|((x, m), k)| *x = m * *x + (1.0 - m) * k);
        }
        if record {
            history.extend_from_slice(&x);
        }
    }
    ctx.progress(run_steps as u64, run_steps as u64, "sampling")?;
    let mut hist_shape = vec![if record { run_steps } else { 0 }];
    hist_shape.extend_from_slice(&shape);
    Ok(vec![
        Value::Tensor(Tensor::from_vec(x, &shape)?),
        Value::Tensor(Tensor::from_vec(history, &hist_shape)?),
        Value::Tensor(Tensor::from_vec(x0_history, &hist_shape)?),
    ])
}

/// The sampling node.
pub fn node() -> NodeDef {
    let schedule_params = |d: NodeDef| {
        d.param(
            Param::choice(
                "kind",
                &[
                    "ddim", "ddpm", "euler", "euler_a", "lms", "dpmpp_2m", "unipc", "lcm",
                ],
            )
            .default("euler")
            .doc("scheduler"),
        )
        .param(Param::int("steps").default(20).range(1.0, 1000.0))
        .param(
            Param::choice("spacing", &["default", "leading", "trailing", "linspace"])
                .default("default")
                .doc("diffusers timestep_spacing; default: the scheduler's own"),
        )
        .param(
            Param::bool("karras")
                .default(false)
                .doc("Karras σ (euler, lms, dpmpp_2m, unipc)"),
        )
        .param(
            Param::float("eta")
                .default(0.0)
                .range(0.0, 1.0)
                .doc("DDIM stochasticity"),
        )
    };
    schedule_params(
        NodeDef::new("samplers.sample", sample)
            .doc("Denoises a latent with any Denoiser: txt2img (strength 1: starts from pure noise), img2img (strength < 1: noises the input latent part-way), inpainting (mask: 1 = repaint; the rest is blended back every step). Classifier-free guidance when a negative conditioning is given and cfg ≠ 1. Noise: one ChaCha8 stream from `seed`, or replayed from the `noise` input.")
            .input("model", PortType::handle("Denoiser", ""), "the denoiser")
            .input("positive", PortType::conditioning(Dim::var("D")), "conditioning")
            .optional_input("negative", PortType::conditioning(Dim::var("D")), "unconditional / negative conditioning (enables CFG)")
            .input("latent", PortType::latent(Dim::var("C")), "start latent (an empty latent for txt2img)")
            .optional_input("mask", PortType::Mask, "inpainting mask, 1 = repaint (any resolution; binarized at 0.5)")
            .optional_input("noise", PortType::tensor(Some(DType::F32), Dim::Any), "recorded noise to replay instead of the seeded stream: the initial draw, then each stochastic step's")
            .output("latent", PortType::latent(Dim::var("C")), "the denoised latent")
            .output("steps", PortType::tensor(Some(DType::F32), Dim::Fixed(5)), "the latent after every step (steps×N×C×H×W) when record_steps is on; empty otherwise")
            .output("x0", PortType::tensor(Some(DType::F32), Dim::Fixed(5)), "the model's predicted clean latent x̂0 at every step (steps×N×C×H×W) when record_steps is on; empty otherwise")
            .param(Param::bool("record_steps").default(false).doc("keep the latent and the predicted x̂0 of every step (the `steps` and `x0` outputs)"))
            .param(Param::float("cfg").default(7.5).range(0.0, 100.0).doc("classifier-free guidance scale"))
            .param(Param::seed("seed").default(0).doc("noise seed, or `random`"))
            .param(Param::float("strength").default(1.0).range(0.0, 1.0).doc("img2img: fraction of the schedule to run"))
            .param(Param::choice("prediction", &["auto", "epsilon", "v_prediction"]).default("auto").doc("auto: ask the model")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditionings_of_different_lengths_repeat_to_their_lcm() {
        let a = (vec![1.0, 2.0], vec![1, 2, 1]); // 2 tokens
        let b = (vec![3.0, 4.0, 5.0], vec![1, 3, 1]); // 3 tokens
        let (a, b) = match_tokens(a, b).unwrap();
        assert_eq!(a.1, vec![1, 6, 1]);
        assert_eq!(a.0, vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        assert_eq!(b.0, vec![3.0, 4.0, 5.0, 3.0, 4.0, 5.0]);
        let c = (vec![0.0; 4], vec![1, 2, 2]);
        let d = (vec![0.0; 3], vec![1, 1, 3]);
        assert!(match_tokens(c, d).is_err(), "different widths are an error");
    }

    #[test]
    fn recorded_noise_is_consumed_in_order_and_runs_out_clearly() {
        let mut n = Noise::Recorded {
            data: vec![1.0, 2.0, 3.0, 4.0],
            at: 0,
        };
        assert_eq!(n.draw(2).unwrap(), vec![1.0, 2.0]);
        assert_eq!(n.draw(2).unwrap(), vec![3.0, 4.0]);
        let e = n.draw(2).unwrap_err();
        assert!(e.to_string().contains("needs more"), "{e}");
    }
}
