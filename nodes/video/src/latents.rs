//! Video latents (N×C×F×H×W) from and to frame-wise latents ((N·F)×C×H×W, what image models and
//! VAEs take), and seeded noise.

use candle_core::Device;
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_plugin_api::sdk::video::video_latent_shape;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::fail;

fn from_batch(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let t = inputs.tensor("latent")?;
    let [nf, c, h, w] = match t.shape()[..] {
        [a, b, c, d] => [a, b, c, d],
        ref s => {
            return Err(NodeError::invalid(format!(
                "`latent` must be N×C×H×W frame latents, got shape {s:?}"
            )))
        }
    };
    let f = match p.usize("frames")? {
        0 => nf,
        f => f,
    };
    if nf % f != 0 {
        return Err(NodeError::invalid(format!(
            "{nf} frame latents do not split into videos of {f} frames"
        )));
    }
    let x = to_candle(t, &Device::Cpu)?;
    let v = x
        .reshape((nf / f, f, c, h, w))
        .and_then(|v| v.permute((0, 2, 1, 3, 4)))
        .and_then(|v| v.contiguous())
        .map_err(fail)?;
    Ok(vec![Value::Tensor(from_candle(&v)?)])
}

fn to_batch(_: &Ctx, inputs: &Inputs, _: &Params) -> Result<Vec<Value>, NodeError> {
    let t = inputs.tensor("video_latent")?;
    let [n, c, f, h, w] = video_latent_shape("video_latent", t)?;
    let x = to_candle(t, &Device::Cpu)?;
    let b = x
        .permute((0, 2, 1, 3, 4))
        .and_then(|v| v.contiguous())
        .and_then(|v| v.reshape((n * f, c, h, w)))
        .map_err(fail)?;
    Ok(vec![Value::Tensor(from_candle(&b)?), Value::Int(f as i64)])
}

fn noise(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let dims = match inputs.opt_tensor("like")? {
        Some(t) => video_latent_shape("like", t)?,
        None => shape_from(p)?,
    };
    ctx.check_alloc("a video latent of shape", &dims, 4)?;
    let mut rng = Ctx::rng_from(p.seed("seed")?);
    let data: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    Ok(vec![Value::Tensor(Tensor::from_vec(data, &dims)?)])
}

/// N×C×F×h×w from the size parameters.
fn shape_from(p: &Params) -> Result<[usize; 5], NodeError> {
    let down = p.usize("downscale")?.max(1);
    let (w, h) = (p.usize("width")?, p.usize("height")?);
    if w % down != 0 || h % down != 0 {
        return Err(NodeError::invalid(format!(
            "width {w} and height {h} must be multiples of the downscale factor {down}"
        )));
    }
    Ok([
        p.usize("batch")?,
        p.usize("channels")?,
        p.usize("frames")?,
        h / down,
        w / down,
    ])
}

pub fn nodes() -> Vec<NodeDef> {
    let size = |name: &str| {
        Param::int(name)
            .default(512)
            .range(8.0, 16384.0)
            .doc("frame size in pixels")
    };
    vec![
        NodeDef::new("video.latent_from_batch", from_batch)
            .doc("Frame-wise latents (N·F)×C×H×W, frames of each video consecutive, as N video latents N×C×F×H×W.")
            .input("latent", PortType::latent(Dim::var("C")), "(N·F)×C×H×W")
            .output("video_latent", PortType::video_latent(Dim::var("C")), "N×C×F×H×W")
            .param(Param::int("frames").default(0).min(0.0).doc("frames per video F; 0: one video of all")),
        NodeDef::new("video.latent_to_batch", to_batch)
            .doc("Video latents N×C×F×H×W as frame-wise latents (N·F)×C×H×W, for image models and VAEs.")
            .input("video_latent", PortType::video_latent(Dim::var("C")), "N×C×F×H×W")
            .output("latent", PortType::latent(Dim::var("C")), "(N·F)×C×H×W")
            .output("frames", PortType::Int, "F"),
        NodeDef::new("video.noise", noise)
            .doc("Standard-normal video latent noise, seeded: shaped like the `like` input when it is connected, else by the size parameters.")
            .optional_input("like", PortType::video_latent(Dim::Any), "a video latent whose shape the noise takes (the size parameters are then unused)")
            .output("noise", PortType::video_latent(Dim::Any), "N×C×F×H×W")
            .param(size("width"))
            .param(size("height"))
            .param(Param::int("frames").default(16).range(1.0, 4096.0))
            .param(Param::int("channels").default(4).range(1.0, 64.0))
            .param(Param::int("batch").default(1).range(1.0, 4096.0))
            .param(Param::int("downscale").default(8).range(1.0, 64.0).doc("pixels per latent cell"))
            .param(Param::seed("seed"))
            .allocates(
                "a video latent of shape",
                [
                    Extent::param("batch"),
                    Extent::param("channels"),
                    Extent::param("frames"),
                    Extent::ratio("height", "downscale"),
                    Extent::ratio("width", "downscale"),
                ],
                4,
            ),
    ]
}
