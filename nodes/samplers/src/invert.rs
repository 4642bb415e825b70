//! `samplers.ddim_invert` and `samplers.ddim_invert_video`: BIVDiff's mixed-inversion step
//! (`latentflow_sampling::invert::reverse_ddim`) with any denoiser — an image model on a batch
//! of frames, or a video model on a video latent.

use latentflow_plugin_api::sdk::candle::from_candle;
use latentflow_plugin_api::sdk::denoiser::{Conditioning, DenoiserClient, PredictionKind};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::invert::reverse_ddim;
use latentflow_sampling::{Config, Kind, Scheduler, Spacing};

use crate::sample::{candle, node_error, prediction, Driven};

fn invert(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let client = DenoiserClient::new(inputs.object("model")?)?;
    let z0 = candle(inputs.tensor("latent")?)?;
    let mut cfg = Config::sd(Kind::Ddim { eta: 0.0 });
    cfg.spacing = Spacing::parse(p.str("spacing")?);
    cfg.table = crate::training_schedule(p)?;
    let kind = match p.str("prediction")? {
        "auto" => prediction(client.info(ctx.host())?.prediction),
        other => prediction(PredictionKind::parse(other)?),
    };
    cfg.prediction = kind;
    let scheduler =
        Scheduler::new(cfg, p.usize("steps")?).map_err(|e| NodeError::invalid(e.to_string()))?;
    let context = candle(inputs.tensor("conditioning")?)?;
    let mut model = Driven {
        ctx,
        client,
        cond: Conditioning {
            context: Some(from_candle(&context)?),
            ..Default::default()
        },
        kind,
    };
    let z = reverse_ddim(&mut model, &z0, &scheduler).map_err(node_error)?;
    Ok(vec![Value::Tensor(from_candle(&z)?)])
}

fn common(d: NodeDef, latent: fn(Dim) -> PortType, what: &str) -> NodeDef {
    let f = || Family::var("F");
    d.input("model", PortType::handle_of("Denoiser", f()), "the denoiser")
        .input("conditioning", PortType::conditioning_of(Dim::Any, f()), "the unconditional text (BIVDiff inverts without guidance, with the empty prompt's encoding)")
        .input("latent", latent(Dim::var("C")), &format!("the clean {what} z0"))
        .output("latent", latent(Dim::var("C")), &format!("the inverted {what} z_T"))
        .param(Param::int("steps").default(50).range(1.0, 1000.0).doc("DDIM steps (BIVDiff: 50)"))
        .param(Param::choice("spacing", &["default", "leading", "trailing", "linspace"]).default("default").doc("diffusers timestep_spacing; default: DDIM's leading"))
        .param(Param::choice("beta_schedule", &["scaled_linear", "linear"]).default("scaled_linear").doc("the model's training schedule"))
        .param(Param::float("beta_start").default(0.00085).range(1e-8, 1.0))
        .param(Param::float("beta_end").default(0.012).range(1e-8, 1.0))
        .param(Param::choice("prediction", &["auto", "epsilon", "v_prediction", "sample"]).default("auto").doc("auto: ask the model"))
}

const DOC: &str = "BIVDiff's DDIM inversion (its reverse_step): over the DDIM timesteps in ascending order, x̂0 = (z − √(1−ᾱ_t)·ε̂)/√ᾱ_t, then z ← √ᾱ_t'·x̂0 + √(1−ᾱ_t')·ε̂ at t' = min(998, t + 1000/steps). No guidance.";

/// The image-latent node (an image model on each frame of a batch).
pub fn node() -> NodeDef {
    common(
        NodeDef::new("samplers.ddim_invert", invert).doc(&format!(
            "{DOC} On image latents: with an image model, every frame of a batch on its own."
        )),
        PortType::latent,
        "latent",
    )
}

/// The video-latent node (a video model).
pub fn video_node() -> NodeDef {
    common(
        NodeDef::new("samplers.ddim_invert_video", invert).doc(&format!(
            "{DOC} On video latents, with a video model (sd.animatediff)."
        )),
        PortType::video_latent,
        "video latent",
    )
}
