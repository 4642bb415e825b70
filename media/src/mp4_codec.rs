//! MP4 (H.264) in and out: frames encoded by OpenH264 (the `openh264` crate, its bundled
//! source) and muxed by the `mp4` crate; read back by the same pair. Lossy (YUV 4:2:0, even
//! sides); the graph is not embedded in MP4 files.

use std::io::{Cursor, Write};
use std::path::Path;

use bytes::Bytes;
use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, FrameType};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSource};
use openh264::OpenH264API;

use crate::read::Collector;
use crate::{Clip, Limits, MediaError};

fn encode_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Encode {
        format: "MP4",
        message: e.to_string(),
    }
}

/// `nal` without its Annex B start code.
fn strip_start_code(nal: &[u8]) -> &[u8] {
    if let Some(rest) = nal.strip_prefix(&[0, 0, 0, 1]) {
        rest
    } else {
        nal.strip_prefix(&[0, 0, 1]).unwrap_or(nal)
    }
}

pub(crate) fn write(
    out: &mut dyn Write,
    clip: &Clip,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), MediaError> {
    let (w, h) = (clip.width, clip.height);
    if w % 2 != 0 || h % 2 != 0 || w > 4096 || h > 4096 {
        return Err(MediaError::Invalid(format!(
            "H.264 frames need even sides of at most 4096 pixels, this clip is {w}×{h}"
        )));
    }
    let fps = clip.fps(8.0) as f32;
    // About 0.25 bits per pixel and frame, at least 1 Mbit/s: sharp at small sizes.
    let bps = ((w * h) as f32 * fps * 0.25).max(1_000_000.0) as u32;
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(bps))
        .max_frame_rate(FrameRate::from_hz(fps));
    let mut enc =
        Encoder::with_api_config(OpenH264API::from_source(), config).map_err(encode_error)?;
    let (mut sps, mut pps) = (None, None);
    let mut samples = Vec::with_capacity(clip.frames.len());
    let n = clip.frames.len();
    for (i, rgb) in clip.frames.iter().enumerate() {
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(rgb, (w as usize, h as usize)));
        let bs = enc.encode(&yuv).map_err(encode_error)?;
        let sync = matches!(bs.frame_type(), FrameType::IDR | FrameType::I);
        let mut sample = Vec::new();
        for l in 0..bs.num_layers() {
            let Some(layer) = bs.layer(l) else { continue };
            for k in 0..layer.nal_count() {
                let Some(nal) = layer.nal_unit(k) else {
                    continue;
                };
                let nal = strip_start_code(nal);
                match nal.first().map(|b| b & 0x1f) {
                    Some(7) => sps = sps.or_else(|| Some(nal.to_vec())),
                    Some(8) => pps = pps.or_else(|| Some(nal.to_vec())),
                    Some(_) => {
                        let len = u32::try_from(nal.len()).map_err(encode_error)?;
                        sample.extend_from_slice(&len.to_be_bytes());
                        sample.extend_from_slice(nal);
                    }
                    None => {}
                }
            }
        }
        samples.push((sample, sync));
        progress(i + 1, n);
    }
    let (Some(sps), Some(pps)) = (sps, pps) else {
        return Err(encode_error("the encoder gave no SPS/PPS"));
    };
    let config = mp4::Mp4Config {
        major_brand: "isom".parse().map_err(encode_error)?,
        minor_version: 512,
        compatible_brands: ["isom", "iso2", "avc1", "mp41"]
            .iter()
            .map(|b| b.parse())
            .collect::<Result<_, _>>()
            .map_err(encode_error)?,
        timescale: 1000,
    };
    let mut muxer =
        mp4::Mp4Writer::write_start(Cursor::new(Vec::new()), &config).map_err(encode_error)?;
    muxer
        .add_track(&mp4::TrackConfig {
            track_type: mp4::TrackType::Video,
            timescale: 1000,
            language: "und".into(),
            media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                width: w as u16,
                height: h as u16,
                seq_param_set: sps,
                pic_param_set: pps,
            }),
        })
        .map_err(encode_error)?;
    let mut start = 0u64;
    for ((bytes, sync), &ms) in samples.into_iter().zip(&clip.delays_ms) {
        let duration = ms.max(1);
        muxer
            .write_sample(
                1,
                &mp4::Mp4Sample {
                    start_time: start,
                    duration,
                    rendering_offset: 0,
                    is_sync: sync,
                    bytes: Bytes::from(bytes),
                },
            )
            .map_err(encode_error)?;
        start += duration as u64;
    }
    muxer.write_end().map_err(encode_error)?;
    out.write_all(&muxer.into_writer().into_inner())
        .map_err(encode_error)
}

