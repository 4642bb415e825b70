//! The LatentFlow samplers plugin: thin glue over `latentflow-sampling` (diffusers-exact
//! schedulers and the sampling loop).
//!
//! `samplers.sample` drives a denoiser made by another plugin through the typed `Denoiser`
//! protocol (`latentflow_plugin_api::sdk::denoiser`); `samplers.schedule` exposes the schedule
//! itself; `samplers.inpaint_blend` is a sampler hook; `samplers.copaint` inpaints by CoPaint with
//! a denoiser that gives gradients.

mod copaint;
mod hallucination;
mod hooks;
mod invert;
mod sample;

use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::schedulers::{DynamicShift, Flow, NoiseTable};
use latentflow_sampling::{Config, Kind, Prediction, Scheduler, Spacing};

/// Reads the scheduler settings shared by the nodes, for a latent of `latent` shape when known
/// (dynamic flow shifting needs it).
pub fn config_from(p: &Params, latent: Option<&[usize]>) -> Result<Config, NodeError> {
    let name = p.str("kind")?;
    let kind = Kind::parse(name, p.f64("eta")?).ok_or_else(|| {
        NodeError::invalid(format!(
            "unknown scheduler `{name}` ({})",
            Kind::NAMES.join(", ")
        ))
    })?;
    let mut cfg = Config::sd(kind);
    cfg.prediction = match p.str("prediction") {
        Ok("v_prediction") => Prediction::V,
        Ok("sample") => Prediction::Sample,
        Ok("flow_prediction") => Prediction::Flow,
        _ => Prediction::Epsilon,
    };
    cfg.spacing = Spacing::parse(p.str("spacing")?);
    cfg.karras = p.bool("karras")?;
    cfg.table = training_schedule(p)?;
    if kind == Kind::FlowEuler || cfg.prediction == Prediction::Flow {
        cfg.flow = Some(flow_from(p, latent)?);
    }
    Ok(cfg)
}

/// The flow-matching grid the parameters name, for a latent of `latent` shape (N×C×H×W:
/// dynamic shifting counts (H/2)·(W/2) tokens, as Flux packs its latents).
pub(crate) fn flow_from(p: &Params, latent: Option<&[usize]>) -> Result<Flow, NodeError> {
    let mu = if p.bool("dynamic_shift")? {
        let tokens = match latent {
            Some([.., h, w]) => (h / 2) * (w / 2),
            _ => return Err(NodeError::invalid(
                "dynamic_shift takes μ from the latent's size: it needs a latent (samplers.sample)",
            )),
        };
        let d = DynamicShift {
            base_shift: p.f64("base_shift")?,
            max_shift: p.f64("max_shift")?,
            base_seq_len: p.f64("base_seq_len")?,
            max_seq_len: p.f64("max_seq_len")?,
        };
        if d.max_seq_len <= d.base_seq_len {
            return Err(NodeError::invalid(format!(
                "max_seq_len ({}) must be above base_seq_len ({})",
                d.max_seq_len, d.base_seq_len
            )));
        }
        Some(Flow::mu_for(tokens, d))
    } else {
        None
    };
    let flow = Flow {
        shift: p.f64("shift")?,
        mu,
        uniform: p.str("flow_grid")? == "flux",
    };
    flow.check().map_err(NodeError::invalid)?;
    Ok(flow)
}

/// The training noise schedule the parameters name (Stable Diffusion's by default).
pub(crate) fn training_schedule(p: &Params) -> Result<NoiseTable, NodeError> {
    NoiseTable::from_config(
        p.str("beta_schedule")?,
        p.f64("beta_start")?,
        p.f64("beta_end")?,
        1000,
    )
    .map_err(NodeError::invalid)
}

