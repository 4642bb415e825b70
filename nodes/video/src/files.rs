//! Video files: `video.load` (GIF, APNG, WebP, frame folders) and `video.save` (animated GIF,
//! APNG, WebP; atomic, with the graph embedded, progress per frame).

use std::path::Path;

use latentflow_media::{Clip, Format, Limits, MediaError};
use latentflow_plugin_api::sdk::files::{output_path, write_atomic};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_plugin_api::sdk::video::Video;

use crate::fail;

fn media_error(e: MediaError) -> NodeError {
    match e {
        MediaError::TooLarge { .. } => NodeError::too_large(format!(
            "{e} (set LATENTFLOW_ALLOC_LIMIT to change the limit)"
        )),
        MediaError::Invalid(_) | MediaError::Decode { .. } | MediaError::Io { .. } => {
            NodeError::invalid(e.to_string())
        }
        MediaError::Encode { .. } => fail(e),
    }
}

fn load(ctx: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = p.str("path")?;
    // The frames become f32 (4 bytes per channel value): the 8-bit clip may take a quarter.
    let limits = Limits {
        max_bytes: ctx.alloc_limit() / 4,
        ..Limits::default()
    };
    let clip = latentflow_media::read(Path::new(path), limits).map_err(media_error)?;
    let start = p.usize("start")?;
    let every = p.usize("every")?.max(1);
    let take = match p.usize("max_frames")? {
        0 => usize::MAX,
        n => n,
    };
    let fps_param = p.f64("fps")?;
    let own_fps = clip.fps(0.0);
    let picked: Vec<&Vec<u8>> = clip
        .frames
        .iter()
        .skip(start)
        .step_by(every)
        .take(take)
        .collect();
    if picked.is_empty() {
        return Err(NodeError::invalid(format!(
            "{path} has {} frames: none from frame {start}",
            clip.frames.len()
        )));
    }
    let fps = if fps_param > 0.0 {
        fps_param
    } else if own_fps > 0.0 {
        own_fps / every as f64
    } else {
        8.0
    };
    let (w, h) = (clip.width as usize, clip.height as usize);
    ctx.check_alloc("the frames", &[picked.len(), h, w, 3], 4)?;
    let mut data = Vec::with_capacity(picked.len() * h * w * 3);
    for f in &picked {
        data.extend(f.iter().map(|&b| b as f32 / 255.0));
    }
    let frames = Tensor::from_vec(data, &[picked.len(), h, w, 3])?;
    ctx.info(&format!(
        "read {} frames of {w}×{h} at {fps:.3} fps from {path}",
        picked.len()
    ));
    Ok(vec![Video::new(frames, fps)?.into_value()])
}

fn save(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let video = Video::from_value(inputs.get("video")?)?;
    let filename = p.str("filename")?;
    let format = match p.str("format")? {
        "auto" => {
            let ext = Path::new(filename)
                .extension()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            Format::from_extension(&ext).ok_or_else(|| {
                NodeError::invalid(format!(
                    "cannot tell the video format of `{filename}`: name it .gif, .png/.apng, .webp or .mp4, or set `format`"
                ))
            })?
        }
        other => Format::from_extension(other)
            .ok_or_else(|| NodeError::invalid(format!("unknown video format `{other}`")))?,
    };
    let (h, w) = video.size();
    let n = video.len();
    let data = video.frames.to_f32_vec()?;
    let per = h * w * 3;
    let frames: Vec<Vec<u8>> = data
        .chunks_exact(per)
        .map(|f| {
            f.iter()
                .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect()
        })
        .collect();
    let clip = Clip::at_fps(w as u32, h as u32, frames, video.fps);
    let path = output_path(&ctx.output_dir(), filename)?;
    let metadata = ctx.run_metadata();
    let mut result = Ok(());
    write_atomic(&path, |f| {
        let mut out = std::io::BufWriter::new(f);
        let mut progress = |done: usize, total: usize| {
            if result.is_ok() {
                result = ctx.progress(done as u64, total as u64, "frames written");
            }
        };
        latentflow_media::write(&mut out, format, &clip, Some(&metadata), &mut progress)
            .map_err(std::io::Error::other)?;
        std::io::Write::flush(&mut out)
    })?;
    result?;
    ctx.info(&format!(
        "wrote {n} frames ({}) to {}",
        format.name(),
        path.display()
    ));
    Ok(vec![Value::from(path.to_string_lossy().into_owned())])
}

pub fn nodes() -> Vec<NodeDef> {
    let formats: Vec<&str> = std::iter::once("auto")
        .chain(Format::ALL.iter().map(|f| f.name()))
        .collect();
    vec![
        NodeDef::new("video.load", load)
            .doc("Loads a video: an animated GIF, APNG or WebP (a still one gives one frame), an MP4 (H.264), or a folder of PNG/JPEG/WebP frames in natural order of their names. Transparent pixels become black.")
            .output("video", PortType::Video, "the frames and their rate")
            .param(Param::path("path").doc("a file or a folder of frames (relative to the graph file)"))
            .param(Param::float("fps").default(0.0).range(0.0, 1000.0).doc("frame rate; 0: the file's own (8 for folders and stills)"))
            .param(Param::int("start").default(0).min(0.0).doc("first frame kept"))
            .param(Param::int("every").default(1).range(1.0, 10000.0).doc("keep every n-th frame (the frame rate divides by n)"))
            .param(Param::int("max_frames").default(0).min(0.0).doc("the most frames kept; 0: all")),
        NodeDef::new("video.save", save)
            .doc("Saves a video atomically inside the output folder as an animated GIF, APNG or WebP, with the graph embedded (an iTXt chunk in APNG as in our PNGs, XMP in GIF and WebP), or as an MP4 (H.264 by OpenH264; lossy, even sides, no embedded graph), reporting each frame. APNG and WebP are lossless; GIF keeps 256 colours a frame and delays in centiseconds.")
            .side_effects()
            .input("video", PortType::Video, "the video")
            .output("file", PortType::String, "the written path")
            .param(Param::string("filename").default("video.webp").doc("file name inside the output folder"))
            .param(Param::choice("format", &formats).default("auto").doc("auto: from the extension")),
    ]
}
