//! Moving pictures in and out of files.
//!
//! - [`read`] loads a GIF, an APNG, an animated WebP (or a still one of each), an MP4 (H.264), or a folder of
//!   numbered frames, composited to full RGB frames, within memory [`Limits`] checked before
//!   each frame is kept;
//! - [`write`] encodes a [`Clip`] as an animated GIF, APNG or WebP, with the run's graph embedded
//!   (an iTXt chunk in APNG, as in our PNGs; XMP in GIF and WebP, see [`xmp`]), or as an MP4
//!   (H.264 through OpenH264's bundled source, muxed by the `mp4` crate), reporting each frame
//!   written;
//! - [`embedded_graph`] reads the graph back.
//!
//! Frame rates become per-frame delays by cumulative rounding, so the clip's length stays right
//! even where the format's clock (GIF's centiseconds) cannot hold the exact delay.

mod apng;
mod clip;
mod folder;
mod gif_codec;
mod mp4_codec;
mod read;
mod webp;
pub mod xmp;

pub use clip::{delays, Clip};
pub use read::{embedded_graph, read, Limits};

use std::io::Write;
use std::path::PathBuf;

/// What can go wrong reading or writing a clip.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is not a picture we can decode.
    #[error("cannot decode {path}: {message}")]
    Decode {
        /// The path.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The decoded frames would not fit the memory limit.
    #[error("{what} would take {needed} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What was being decoded.
        what: String,
        /// Bytes it needs.
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// The clip cannot be written in this format.
    #[error("{0}")]
    Invalid(String),
    /// The encoder failed.
    #[error("cannot encode the {format} file: {message}")]
    Encode {
        /// The format.
        format: &'static str,
        /// What the encoder said.
        message: String,
    },
}

/// Formats [`write`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Animated GIF (256 colours per frame; exact when a frame has at most 256).
    Gif,
    /// Animated PNG (lossless).
    Apng,
    /// Animated WebP (lossless).
    WebP,
    /// MP4 with H.264 video (lossy, even sides; no embedded graph).
    Mp4,
}

impl Format {
    /// Every format, in the order they are listed in messages.
    pub const ALL: [Format; 4] = [Format::Gif, Format::Apng, Format::WebP, Format::Mp4];

    /// The format named by a file extension (`gif`, `png`/`apng`, `webp`), case-insensitive.
    pub fn from_extension(ext: &str) -> Option<Format> {
        match ext.to_ascii_lowercase().as_str() {
            "gif" => Some(Format::Gif),
            "png" | "apng" => Some(Format::Apng),
            "webp" => Some(Format::WebP),
            "mp4" => Some(Format::Mp4),
            _ => None,
        }
    }

    /// The format's name, as the save node's `format` parameter spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Gif => "gif",
            Format::Apng => "apng",
            Format::WebP => "webp",
            Format::Mp4 => "mp4",
        }
    }
}

/// Writes `clip` to `out` as `format`, embedding `graph` (the run's provenance JSON) when given;
/// `progress(done, total)` is called after each frame.
pub fn write(
    out: &mut dyn Write,
    format: Format,
    clip: &Clip,
    graph: Option<&str>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), MediaError> {
    clip.check()?;
    match format {
        Format::Gif => gif_codec::write(out, clip, graph, progress),
        Format::Apng => apng::write(out, clip, graph, progress),
        Format::WebP => webp::write(out, clip, graph, progress),
        Format::Mp4 => mp4_codec::write(out, clip, progress),
    }
}