fn schedule(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let sched = Scheduler::new(config_from(p, None)?, p.usize("steps")?)
        .map_err(|e| NodeError::invalid(e.to_string()))?;
    let ts: Vec<f32> = sched.timesteps().iter().map(|&t| t as f32).collect();
    let sig: Vec<f32> = sched.sigmas().iter().map(|&s| s as f32).collect();
    let (nt, ns) = (ts.len(), sig.len());
    Ok(vec![
        Value::Tensor(Tensor::from_vec(ts, &[nt])?),
        Value::Tensor(Tensor::from_vec(sig, &[ns])?),
        Value::Float(sched.init_noise_sigma()),
    ])
}

/// The scheduler parameters shared by the nodes.
pub fn schedule_params(d: NodeDef) -> NodeDef {
    d.param(
        Param::choice(
            "kind",
            &[
                "ddim",
                "ddpm",
                "euler",
                "euler_a",
                "lms",
                "dpmpp_2m",
                "unipc",
                "lcm",
                "flow_euler",
            ],
        )
        .default("euler")
        .doc("scheduler; flow_euler is flow matching's Euler (FlowMatchEulerDiscreteScheduler), and dpmpp_2m and unipc run flow models on their flow grids (use_flow_sigmas)"),
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
    .param(
        Param::choice("beta_schedule", &["scaled_linear", "linear"])
            .default("scaled_linear")
            .doc("the model's training schedule: scaled_linear for Stable Diffusion, linear for AnimateDiff's motion modules"),
    )
    .param(Param::float("beta_start").default(0.00085).range(1e-8, 1.0))
    .param(Param::float("beta_end").default(0.012).range(1e-8, 1.0))
    .param(
        Param::float("shift")
            .default(1.0)
            .range(0.01, 100.0)
            .doc("flow models: the σ shift s·σ/(1+(s−1)·σ) (diffusers' shift / flow_shift; SD3: 3)"),
    )
    .param(
        Param::bool("dynamic_shift")
            .default(false)
            .doc("flow models: shift by e^μ, μ linear in the image's tokens (H/2)·(W/2) from base_shift at base_seq_len to max_shift at max_seq_len (Flux)"),
    )
    .param(Param::float("base_shift").default(0.5).range(-10.0, 10.0).doc("dynamic shifting: μ at base_seq_len tokens"))
    .param(Param::float("max_shift").default(1.15).range(-10.0, 10.0).doc("dynamic shifting: μ at max_seq_len tokens"))
    .param(Param::float("base_seq_len").default(256.0).range(1.0, 1e7).doc("dynamic shifting: base_image_seq_len"))
    .param(Param::float("max_seq_len").default(4096.0).range(1.0, 1e7).doc("dynamic shifting: max_image_seq_len"))
    .param(
        Param::choice("flow_grid", &["scheduler", "flux"])
            .default("scheduler")
            .doc("flow_euler's σ: the scheduler's own grid over the training steps, or linspace(1, 1/n, n) as FluxPipeline passes them"),
    )
}

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    let schedule = schedule_params(
        NodeDef::new("samplers.schedule", schedule)
            .doc("The timesteps and σ of a scheduler for a number of steps (Stable Diffusion's training schedule).")
            .output("timesteps", PortType::tensor(Some(DType::F32), Dim::Fixed(1)), "timestep per step")
            .output("sigmas", PortType::tensor(Some(DType::F32), Dim::Fixed(1)), "σ per step and a final 0 (σ-based schedulers; empty otherwise)")
            .output("init_noise_sigma", PortType::Float, "scale of the initial noise")
            .param(Param::choice("prediction", &["epsilon", "v_prediction", "sample", "flow_prediction"]).default("epsilon").doc("flow_prediction: the flow grid of dpmpp_2m and unipc")),
    );
    [
        schedule,
        sample::node(),
        sample::video_node(),
        invert::node(),
        invert::video_node(),
        copaint::node(),
    ]
    .into_iter()
    .chain(hallucination::nodes())
    .chain(hooks::nodes())
    .fold(
        PluginDef::new("samplers", env!("CARGO_PKG_VERSION")),
        PluginDef::node,
    )
}

latentflow_plugin_api::export_plugin!(plugin());
