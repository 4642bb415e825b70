//! Clips in: GIF, APNG and WebP (animated or still), and folders of frames, within limits.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use image::{AnimationDecoder, ImageDecoder, RgbaImage};

use crate::{folder, xmp, Clip, MediaError};

/// How much a read may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes the decoded frames may take (RGB, all frames together).
    pub max_bytes: u64,
    /// The most frames.
    pub max_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 30,
            max_frames: 100_000,
        }
    }
}

/// Collects RGB frames, refusing the one that would pass the limits before keeping it.
pub(crate) struct Collector<'a> {
    path: &'a Path,
    limits: Limits,
    pub(crate) clip: Clip,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(path: &'a Path, limits: Limits) -> Self {
        Collector {
            path,
            limits,
            clip: Clip {
                width: 0,
                height: 0,
                frames: Vec::new(),
                delays_ms: Vec::new(),
            },
        }
    }

    /// Refuses a `w×h` picture whose decoding (RGBA) alone passes the limit.
    pub(crate) fn check_size(&self, w: u32, h: u32) -> Result<(), MediaError> {
        let needed = w as u64 * h as u64 * 4;
        if needed > self.limits.max_bytes {
            return Err(MediaError::TooLarge {
                what: format!("a {w}×{h} frame of {}", self.path.display()),
                needed,
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Adds a frame (composited over black where transparent), shown for `delay_ms`.
    pub(crate) fn push(
        &mut self,
        frame: &RgbaImage,
        delay_ms: u32,
        name: &dyn Fn() -> String,
    ) -> Result<(), MediaError> {
        let (w, h) = frame.dimensions();
        if self.clip.frames.is_empty() {
            self.clip.width = w;
            self.clip.height = h;
        } else if (w, h) != (self.clip.width, self.clip.height) {
            return Err(MediaError::Decode {
                path: self.path.to_path_buf(),
                message: format!(
                    "{} is {w}×{h}, the frames before it are {}×{}",
                    name(),
                    self.clip.width,
                    self.clip.height
                ),
            });
        }
        let count = self.clip.frames.len() + 1;
        let needed = count as u64 * w as u64 * h as u64 * 3;
        if count > self.limits.max_frames || needed > self.limits.max_bytes {
            return Err(MediaError::TooLarge {
                what: format!("{count} frames of {}", self.path.display()),
                needed,
                limit: self.limits.max_bytes,
            });
        }
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
        for px in frame.pixels() {
            let a = px[3] as u32;
            rgb.extend(
                px.0[..3]
                    .iter()
                    .map(|&c| ((c as u32 * a + 127) / 255) as u8),
            );
        }
        self.clip.frames.push(rgb);
        self.clip.delays_ms.push(delay_ms);
        Ok(())
    }
}

fn decode_error(path: &Path, e: impl std::fmt::Display) -> MediaError {
    MediaError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn open(path: &Path) -> Result<BufReader<File>, MediaError> {
    let io = |source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    if !file.metadata().map_err(io)?.is_file() {
        return Err(decode_error(path, "not a regular file"));
    }
    Ok(BufReader::new(file))
}

/// The container, from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Gif,
    Png,
    WebP,
    Mp4,
}

fn sniff(path: &Path) -> Result<Kind, MediaError> {
    let mut head = [0u8; 12];
    let mut r = open(path)?;
    let n = r.read(&mut head).map_err(|source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let head = &head[..n];
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Ok(Kind::Gif)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(Kind::Png)
    } else if head.len() == 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Ok(Kind::WebP)
    } else if head.len() >= 8 && &head[4..8] == b"ftyp" {
        Ok(Kind::Mp4)
    } else {
        Err(decode_error(
            path,
            "not a GIF, PNG/APNG, WebP or MP4 file (for a folder of frames, give the folder)",
        ))
    }
}

fn image_limits(limits: Limits) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_bytes);
    l
}

fn frames<'a>(
    path: &Path,
    frames: image::Frames<'a>,
    collector: &mut Collector<'_>,
) -> Result<(), MediaError> {
    for (i, frame) in frames.enumerate() {
        let frame = frame.map_err(|e| decode_error(path, format!("frame {i}: {e}")))?;
        let (num, den) = frame.delay().numer_denom_ms();
        let ms = num.checked_div(den).unwrap_or(0);
        collector.push(frame.buffer(), ms, &|| format!("frame {i}"))?;
    }
    Ok(())
}

