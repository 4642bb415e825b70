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
use latentflow_sampling::schedulers::NoiseTable;
use latentflow_sampling::{Config, Kind, Prediction, Scheduler, Spacing};

/// Reads the scheduler settings shared by the nodes.
pub fn config_from(p: &Params) -> Result<Config, NodeError> {
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
        _ => Prediction::Epsilon,
    };
    cfg.spacing = Spacing::parse(p.str("spacing")?);
    cfg.karras = p.bool("karras")?;
    cfg.table = training_schedule(p)?;
    Ok(cfg)
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
    let sched = Scheduler::new(config_from(p)?, p.usize("steps")?)
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
    .param(
        Param::choice("beta_schedule", &["scaled_linear", "linear"])
            .default("scaled_linear")
            .doc("the model's training schedule: scaled_linear for Stable Diffusion, linear for AnimateDiff's motion modules"),
    )
    .param(Param::float("beta_start").default(0.00085).range(1e-8, 1.0))
    .param(Param::float("beta_end").default(0.012).range(1e-8, 1.0))
}

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    let schedule = schedule_params(
        NodeDef::new("samplers.schedule", schedule)
            .doc("The timesteps and σ of a scheduler for a number of steps (Stable Diffusion's training schedule).")
            .output("timesteps", PortType::tensor(Some(DType::F32), Dim::Fixed(1)), "timestep per step")
            .output("sigmas", PortType::tensor(Some(DType::F32), Dim::Fixed(1)), "σ per step and a final 0 (σ-based schedulers; empty otherwise)")
            .output("init_noise_sigma", PortType::Float, "scale of the initial noise")
            .param(Param::choice("prediction", &["epsilon", "v_prediction", "sample"]).default("epsilon")),
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
