//! Animated PNG out: lossless RGB frames, looping, the graph in an iTXt chunk under the same
//! keyword as our still PNGs.

use std::io::Write;

use crate::{Clip, MediaError};

/// The PNG text keyword holding the run's provenance (the same as still images').
pub const GRAPH_KEY: &str = "latentflow:graph";

fn encode_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Encode {
        format: "APNG",
        message: e.to_string(),
    }
}

pub(crate) fn write(
    out: &mut dyn Write,
    clip: &Clip,
    graph: Option<&str>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), MediaError> {
    let n = clip.frames.len();
    let count = u32::try_from(n).map_err(encode_error)?;
    let mut enc = png::Encoder::new(out, clip.width, clip.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_animated(count, 0).map_err(encode_error)?;
    if let Some(g) = graph {
        enc.add_itxt_chunk(GRAPH_KEY.to_string(), g.to_string())
            .map_err(encode_error)?;
    }
    let mut writer = enc.write_header().map_err(encode_error)?;
    for (i, (rgb, &ms)) in clip.frames.iter().zip(&clip.delays_ms).enumerate() {
        // Delays are a fraction of a second: milliseconds while they fit, centiseconds beyond.
        let (num, den) = match u16::try_from(ms) {
            Ok(ms) => (ms, 1000),
            Err(_) => ((ms / 10).min(u16::MAX as u32) as u16, 100),
        };
        writer.set_frame_delay(num, den).map_err(encode_error)?;
        writer.write_image_data(rgb).map_err(encode_error)?;
        progress(i + 1, n);
    }
    writer.finish().map_err(encode_error)
}
