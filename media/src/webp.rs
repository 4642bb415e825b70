//! Animated WebP out: each frame encoded losslessly (VP8L) by `image-webp`, wrapped in the
//! extended container's ANMF chunks after VP8X and ANIM, the graph in an XMP chunk.

use std::io::Write;

use crate::{xmp, Clip, MediaError};

/// VP8L's largest side.
const MAX_SIDE: u32 = 16384;

fn encode_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Encode {
        format: "WebP",
        message: e.to_string(),
    }
}

fn u24(v: u32) -> [u8; 3] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// A RIFF chunk: FourCC, little-endian size, payload, a pad byte to even length.
fn chunk(out: &mut Vec<u8>, fourcc: &[u8; 4], payload: &[u8]) -> Result<(), MediaError> {
    let len = u32::try_from(payload.len()).map_err(encode_error)?;
    out.extend_from_slice(fourcc);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    if payload.len() % 2 == 1 {
        out.push(0);
    }
    Ok(())
}

/// The VP8L chunk (header, payload and padding) of a simple lossless WebP file.
fn vp8l_chunk(file: &[u8]) -> Result<&[u8], MediaError> {
    let bad = || encode_error("the frame encoder gave no VP8L chunk");
    if file.len() < 12 || &file[..4] != b"RIFF" || &file[8..12] != b"WEBP" {
        return Err(bad());
    }
    let mut at = 12;
    while at + 8 <= file.len() {
        let size = u32::from_le_bytes([file[at + 4], file[at + 5], file[at + 6], file[at + 7]]);
        let end = at + 8 + size as usize + (size as usize % 2);
        if end > file.len() {
            return Err(bad());
        }
        if &file[at..at + 4] == b"VP8L" {
            return Ok(&file[at..end]);
        }
        at = end;
    }
    Err(bad())
}

pub(crate) fn write(
    out: &mut dyn Write,
    clip: &Clip,
    graph: Option<&str>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), MediaError> {
    let (w, h) = (clip.width, clip.height);
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(MediaError::Invalid(format!(
            "WebP frames are at most {MAX_SIDE} pixels wide and high, this clip is {w}×{h}"
        )));
    }
    let mut body = Vec::new();
    // VP8X: animation, and XMP when a graph goes in; canvas size minus one.
    let mut vp8x = vec![0x02 | if graph.is_some() { 0x04 } else { 0 }, 0, 0, 0];
    vp8x.extend_from_slice(&u24(w - 1));
    vp8x.extend_from_slice(&u24(h - 1));
    chunk(&mut body, b"VP8X", &vp8x)?;
    // ANIM: background colour (BGRA), loop forever.
    chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0])?;
    let n = clip.frames.len();
    for (i, (rgb, &ms)) in clip.frames.iter().zip(&clip.delays_ms).enumerate() {
        let mut file = Vec::new();
        image_webp::WebPEncoder::new(&mut file)
            .encode(rgb, w, h, image_webp::ColorType::Rgb8)
            .map_err(encode_error)?;
        let mut anmf = Vec::new();
        anmf.extend_from_slice(&u24(0)); // x / 2
        anmf.extend_from_slice(&u24(0)); // y / 2
        anmf.extend_from_slice(&u24(w - 1));
        anmf.extend_from_slice(&u24(h - 1));
        anmf.extend_from_slice(&u24(ms.min(0xFF_FFFF)));
        // Do not blend (every frame is whole and opaque), no disposal.
        anmf.push(0x02);
        anmf.extend_from_slice(vp8l_chunk(&file)?);
        chunk(&mut body, b"ANMF", &anmf)?;
        progress(i + 1, n);
    }
    if let Some(g) = graph {
        chunk(&mut body, b"XMP ", xmp::packet(g).as_bytes())?;
    }
    let riff_len = u32::try_from(body.len() + 4)
        .map_err(|_| MediaError::Invalid("the WebP file would pass RIFF's 4 GiB limit".into()))?;
    out.write_all(b"RIFF").map_err(encode_error)?;
    out.write_all(&riff_len.to_le_bytes())
        .map_err(encode_error)?;
    out.write_all(b"WEBP").map_err(encode_error)?;
    out.write_all(&body).map_err(encode_error)
}