fn decode_error(path: &Path, e: impl std::fmt::Display) -> MediaError {
    MediaError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The bytes before the first child of a box whose payload is more boxes (a full box's
/// version and flags, a sample description's entry count, a sample entry's fields); `None`
/// for a box without children. `in_list`: the box is an item of a metadata list (`ilst`),
/// which holds `data` boxes.
fn children_offset(kind: &[u8; 4], payload: &[u8], in_list: bool) -> Option<usize> {
    if in_list {
        return Some(0);
    }
    match kind {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"dinf" | b"edts" | b"mvex" | b"moof"
        | b"traf" | b"udta" | b"mfra" | b"ilst" => Some(0),
        // ISO's meta is a full box; QuickTime's starts with its hdlr at once.
        b"meta" => Some(if payload.get(4..8) == Some(b"hdlr") {
            0
        } else {
            4
        }),
        b"stsd" | b"dref" => Some(8),
        b"mp4a" => Some(28),
        b"avc1" | b"avc3" | b"hev1" | b"hvc1" => Some(78),
        _ => None,
    }
}

/// Checks that every box, down through the containers the demuxer reads, lies inside its
/// parent and has a size of its own, so no size read from the file can exceed the file (a
/// hostile size would otherwise become an allocation) or stall the demuxer (a box of size 0
/// inside another is read forever). At the top level a size of 0 ends the file, as the
/// demuxer reads it.
fn check_boxes(bytes: &[u8], depth: usize, in_list: bool) -> Result<(), String> {
    if depth > 16 {
        return Err("boxes nested more than 16 deep".into());
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(format!(
                "{} stray bytes where a box should start",
                rest.len()
            ));
        }
        let size32 = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
        let kind: [u8; 4] = [rest[4], rest[5], rest[6], rest[7]];
        let name = String::from_utf8_lossy(&kind).into_owned();
        let (size, header) = match size32 {
            0 if depth == 0 => return Ok(()),
            0 => return Err(format!("box `{name}` has size 0 inside another box")),
            1 => {
                let large = rest
                    .get(8..16)
                    .ok_or("a 64-bit box size is cut short")?
                    .iter()
                    .fold(0u64, |a, &b| a << 8 | b as u64);
                (large, 16)
            }
            n => (n, 8),
        };
        if size < header || size > rest.len() as u64 {
            return Err(format!(
                "box `{name}` says {size} bytes where {} remain",
                rest.len()
            ));
        }
        let (this, next) = rest.split_at(size as usize);
        let payload = &this[header as usize..];
        if let Some(skip) = children_offset(&kind, payload, in_list) {
            let inner = payload
                .get(skip..)
                .ok_or_else(|| format!("box `{name}` is cut short"))?;
            check_boxes(inner, depth + 1, &kind == b"ilst")?;
        }
        rest = next;
    }
    Ok(())
}

pub(crate) fn read(path: &Path, limits: Limits) -> Result<Clip, MediaError> {
    let io = |source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    check_boxes(&bytes, 0, false).map_err(|e| decode_error(path, e))?;
    // The demuxer still unwraps some of what it reads (sample times); a file that makes it
    // panic is refused like any malformed one.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| demux(path, &bytes, limits)))
        .unwrap_or_else(|_| Err(decode_error(path, "malformed MP4 (the demuxer gave up)")))
}

fn demux(path: &Path, bytes: &[u8], limits: Limits) -> Result<Clip, MediaError> {
    let size = bytes.len() as u64;
    let mut demux =
        mp4::Mp4Reader::read_header(Cursor::new(bytes), size).map_err(|e| decode_error(path, e))?;
    let track = demux
        .tracks()
        .values()
        .find(|t| t.sequence_parameter_set().is_ok())
        .ok_or_else(|| decode_error(path, "no H.264 video track"))?;
    let (id, w, h) = (
        track.track_id(),
        track.width() as u32,
        track.height() as u32,
    );
    let scale = track.timescale().max(1) as u64;
    let mut head = Vec::new();
    for set in [
        track.sequence_parameter_set(),
        track.picture_parameter_set(),
    ] {
        head.extend_from_slice(&[0, 0, 0, 1]);
        head.extend_from_slice(set.map_err(|e| decode_error(path, e))?);
    }
    // Every sample must fit in the file before it is read (the demuxer allocates its size).
    let stsz = &track.trak.mdia.minf.stbl.stsz;
    if stsz.sample_size as u64 > size || stsz.sample_sizes.iter().any(|&n| n as u64 > size) {
        return Err(decode_error(path, "a sample is larger than the file"));
    }
    let count = demux.sample_count(id).map_err(|e| decode_error(path, e))?;
    if count as usize > limits.max_frames {
        return Err(decode_error(
            path,
            format!(
                "{count} samples: more than the {} frames allowed",
                limits.max_frames
            ),
        ));
    }
    let mut c = Collector::new(path, limits);
    c.check_size(w, h)?;
    let mut dec = openh264::decoder::Decoder::new().map_err(|e| decode_error(path, e))?;
    dec.decode(&head).map_err(|e| decode_error(path, e))?;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    for i in 1..=count {
        let Some(sample) = demux
            .read_sample(id, i)
            .map_err(|e| decode_error(path, e))?
        else {
            continue;
        };
        // Length-prefixed NAL units → Annex B.
        let mut annex_b = Vec::with_capacity(sample.bytes.len() + 16);
        let mut rest = &sample.bytes[..];
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let nal = rest
                .get(4..4 + len)
                .ok_or_else(|| decode_error(path, format!("sample {i} is cut short")))?;
            annex_b.extend_from_slice(&[0, 0, 0, 1]);
            annex_b.extend_from_slice(nal);
            rest = &rest[4 + len..];
        }
        let ms = (sample.duration as u64 * 1000 / scale) as u32;
        if let Some(yuv) = dec.decode(&annex_b).map_err(|e| decode_error(path, e))? {
            let (dw, dh) = yuv.dimensions();
            if (dw, dh) != (w as usize, h as usize) {
                return Err(decode_error(
                    path,
                    format!("frame {i} decodes to {dw}×{dh}, the track says {w}×{h}"),
                ));
            }
            yuv.write_rgb8(&mut rgb);
            let img = image::RgbImage::from_raw(w, h, rgb.clone())
                .ok_or_else(|| decode_error(path, "frame size mismatch"))?;
            let rgba = image::DynamicImage::ImageRgb8(img).to_rgba8();
            c.push(&rgba, ms, &|| format!("frame {i}"))?;
        }
    }
    if c.clip.frames.is_empty() {
        return Err(decode_error(path, "the file holds no frames"));
    }
    Ok(c.clip)
}
