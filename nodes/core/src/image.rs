//! Image nodes: load, save (PNG with provenance, JPEG, WebP), preview, resize, crop, batches.
//!
//! Images are `N×H×W×3` f32 tensors in `[0, 1]`; masks are `N×H×W` f32 tensors in `[0, 1]`.

use std::io::BufWriter;
use std::path::Path;

use candle_core::{Device, Tensor as CTensor};
use image::{imageops::FilterType, ImageEncoder, RgbImage};
use latentflow_plugin_api::sdk::prelude::*;

use crate::util::{candle_f32, expect_rank, fail, out, output_path, write_atomic};

/// The PNG text keyword under which the run's provenance is stored.
pub const GRAPH_KEY: &str = "latentflow:graph";

/// `[N, H, W, 3]` f32 data of input `name`, with its shape.
fn image_data(inputs: &Inputs, name: &str) -> Result<(Vec<f32>, [usize; 4]), NodeError> {
    let t = inputs.tensor(name)?;
    expect_rank(name, t, 4, "N×H×W×C")?;
    let s = t.shape();
    if s[3] != 3 {
        return Err(NodeError::invalid(format!(
            "`{name}` must have 3 channels, got {}",
            s[3]
        )));
    }
    Ok((t.to_f32_vec()?, [s[0], s[1], s[2], s[3]]))
}

fn to_rgb8(data: &[f32], h: usize, w: usize) -> Result<RgbImage, NodeError> {
    let bytes: Vec<u8> = data
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    RgbImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| NodeError::failed("image buffer size mismatch"))
}

/// A decoder for the image at `path`, its format guessed from the content.
fn reader(path: &str) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>, NodeError> {
    let cannot = |e: &dyn std::fmt::Display| fail(format!("cannot load image {path}: {e}"));
    if !std::fs::metadata(path).map_err(|e| cannot(&e))?.is_file() {
        return Err(NodeError::invalid(format!("{path} is not a regular file")));
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| cannot(&e))
}

fn load_image(ctx: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = p.str("path")?;
    // The size first, from the header: a small file can claim a huge picture.
    let (w, h) = reader(path)?
        .into_dimensions()
        .map_err(|e| fail(format!("cannot load image {path}: {e}")))?;
    ctx.check_alloc(
        &format!("the image {path}"),
        &[h as usize, w as usize, 4],
        4,
    )?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(ctx.alloc_limit());
    let mut decoder = reader(path)?;
    decoder.limits(limits);
    let img = decoder
        .decode()
        .map_err(|e| fail(format!("cannot load image {path}: {e}")))?;
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    let mut mask = Vec::with_capacity((w * h) as usize);
    for px in rgba.pixels() {
        rgb.extend([px[0], px[1], px[2]].iter().map(|&b| b as f32 / 255.0));
        // Transparent pixels are the region to fill (as in ComfyUI).
        mask.push(1.0 - px[3] as f32 / 255.0);
    }
    Ok(vec![
        Value::Tensor(Tensor::from_vec(rgb, &[1, h as usize, w as usize, 3])?),
        Value::Tensor(Tensor::from_vec(mask, &[1, h as usize, w as usize])?),
    ])
}

fn numbered(filename: &str, index: usize, count: usize) -> String {
    if count == 1 {
        return filename.to_string();
    }
    let p = Path::new(filename);
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = p
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let name = format!("{stem}_{index:04}{ext}");
    match p.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.join(name).to_string_lossy().into_owned(),
        None => name,
    }
}

fn encode(encoder: impl ImageEncoder, img: &RgbImage) -> std::io::Result<()> {
    encoder
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(std::io::Error::other)
}

/// The PNG text keyword A1111 writes its generation settings under, and galleries read.
pub const PARAMETERS_KEY: &str = "parameters";

/// The A1111-style settings the host prepared for save node `node` (in the run metadata's
/// `parameters` object), with the image size appended.
fn parameters_text(metadata: &str, node: &str, w: usize, h: usize) -> Option<String> {
    let meta: serde_json::Value = serde_json::from_str(metadata).ok()?;
    let text = meta.get("parameters")?.get(node)?.as_str()?;
    Some(format!("{text}, Size: {w}x{h}"))
}

