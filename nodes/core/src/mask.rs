//! Mask nodes. Masks are `N×H×W` f32 tensors in `[0, 1]`.

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::prelude::*;

use crate::util::{candle_f32, expect_rank, fail, out};

fn mask_in(inputs: &Inputs) -> Result<CTensor, NodeError> {
    let t = inputs.tensor("mask")?;
    expect_rank("mask", t, 3, "N×H×W")?;
    candle_f32(t)
}

fn image_to_mask(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let img = candle_f32(inputs.tensor("image")?)?;
    let m = match p.str("channel")? {
        "red" => img.narrow(3, 0, 1),
        "green" => img.narrow(3, 1, 1),
        "blue" => img.narrow(3, 2, 1),
        _ => {
            // ITU-R BT.601 luma.
            let w = CTensor::new(&[0.299f32, 0.587, 0.114], &Device::Cpu).map_err(fail)?;
            img.broadcast_mul(&w).and_then(|t| t.sum_keepdim(3))
        }
    }
    .and_then(|t| t.squeeze(3))
    .and_then(|t| t.contiguous())
    .map_err(fail)?;
    Ok(vec![out(&m)?])
}

fn mask_to_image(_: &Ctx, inputs: &Inputs, _: &Params) -> Result<Vec<Value>, NodeError> {
    let m = mask_in(inputs)?;
    let (n, h, w) = m.dims3().map_err(fail)?;
    let img = m
        .unsqueeze(3)
        .and_then(|t| t.broadcast_as((n, h, w, 3)))
        .and_then(|t| t.contiguous())
        .map_err(fail)?;
    Ok(vec![out(&img)?])
}

fn invert_mask(_: &Ctx, inputs: &Inputs, _: &Params) -> Result<Vec<Value>, NodeError> {
    Ok(vec![out(&mask_in(inputs)?
        .affine(-1.0, 1.0)
        .map_err(fail)?)?])
}

fn threshold_mask(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let m = mask_in(inputs)?;
    let r = m
        .ge(p.f64("threshold")?)
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .map_err(fail)?;
    Ok(vec![out(&r)?])
}

fn solid_mask(ctx: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (n, h, w) = (p.usize("batch")?, p.usize("height")?, p.usize("width")?);
    ctx.check_alloc("a mask of shape", &[n, h, w], 4)?;
    let v = p.f64("value")? as f32;
    let t = CTensor::full(v, (n, h, w), &Device::Cpu).map_err(fail)?;
    Ok(vec![out(&t)?])
}

fn rect_mask(ctx: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (h, w) = (p.usize("height")?, p.usize("width")?);
    ctx.check_alloc("a mask of shape", &[h, w], 4)?;
    let (x, y, rw, rh) = (
        p.usize("x")?,
        p.usize("y")?,
        p.usize("rect_width")?,
        p.usize("rect_height")?,
    );
    let mut data = vec![0f32; h * w];
    for row in y.min(h)..y.saturating_add(rh).min(h) {
        for col in x.min(w)..x.saturating_add(rw).min(w) {
            data[row * w + col] = 1.0;
        }
    }
    Ok(vec![Value::Tensor(Tensor::from_vec(data, &[1, h, w])?)])
}

/// The mask nodes.
pub fn nodes() -> Vec<NodeDef> {
    let size = |d: NodeDef| {
        d.param(Param::int("width").default(512).range(1.0, 16384.0))
            .param(Param::int("height").default(512).range(1.0, 16384.0))
    };
    vec![
        NodeDef::new("core.image_to_mask", image_to_mask)
            .doc("A mask from one channel of an image, or its luminance.")
            .input("image", PortType::Image, "images")
            .output("mask", PortType::Mask, "N×H×W")
            .param(
                Param::choice("channel", &["luminance", "red", "green", "blue"])
                    .default("luminance"),
            ),
        NodeDef::new("core.mask_to_image", mask_to_image)
            .doc("A grey image from a mask.")
            .input("mask", PortType::Mask, "masks")
            .output("image", PortType::Image, "N×H×W×3"),
        NodeDef::new("core.invert_mask", invert_mask)
            .doc("1 − mask.")
            .input("mask", PortType::Mask, "masks")
            .output("mask", PortType::Mask, "inverted"),
        NodeDef::new("core.threshold_mask", threshold_mask)
            .doc("1 where mask ≥ threshold, else 0.")
            .input("mask", PortType::Mask, "masks")
            .output("mask", PortType::Mask, "binary masks")
            .param(Param::float("threshold").default(0.5).range(0.0, 1.0)),
        size(
            NodeDef::new("core.solid_mask", solid_mask)
                .doc("A mask of one value.")
                .output("mask", PortType::Mask, "N×H×W")
                .param(Param::float("value").default(1.0).range(0.0, 1.0))
                .param(Param::int("batch").default(1).range(1.0, 4096.0))
                .allocates(
                    "a mask of shape",
                    ["batch", "height", "width"].map(Extent::param),
                    4,
                ),
        ),
        size(
            NodeDef::new("core.rect_mask", rect_mask)
                .doc("A mask that is 1 inside a rectangle.")
                .output("mask", PortType::Mask, "1×H×W")
                .param(Param::int("x").default(0).min(0.0))
                .param(Param::int("y").default(0).min(0.0))
                .param(Param::int("rect_width").default(256).min(0.0))
                .param(Param::int("rect_height").default(256).min(0.0))
                .allocates("a mask of shape", ["height", "width"].map(Extent::param), 4),
        ),
    ]
}
