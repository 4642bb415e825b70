//! A video ⇄ its frames (an image batch) and frame rate.

use latentflow_plugin_api::sdk::prelude::*;
use latentflow_plugin_api::sdk::video::Video;

fn from_frames(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let fps = match inputs.get("fps")? {
        Value::None => p.f64("fps")?,
        v => v
            .as_float()
            .ok_or_else(|| NodeError::invalid("input `fps` must be a number"))?,
    };
    let video = Video::new(inputs.tensor("image")?.clone(), fps)?;
    Ok(vec![video.into_value()])
}

fn to_frames(_: &Ctx, inputs: &Inputs, _: &Params) -> Result<Vec<Value>, NodeError> {
    let video = Video::from_value(inputs.get("video")?)?;
    let count = video.len() as i64;
    let fps = video.fps;
    Ok(vec![
        Value::Tensor(video.frames),
        Value::Float(fps),
        Value::Int(count),
    ])
}

pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("video.from_frames", from_frames)
            .doc("A video of an image batch's images, one frame each, at `fps`.")
            .input("image", PortType::Image, "F×H×W×3 frames in [0, 1]")
            .optional_input("fps", PortType::Float, "frames per second (e.g. from video.to_frames); overrides the parameter")
            .output("video", PortType::Video, "the video")
            .param(Param::float("fps").default(8.0).range(0.001, 1000.0).doc("frames per second, when the `fps` input is not connected")),
        NodeDef::new("video.to_frames", to_frames)
            .doc("A video's frames as an image batch (to run image nodes on each frame), its frame rate and its frame count.")
            .input("video", PortType::Video, "the video")
            .output("image", PortType::Image, "F×H×W×3 frames")
            .output("fps", PortType::Float, "frames per second")
            .output("frames", PortType::Int, "frame count F"),
    ]
}
