//! Latent nodes: empty and noise latents, arithmetic, resize, crop, batches.
//!
//! Latents are `N×C×H×W` f32 tensors. Generic nodes use the type variable `C`, so the host checks
//! that both operands of `core.latent_math` have the same channel count.

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::prelude::*;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::util::{candle_f32, expect_rank, fail, out};

fn latent_in(inputs: &Inputs, name: &str) -> Result<CTensor, NodeError> {
    let t = inputs.tensor(name)?;
    expect_rank(name, t, 4, "N×C×H×W")?;
    candle_f32(t)
}

fn latent_shape(ctx: &Ctx, p: &Params) -> Result<(usize, usize, usize, usize), NodeError> {
    let down = p.usize("downscale")?.max(1);
    let (w, h) = (p.usize("width")?, p.usize("height")?);
    if w % down != 0 || h % down != 0 {
        return Err(NodeError::invalid(format!(
            "width {w} and height {h} must be multiples of the downscale factor {down}"
        )));
    }
    let shape = (p.usize("batch")?, p.usize("channels")?, h / down, w / down);
    let dims = [shape.0, shape.1, shape.2, shape.3];
    ctx.check_alloc("a latent of shape", &dims, 4)?;
    Ok(shape)
}

fn empty_latent(ctx: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let shape = latent_shape(ctx, p)?;
    Ok(vec![out(&CTensor::zeros(
        shape,
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .map_err(fail)?)?])
}

/// Standard-normal noise in row-major `N×C×H×W` order from a ChaCha8 stream seeded with `seed`.
pub fn normal_noise(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = Ctx::rng_from(seed);
    (0..len)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

fn noise_latent(ctx: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (n, c, h, w) = latent_shape(ctx, p)?;
    let data = normal_noise(p.seed("seed")?, n * c * h * w);
    Ok(vec![Value::Tensor(Tensor::from_vec(data, &[n, c, h, w])?)])
}

fn latent_math(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let a = latent_in(inputs, "a")?;
    let b = latent_in(inputs, "b")?;
    let r = match p.str("op")? {
        "add" => a.broadcast_add(&b),
        "sub" => a.broadcast_sub(&b),
        "mul" => a.broadcast_mul(&b),
        "div" => a.broadcast_div(&b),
        "max" => a.broadcast_maximum(&b),
        "min" => a.broadcast_minimum(&b),
        other => return Err(NodeError::invalid(format!("unknown op `{other}`"))),
    }
    .map_err(|e| {
        fail(format!(
            "cannot combine latents {:?} and {:?}: {e}",
            a.dims(),
            b.dims()
        ))
    })?;
    Ok(vec![out(&r)?])
}

fn latent_scale(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let a = latent_in(inputs, "latent")?;
    Ok(vec![out(&a
        .affine(p.f64("scale")?, p.f64("offset")?)
        .map_err(fail)?)?])
}

fn latent_blend(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let a = latent_in(inputs, "a")?;
    let b = latent_in(inputs, "b")?;
    let t = p.f64("factor")?;
    let r = a
        .affine(1.0 - t, 0.0)
        .and_then(|x| b.affine(t, 0.0).and_then(|y| x.broadcast_add(&y)))
        .map_err(fail)?;
    Ok(vec![out(&r)?])
}

fn resize_latent(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let a = latent_in(inputs, "latent")?;
    let f = p.usize("downscale")?.max(1);
    let scale = p.f64("scale")?;
    let (h, w) = if scale > 0.0 {
        let (_, _, h, w) = a.dims4().map_err(fail)?;
        (
            (h as f64 * scale).round() as usize,
            (w as f64 * scale).round() as usize,
        )
    } else {
        (p.usize("height")? / f, p.usize("width")? / f)
    };
    if h == 0 || w == 0 {
        return Err(NodeError::invalid(format!(
            "{}×{} at {f} per latent cell is less than one cell",
            p.usize("width")?,
            p.usize("height")?
        )));
    }
    ctx.check_alloc("the resized latent", &[a.dims()[0], a.dims()[1], h, w], 4)?;
    let r = match p.str("method")? {
        "nearest" => a.upsample_nearest2d(h, w),
        _ => a.upsample_bilinear2d(h, w, false),
    }
    .map_err(fail)?;
    Ok(vec![out(&r)?])
}

fn crop_latent(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let a = latent_in(inputs, "latent")?;
    let (_, _, h, w) = a.dims4().map_err(fail)?;
    let (x, y, cw, ch) = (
        p.usize("x")?,
        p.usize("y")?,
        p.usize("width")?,
        p.usize("height")?,
    );
    if x + cw > w || y + ch > h {
        return Err(NodeError::failed(format!(
            "crop {cw}×{ch} at ({x}, {y}) does not fit a {w}×{h} latent"
        )));
    }
    let r = a
        .narrow(2, y, ch)
        .and_then(|t| t.narrow(3, x, cw))
        .and_then(|t| t.contiguous())
        .map_err(fail)?;
    Ok(vec![out(&r)?])
}

fn latent_batch(_: &Ctx, inputs: &Inputs, _: &Params) -> Result<Vec<Value>, NodeError> {
    let a = latent_in(inputs, "a")?;
    let b = latent_in(inputs, "b")?;
    if a.dims()[1..] != b.dims()[1..] {
        return Err(NodeError::failed(format!(
            "cannot batch latents {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    Ok(vec![out(&CTensor::cat(&[&a, &b], 0).map_err(fail)?)?])
}

fn latent_from_batch(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let a = latent_in(inputs, "latent")?;
    let n = a.dims()[0];
    let (start, len) = (p.usize("index")?, p.usize("length")?);
    if start + len > n || len == 0 {
        return Err(NodeError::failed(format!(
            "batch has {n} latents; cannot take {len} from index {start}"
        )));
    }
    Ok(vec![out(&a.narrow(0, start, len).map_err(fail)?)?])
}

/// The latent nodes.
pub fn nodes() -> Vec<NodeDef> {
    let c = || PortType::latent(Dim::var("C"));
    let shape_params = |d: NodeDef| {
        d.param(
            Param::int("width")
                .default(512)
                .range(8.0, 16384.0)
                .doc("image width in pixels"),
        )
        .param(
            Param::int("height")
                .default(512)
                .range(8.0, 16384.0)
                .doc("image height in pixels"),
        )
        .param(
            Param::int("channels")
                .default(4)
                .range(1.0, 64.0)
                .doc("latent channels (4 for SD1/2/XL, 16 for SD3/Flux)"),
        )
        .param(Param::int("batch").default(1).range(1.0, 4096.0))
        .param(
            Param::int("downscale")
                .default(8)
                .range(1.0, 64.0)
                .doc("pixels per latent cell"),
        )
        .allocates(
            "a latent of shape",
            [
                Extent::param("batch"),
                Extent::param("channels"),
                Extent::ratio("height", "downscale"),
                Extent::ratio("width", "downscale"),
            ],
            4,
        )
    };
    vec![
        shape_params(
            NodeDef::new("core.empty_latent", empty_latent)
                .doc("A zero latent for an image of the given size.")
                .output("latent", PortType::latent(Dim::param("channels")), "N×C×H/8×W/8 zeros"),
        ),
        shape_params(
            NodeDef::new("core.noise_latent", noise_latent)
                .doc("Standard-normal noise from a ChaCha8 generator seeded with `seed` (row-major N×C×H×W order).")
                .output("latent", PortType::latent(Dim::param("channels")), "N×C×H/8×W/8 noise")
                .param(Param::seed("seed").default(0).doc("noise seed, or `random` (derived from the run seed)")),
        ),
        NodeDef::new("core.latent_math", latent_math)
            .doc("Element-wise a (op) b with broadcasting.")
            .input("a", c(), "left operand")
            .input("b", c(), "right operand (same channel count)")
            .output("latent", c(), "result")
            .param(Param::choice("op", &["add", "sub", "mul", "div", "max", "min"]).default("add")),
        NodeDef::new("core.latent_scale", latent_scale)
            .doc("latent × scale + offset.")
            .input("latent", c(), "input")
            .output("latent", c(), "result")
            .param(Param::float("scale").default(1.0))
            .param(Param::float("offset").default(0.0)),
        NodeDef::new("core.latent_blend", latent_blend)
            .doc("(1 − factor) × a + factor × b.")
            .input("a", c(), "first latent")
            .input("b", c(), "second latent")
            .output("latent", c(), "blend")
            .param(Param::float("factor").default(0.5).range(0.0, 1.0)),
        NodeDef::new("core.resize_latent", resize_latent)
            .doc("Resizes latents to a size (in latent cells, or in pixels with `downscale` pixels per cell: 8 for SD) or by a factor (`scale`).")
            .input("latent", c(), "input")
            .output("latent", c(), "resized")
            .param(Param::int("width").default(64).range(1.0, 65536.0))
            .param(Param::int("height").default(64).range(1.0, 65536.0))
            .param(Param::int("downscale").default(1).range(1.0, 64.0).doc("units per latent cell: 1 = sizes in latent cells, 8 = in SD pixels"))
            .param(Param::float("scale").default(0.0).range(0.0, 64.0).doc("when above 0: scale both sides by this factor (rounded) instead of width and height"))
            .param(Param::choice("method", &["bilinear", "nearest"]).default("bilinear")),
        NodeDef::new("core.crop_latent", crop_latent)
            .doc("Crops latents (in latent cells).")
            .input("latent", c(), "input")
            .output("latent", c(), "cropped")
            .param(Param::int("x").default(0).min(0.0))
            .param(Param::int("y").default(0).min(0.0))
            .param(Param::int("width").default(64).range(1.0, 4096.0))
            .param(Param::int("height").default(64).range(1.0, 4096.0)),
        NodeDef::new("core.latent_batch", latent_batch)
            .doc("Concatenates two latent batches.")
            .input("a", c(), "first batch")
            .input("b", c(), "second batch")
            .output("latent", c(), "a then b"),
        NodeDef::new("core.latent_from_batch", latent_from_batch)
            .doc("Takes `length` latents starting at `index`.")
            .input("latent", c(), "a batch")
            .output("latent", c(), "the selection")
            .param(Param::int("index").default(0).min(0.0))
            .param(Param::int("length").default(1).min(1.0)),
    ]
}
