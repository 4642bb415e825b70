//! Animated GIF out: one palette per frame (exact up to 256 colours, NeuQuant at its best
//! quality beyond), looping, the graph in an XMP application extension.

use std::io::Write;

use crate::{clip::delays, xmp, Clip, MediaError};

fn encode_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Encode {
        format: "GIF",
        message: e.to_string(),
    }
}

/// The XMP application extension: the packet's bytes as they are (readers parse them as
/// sub-blocks), then the "magic trailer" ramp 0x01, 0xFF … 0x01, 0x00 that lands any reading
/// on the block terminator.
fn xmp_extension(graph: &str) -> Vec<u8> {
    let packet = xmp::packet(graph);
    let mut out = Vec::with_capacity(packet.len() + 300);
    out.extend_from_slice(&[0x21, 0xFF, 0x0B]);
    out.extend_from_slice(b"XMP DataXMP");
    out.extend_from_slice(packet.as_bytes());
    out.push(0x01);
    out.extend((0..=255u8).rev());
    out.push(0x00);
    out
}

pub(crate) fn write(
    out: &mut dyn Write,
    clip: &Clip,
    graph: Option<&str>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), MediaError> {
    let side = |v: u32| {
        u16::try_from(v).map_err(|_| {
            MediaError::Invalid(format!(
                "GIF frames are at most 65535 pixels wide and high, this clip is {}×{}",
                clip.width, clip.height
            ))
        })
    };
    let (w, h) = (side(clip.width)?, side(clip.height)?);
    let mut enc = gif::Encoder::new(out, w, h, &[]).map_err(encode_error)?;
    enc.set_repeat(gif::Repeat::Infinite)
        .map_err(encode_error)?;
    if let Some(g) = graph {
        enc.get_mut()
            .write_all(&xmp_extension(g))
            .map_err(encode_error)?;
    }
    // GIF counts delays in centiseconds; cumulative rounding keeps the clip's length.
    let total: u64 = clip.delays_ms.iter().map(|&d| d as u64).sum();
    let fps = clip.frames.len() as f64 * 1000.0 / total.max(1) as f64;
    let centis = delays(clip.frames.len(), fps, 100.0);
    let n = clip.frames.len();
    for (i, (rgb, &cs)) in clip.frames.iter().zip(&centis).enumerate() {
        let mut frame = gif::Frame::from_rgb_speed(w, h, rgb, 1);
        frame.delay = cs.min(u16::MAX as u64) as u16;
        enc.write_frame(&frame).map_err(encode_error)?;
        progress(i + 1, n);
    }
    enc.into_inner().map_err(encode_error)?;
    Ok(())
}