fn write_png(
    path: &Path,
    img: &RgbImage,
    metadata: &str,
    parameters: Option<&str>,
) -> Result<(), NodeError> {
    write_atomic(path, |f| {
        let mut enc = png::Encoder::new(BufWriter::new(f), img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        if let Some(text) = parameters {
            // tEXt is Latin-1; prompts are often not, so non-Latin-1 text goes in iTXt.
            if text.chars().all(|c| (c as u32) < 256) {
                enc.add_text_chunk(PARAMETERS_KEY.to_string(), text.to_string())
            } else {
                enc.add_itxt_chunk(PARAMETERS_KEY.to_string(), text.to_string())
            }
            .map_err(std::io::Error::other)?;
        }
        enc.add_itxt_chunk(GRAPH_KEY.to_string(), metadata.to_string())
            .map_err(std::io::Error::other)?;
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(img.as_raw())
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
}

fn save(
    ctx: &Ctx,
    inputs: &Inputs,
    filename: &str,
    format: &str,
    quality: u8,
) -> Result<Vec<String>, NodeError> {
    let (data, [n, h, w, _]) = image_data(inputs, "image")?;
    let format = match format {
        "auto" => Path::new(filename)
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_else(|| "png".into()),
        f => f.to_string(),
    };
    let metadata = ctx.run_metadata();
    let parameters = parameters_text(&metadata, &ctx.node_id(), w, h);
    let mut written = Vec::with_capacity(n);
    let per = h * w * 3;
    for i in 0..n {
        let img = to_rgb8(&data[i * per..(i + 1) * per], h, w)?;
        let path = output_path(&ctx.output_dir(), &numbered(filename, i, n))?;
        match format.as_str() {
            "png" => write_png(&path, &img, &metadata, parameters.as_deref())?,
            "jpg" | "jpeg" => write_atomic(&path, |f| {
                encode(
                    image::codecs::jpeg::JpegEncoder::new_with_quality(BufWriter::new(f), quality),
                    &img,
                )
            })?,
            "webp" => write_atomic(&path, |f| {
                encode(
                    image::codecs::webp::WebPEncoder::new_lossless(BufWriter::new(f)),
                    &img,
                )
            })?,
            other => {
                return Err(NodeError::invalid(format!(
                    "unknown image format `{other}` (png, jpeg, webp)"
                )))
            }
        }
        ctx.info(&format!("wrote {}", path.display()));
        written.push(path.to_string_lossy().into_owned());
    }
    Ok(written)
}

fn save_image(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let quality = p.int("quality")?.clamp(1, 100) as u8;
    let written = save(ctx, inputs, p.str("filename")?, p.str("format")?, quality)?;
    Ok(vec![Value::List(
        written.into_iter().map(Value::from).collect(),
    )])
}

fn preview_image(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (data, [n, h, w, _]) = image_data(inputs, "image")?;
    let max = p.int("max_size")?.max(1) as u32;
    let metadata = ctx.run_metadata();
    let per = h * w * 3;
    let mut written = Vec::new();
    for i in 0..n {
        let img = to_rgb8(&data[i * per..(i + 1) * per], h, w)?;
        let scale = (max as f32 / (w.max(h) as f32)).min(1.0);
        let (tw, th) = (
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        );
        let small = image::imageops::resize(&img, tw, th, FilterType::Triangle);
        let name = numbered(&format!("previews/{}.png", ctx.node_id()), i, n);
        let path = output_path(&ctx.output_dir(), &name)?;
        write_png(&path, &small, &metadata, None)?;
        written.push(Value::from(path.to_string_lossy().into_owned()));
    }
    Ok(vec![Value::List(written.into_iter().collect())])
}

fn resize_image(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (data, [n, h, w, _]) = image_data(inputs, "image")?;
    let (tw, th) = (p.usize("width")?, p.usize("height")?);
    ctx.check_alloc("the resized image", &[n, th, tw, 3], 4)?;
    let (tw, th) = (tw as u32, th as u32);
    let filter = match p.str("method")? {
        "nearest" => FilterType::Nearest,
        "bicubic" => FilterType::CatmullRom,
        "lanczos" => FilterType::Lanczos3,
        _ => FilterType::Triangle,
    };
    let per = h * w * 3;
    let mut outs = Vec::with_capacity(n);
    for i in 0..n {
        // Resize in f32 to avoid quantising twice.
        let buf = image::ImageBuffer::<image::Rgb<f32>, Vec<f32>>::from_raw(
            w as u32,
            h as u32,
            data[i * per..(i + 1) * per].to_vec(),
        )
        .ok_or_else(|| NodeError::failed("image buffer size mismatch"))?;
        outs.push(image::imageops::resize(&buf, tw, th, filter));
    }
    let mut flat = Vec::with_capacity(n * (tw * th * 3) as usize);
    for o in outs {
        flat.extend(o.into_raw());
    }
    Ok(vec![Value::Tensor(Tensor::from_vec(
        flat,
        &[n, th as usize, tw as usize, 3],
    )?)])
}

fn crop_image(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let img = candle_f32(inputs.tensor("image")?)?;
    let (_, h, w, _) = img.dims4().map_err(fail)?;
    let (x, y) = (p.usize("x")?, p.usize("y")?);
    let (cw, ch) = (p.usize("width")?, p.usize("height")?);
    if x + cw > w || y + ch > h {
        return Err(NodeError::failed(format!(
            "crop {cw}×{ch} at ({x}, {y}) does not fit in a {w}×{h} image"
        )));
    }
    let c = img
        .narrow(1, y, ch)
        .and_then(|t| t.narrow(2, x, cw))
        .map_err(fail)?;
    Ok(vec![out(&c.contiguous().map_err(fail)?)?])
}

fn composite(_: &Ctx, inputs: &Inputs, _: &Params) -> Result<Vec<Value>, NodeError> {
    let dst = candle_f32(inputs.tensor("destination")?)?;
    let src = candle_f32(inputs.tensor("source")?)?;
    let mask = candle_f32(inputs.tensor("mask")?)?;
    if dst.dims() != src.dims() {
        return Err(NodeError::failed(format!(
            "destination {:?} and source {:?} differ in shape",
            dst.dims(),
            src.dims()
        )));
    }
    let (n, h, w, _) = dst.dims4().map_err(fail)?;
    let (mn, mh, mw) = mask.dims3().map_err(fail)?;
    if (mh, mw) != (h, w) || (mn != n && mn != 1) {
        return Err(NodeError::failed(format!(
            "mask {:?} does not match images {:?}",
            mask.dims(),
            dst.dims()
        )));
    }
    let m = mask
        .unsqueeze(3)
        .and_then(|m| m.broadcast_as(dst.shape()))
        .map_err(fail)?;
    let one_minus = m.affine(-1.0, 1.0).map_err(fail)?;
    let r = (dst
        .mul(&one_minus)
        .and_then(|a| src.mul(&m).and_then(|b| a.add(&b))))
    .map_err(fail)?;
    Ok(vec![out(&r)?])
}

fn image_batch(_: &Ctx, inputs: &Inputs, _: &Params) -> Result<Vec<Value>, NodeError> {
    let a = candle_f32(inputs.tensor("a")?)?;
    let b = candle_f32(inputs.tensor("b")?)?;
    if a.dims()[1..] != b.dims()[1..] {
        return Err(NodeError::failed(format!(
            "cannot batch images of shapes {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    Ok(vec![out(&CTensor::cat(&[&a, &b], 0).map_err(fail)?)?])
}

fn image_from_batch(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let img = candle_f32(inputs.tensor("image")?)?;
    let n = img.dims()[0];
    let (start, len) = (p.usize("index")?, p.usize("length")?);
    if start + len > n || len == 0 {
        return Err(NodeError::failed(format!(
            "batch has {n} images; cannot take {len} from index {start}"
        )));
    }
    Ok(vec![out(&img.narrow(0, start, len).map_err(fail)?)?])
}

fn solid_image(ctx: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (w, h, n) = (p.usize("width")?, p.usize("height")?, p.usize("batch")?);
    ctx.check_alloc("an image of shape", &[n, h, w, 3], 4)?;
    let rgb = [
        p.f64("red")? as f32,
        p.f64("green")? as f32,
        p.f64("blue")? as f32,
    ];
    let t = CTensor::new(&rgb, &Device::Cpu)
        .and_then(|t| t.reshape((1, 1, 1, 3)))
        .and_then(|t| t.broadcast_as((n, h, w, 3)))
        .and_then(|t| t.contiguous())
        .map_err(fail)?;
    Ok(vec![out(&t)?])
}

/// The image nodes.
pub fn nodes() -> Vec<NodeDef> {
    let size = |name: &str, default: i64| Param::int(name).default(default).range(1.0, 16384.0);
    vec![
        NodeDef::new("core.load_image", load_image)
            .doc("Loads a PNG, JPEG or WebP file. The mask is 1 where the image is transparent.")
            .output("image", PortType::Image, "N×H×W×3 in [0, 1]")
            .output("mask", PortType::Mask, "1 - alpha")
            .param(Param::path("path").doc("image file (relative to the graph file)")),
        NodeDef::new("core.save_image", save_image)
            .doc("Saves images atomically inside the output folder. PNGs embed the graph, params, seeds and plugin versions, so `latentflow run image.png` re-runs them.")
            .side_effects()
            .input("image", PortType::Image, "images to save")
            .output("files", PortType::list(PortType::String), "written paths")
            .param(Param::string("filename").default("image.png").doc("file name inside the output folder; batches get _0000, _0001, ..."))
            .param(Param::choice("format", &["auto", "png", "jpeg", "webp"]).default("auto").doc("auto: from the extension"))
            .param(Param::int("quality").default(95).range(1.0, 100.0).doc("JPEG quality")),
        NodeDef::new("core.preview_image", preview_image)
            .doc("Writes a small PNG preview to previews/<node>.png in the output folder.")
            .side_effects()
            .input("image", PortType::Image, "images to preview")
            .output("files", PortType::list(PortType::String), "written paths")
            .param(Param::int("max_size").default(256).range(8.0, 4096.0).doc("longest side in pixels")),
        NodeDef::new("core.resize_image", resize_image)
            .doc("Resizes images.")
            .input("image", PortType::Image, "images")
            .output("image", PortType::Image, "resized images")
            .param(size("width", 512))
            .param(size("height", 512))
            .param(Param::choice("method", &["bilinear", "nearest", "bicubic", "lanczos"]).default("bilinear")),
        NodeDef::new("core.crop_image", crop_image)
            .doc("Crops a rectangle.")
            .input("image", PortType::Image, "images")
            .output("image", PortType::Image, "cropped images")
            .param(Param::int("x").default(0).min(0.0))
            .param(Param::int("y").default(0).min(0.0))
            .param(size("width", 512))
            .param(size("height", 512)),
        NodeDef::new("core.composite_masked", composite)
            .doc("destination × (1 − mask) + source × mask.")
            .input("destination", PortType::Image, "background")
            .input("source", PortType::Image, "foreground")
            .input("mask", PortType::Mask, "where the source shows")
            .output("image", PortType::Image, "composited images"),
        NodeDef::new("core.image_batch", image_batch)
            .doc("Concatenates two image batches.")
            .input("a", PortType::Image, "first batch")
            .input("b", PortType::Image, "second batch (same size)")
            .output("image", PortType::Image, "a then b"),
        NodeDef::new("core.image_from_batch", image_from_batch)
            .doc("Takes `length` images starting at `index`.")
            .input("image", PortType::Image, "a batch")
            .output("image", PortType::Image, "the selection")
            .param(Param::int("index").default(0).min(0.0))
            .param(Param::int("length").default(1).min(1.0)),
        NodeDef::new("core.solid_image", solid_image)
            .doc("An image of one colour.")
            .output("image", PortType::Image, "N×H×W×3")
            .param(size("width", 512))
            .param(size("height", 512))
            .param(Param::int("batch").default(1).range(1.0, 4096.0))
            .param(Param::float("red").default(0.0).range(0.0, 1.0))
            .param(Param::float("green").default(0.0).range(0.0, 1.0))
            .param(Param::float("blue").default(0.0).range(0.0, 1.0))
            .allocates(
                "an image of shape",
                ["batch", "height", "width"]
                    .map(Extent::param)
                    .into_iter()
                    .chain([Extent::Fixed(3)]),
                4,
            ),
    ]
}
