//! MP4 (H.264) in and out: frames encoded by OpenH264 (the `openh264` crate, its bundled
//! source) and muxed by the `mp4` crate; read back by the same pair. Lossy (YUV 4:2:0, even
//! sides); the graph is not embedded in MP4 files.

use std::io::{BufReader, Cursor, Write};
use std::path::Path;

use bytes::Bytes;
use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, FrameType};
use openh264::formats::{RgbSliceU8, YUVBuffer};
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

pub(crate) fn read(path: &Path, limits: Limits) -> Result<Clip, MediaError> {
    let io = |source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut demux = mp4::Mp4Reader::read_header(BufReader::new(file), size)
        .map_err(|e| decode_error(path, e))?;
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
    let count = demux.sample_count(id).map_err(|e| decode_error(path, e))?;
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