fn still(
    path: &Path,
    decoder: impl ImageDecoder,
    collector: &mut Collector<'_>,
) -> Result<(), MediaError> {
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| decode_error(path, e))?;
    collector.push(&img.to_rgba8(), 0, &|| "the picture".into())
}

fn read_file(path: &Path, limits: Limits) -> Result<Clip, MediaError> {
    let mut c = Collector::new(path, limits);
    let fail = |e: image::ImageError| decode_error(path, e);
    match sniff(path)? {
        Kind::Gif => {
            let mut d = image::codecs::gif::GifDecoder::new(open(path)?).map_err(fail)?;
            let (w, h) = d.dimensions();
            c.check_size(w, h)?;
            d.set_limits(image_limits(limits)).map_err(fail)?;
            frames(path, d.into_frames(), &mut c)?;
        }
        Kind::Png => {
            let d = image::codecs::png::PngDecoder::with_limits(open(path)?, image_limits(limits))
                .map_err(fail)?;
            let (w, h) = d.dimensions();
            c.check_size(w, h)?;
            if d.is_apng().map_err(fail)? {
                frames(path, d.apng().map_err(fail)?.into_frames(), &mut c)?;
            } else {
                still(path, d, &mut c)?;
            }
        }
        Kind::Mp4 => return crate::mp4_codec::read(path, limits),
        Kind::WebP => {
            let mut d = image::codecs::webp::WebPDecoder::new(open(path)?).map_err(fail)?;
            let (w, h) = d.dimensions();
            c.check_size(w, h)?;
            d.set_limits(image_limits(limits)).map_err(fail)?;
            if d.has_animation() {
                frames(path, d.into_frames(), &mut c)?;
            } else {
                still(path, d, &mut c)?;
            }
        }
    }
    if c.clip.frames.is_empty() {
        return Err(decode_error(path, "the file holds no frames"));
    }
    Ok(c.clip)
}

/// The clip at `path`: a GIF, APNG, WebP or MP4 file (the format from its content, not its name), or
/// a folder of frames (PNG, JPEG, WebP), in natural order of their names, all of one size.
/// Frames from folders and stills have no delays (`delays_ms` all 0).
pub fn read(path: &Path, limits: Limits) -> Result<Clip, MediaError> {
    if path.is_dir() {
        folder::read(path, limits)
    } else {
        read_file(path, limits)
    }
}

fn gif_xmp(r: impl Read) -> Result<Option<Vec<u8>>, gif::DecodingError> {
    let mut opts = gif::DecodeOptions::new();
    opts.skip_frame_decoding(true);
    opts.set_memory_limit(gif::MemoryLimit::Bytes(
        std::num::NonZeroU64::new(64 << 20).unwrap_or(std::num::NonZeroU64::MIN),
    ));
    let mut d = opts.read_info(r)?;
    while d.xmp_metadata().is_none() && d.next_frame_info()?.is_some() {}
    Ok(d.xmp_metadata().map(<[u8]>::to_vec))
}

fn webp_xmp(r: impl BufRead + Seek) -> Result<Option<Vec<u8>>, image_webp::DecodingError> {
    let mut d = image_webp::WebPDecoder::new(r)?;
    d.xmp_metadata()
}

/// The graph a GIF or WebP file of ours embeds (in XMP), if any; `None` for other files. (APNGs
/// keep it in a PNG text chunk, read with the still PNGs'.)
pub fn embedded_graph(path: &Path) -> Result<Option<String>, MediaError> {
    let xmp = match sniff(path) {
        Ok(Kind::Gif) => gif_xmp(open(path)?).map_err(|e| decode_error(path, e))?,
        Ok(Kind::WebP) => webp_xmp(open(path)?).map_err(|e| decode_error(path, e))?,
        _ => None,
    };
    Ok(xmp.as_deref().and_then(xmp::graph))
}

/// `path` as an owned path, for errors.
pub(crate) fn owned(path: &Path) -> PathBuf {
    path.to_path_buf()
}
