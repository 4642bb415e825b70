//! ControlNet as nodes: `sd.load_controlnet` gives a `ControlNet` object whose `residuals`
//! method runs the network; `sd.apply_controlnet` wraps a denoiser so that every step adds the
//! ControlNet's residuals to the UNet, within a guidance window. Wrappers chain: several
//! ControlNets sum their residuals, as diffusers' `MultiControlNetModel` does.

use latentflow_plugin_api::sdk::candle::compute_device;
use std::sync::Arc;

use candle_core::{Device, Tensor as CTensor};
use latentflow_models::animatediff::MotionUNet;
use latentflow_models::sd::controlnet::ControlNet;
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::denoiser::{
    names, wrapper_node, DenoiseRequest, Denoised, DenoiserClient, Step, WrapperImpl,
};
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::{f32_tensor, fail, list_value, tensor_list};

fn tensor_arg(args: &[Value], i: usize, what: &str) -> Result<CTensor, NodeError> {
    let t = args
        .get(i)
        .and_then(Value::as_tensor)
        .ok_or_else(|| NodeError::invalid(format!("ControlNet: {what} must be a tensor")))?;
    to_candle(t, &Device::Cpu)
}

/// A loaded ControlNet: `residuals(x, t, context, image N×3×H×W, scale, guess_mode, resize,
/// [added])` (`added`: SDXL's pooled embedding and time ids, when the model has them) →
/// `[list of down residuals, mid residual]`.
pub struct ControlNetObject {
    model: Arc<ControlNet>,
    name: String,
}

impl ControlNetObject {
    /// Wraps a loaded ControlNet.
    pub fn new(model: Arc<ControlNet>, name: String) -> Self {
        Self { model, name }
    }
}

impl ObjectImpl for ControlNetObject {
    fn interface(&self) -> String {
        "ControlNet".into()
    }
    fn call(&self, _host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        if method != "residuals" {
            return Err(NodeError::invalid(format!(
                "ControlNet has no method `{method}`"
            )));
        }
        let x = tensor_arg(&args, 0, "x")?;
        // Under an inpainting wrapper the latent carries extra channels after its own.
        let cin = self.model.in_channels();
        let x = if x.dim(1).map_err(fail)? > cin {
            x.narrow(1, 0, cin).map_err(fail)?
        } else {
            x
        };
        let t = args
            .get(1)
            .and_then(Value::as_float)
            .ok_or_else(|| NodeError::invalid("ControlNet.residuals: t must be a number"))?;
        let ctx = tensor_arg(&args, 2, "the conditioning")?;
        let mut image = tensor_arg(&args, 3, "the control image")?;
        if matches!(args.get(6), Some(Value::Bool(true))) {
            // Fit the image to the latent, as ComfyUI does.
            let f = self.model.image_downscale();
            let (h, w) = (x.dim(2).map_err(fail)? * f, x.dim(3).map_err(fail)? * f);
            if image.dim(2).map_err(fail)? != h || image.dim(3).map_err(fail)? != w {
                image = crop_and_resize(&image, h, w).map_err(fail)?;
            }
        }
        let scale = args.get(4).and_then(Value::as_float).unwrap_or(1.0);
        let guess = matches!(args.get(5), Some(Value::Bool(true)));
        let added = match args.get(7) {
            Some(Value::Tensor(t)) => Some(to_candle(t, &Device::Cpu)?),
            _ => None,
        };
        let r = self
            .model
            .forward_with(&x, t, &ctx, &image, scale, guess, added.as_ref())
            .map_err(fail)?;
        let down = r
            .down
            .iter()
            .map(from_candle)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![
            Value::List(down.into_iter().map(Value::Tensor).collect()),
            Value::Tensor(from_candle(&r.mid)?),
        ])
    }
    fn describe(&self) -> String {
        format!("ControlNet({})", self.name)
    }
}

/// A denoiser with a ControlNet's residuals added.
#[derive(Clone)]
struct Controlled {
    controlnet: ObjectHandle,
    /// 1×3×H×W control image in [0, 1].
    image: CTensor,
    strength: f64,
    start: f64,
    end: f64,
    guess_mode: bool,
    /// Crop and resize the image to the latent's size (ComfyUI's behaviour) instead of
    /// requiring the generated size.
    resize: bool,
}

/// ComfyUI's `common_upscale(…, "nearest-exact", "center")`: crops the middle to the target's
/// aspect ratio, then picks the source pixel whose centre is nearest each target pixel's.
fn crop_and_resize(image: &CTensor, th: usize, tw: usize) -> candle_core::Result<CTensor> {
    let (_, _, h, w) = image.dims4()?;
    let (old, new) = (w as f64 / h as f64, tw as f64 / th as f64);
    let (mut x0, mut y0, mut cw, mut ch) = (0, 0, w, h);
    if old > new {
        x0 = ((w as f64 - w as f64 * new / old) / 2.0).round() as usize;
        cw = w - 2 * x0;
    } else if old < new {
        y0 = ((h as f64 - h as f64 * old / new) / 2.0).round() as usize;
        ch = h - 2 * y0;
    }
    let pick = |n_in: usize, n_out: usize, offset: usize| -> Vec<u32> {
        (0..n_out)
            .map(|i| {
                let src = ((i as f64 + 0.5) * n_in as f64 / n_out as f64).floor() as usize;
                (offset + src.min(n_in - 1)) as u32
            })
            .collect()
    };
    let rows = CTensor::new(pick(ch, th, y0), image.device())?;
    let cols = CTensor::new(pick(cw, tw, x0), image.device())?;
    image
        .index_select(&rows, 2)?
        .index_select(&cols, 3)?
        .contiguous()
}

impl Controlled {
    /// diffusers' `controlnet_keep`: inside [start, end] of the run.
    fn active(&self, step: Option<Step>) -> bool {
        match step {
            Some(s) => {
                let (i, n) = (s.index as f64, s.total as f64);
                !(i / n < self.start || (i + 1.0) / n > self.end)
            }
            None => true,
        }
    }

    /// This ControlNet's residuals for the batch (zeros for the negative half in guess mode).
    fn residuals(
        &self,
        host: HostRef<'_>,
        x: &Tensor,
        t: f64,
        ctx: &Tensor,
        added: Option<&Tensor>,
        step: Option<Step>,
    ) -> Result<(Vec<CTensor>, CTensor), NodeError> {
        let xs = to_candle(x, &Device::Cpu)?;
        let added = added.map(|a| to_candle(a, &Device::Cpu)).transpose()?;
        let cs = to_candle(ctx, &Device::Cpu)?;
        // A video latent (AnimateDiff) runs the ControlNet on its frames, each with its own
        // control image when there is one per frame; the residuals then go to the frames.
        let (xs, cs, frames) = match xs.dims() {
            [_, _, f, _, _] => {
                let f = *f;
                let per_video = cs.dim(0).map_err(fail)?;
                let cs = if per_video == 1 {
                    cs.repeat((xs.dim(0).map_err(fail)?, 1, 1)).map_err(fail)?
                } else {
                    cs
                };
                (
                    MotionUNet::frames_of(&xs).map_err(fail)?,
                    MotionUNet::context_per_frame(&cs, f).map_err(fail)?,
                    Some(f),
                )
            }
            _ => (xs, cs, None),
        };
        let b = xs.dim(0).map_err(fail)?;
        let (h, w) = (xs.dim(2).map_err(fail)?, xs.dim(3).map_err(fail)?);
        let (ih, iw) = (
            self.image.dim(2).map_err(fail)?,
            self.image.dim(3).map_err(fail)?,
        );
        if !self.resize && (ih % h != 0 || iw % w != 0 || ih / h != iw / w) {
            return Err(NodeError::invalid(format!(
                "the control image is {iw}×{ih}; the latent {w}×{h} needs an image of the generated size (or set fit: resize)"
            )));
        }
        // Guess mode with CFG: the ControlNet sees only the positive half.
        let split = self.guess_mode && step.is_some_and(|s| s.guided()) && b % 2 == 0;
        let (xin, cin, n) = if split {
            let half = b / 2;
            (
                xs.narrow(0, half, half).map_err(fail)?,
                cs.narrow(0, half, half).map_err(fail)?,
                half,
            )
        } else {
            (xs, cs, b)
        };
        // SDXL's added conditioning, one row per sample (the positive half in guess mode).
        let added = match added {
            Some(a) if split => Some(a.narrow(0, b / 2, b / 2).map_err(fail)?),
            other => other,
        };
        let image = match frames {
            Some(f) if self.image.dim(0).map_err(fail)? == f => {
                self.image.repeat((n / f, 1, 1, 1)).map_err(fail)?
            }
            _ => self
                .image
                .narrow(0, 0, 1)
                .and_then(|i| i.repeat((n, 1, 1, 1)))
                .map_err(fail)?,
        };
        let mut args = vec![
            Value::Tensor(from_candle(&xin)?),
            Value::Float(t),
            Value::Tensor(from_candle(&cin)?),
            Value::Tensor(from_candle(&image)?),
            Value::Float(self.strength),
            Value::Bool(self.guess_mode),
            Value::Bool(self.resize),
        ];
        if let Some(a) = &added {
            args.push(Value::Tensor(from_candle(a)?));
        }
        let out = self.controlnet.call(host, "residuals", args)?;
        let mut it = out.into_iter();
        let down = match it.next() {
            Some(v) => tensor_list(&v, "ControlNet residuals")?,
            None => return Err(NodeError::failed("ControlNet returned no residual list")),
        };
        let mid = match it.next() {
            Some(Value::Tensor(t)) => to_candle(&t, &Device::Cpu)?,
            _ => return Err(NodeError::failed("ControlNet returned no mid residual")),
        };
        let pad = |r: CTensor| -> Result<CTensor, NodeError> {
            if split {
                CTensor::cat(&[&r.zeros_like().map_err(fail)?, &r], 0).map_err(fail)
            } else {
                Ok(r)
            }
        };
        let down = down.into_iter().map(pad).collect::<Result<Vec<_>, _>>()?;
        Ok((down, pad(mid)?))
    }
}

impl WrapperImpl for Controlled {
    fn rewrapped(&self) -> Self {
        self.clone()
    }

    fn name(&self) -> String {
        format!("ControlNet {}", self.controlnet.describe())
    }

    /// Adds this ControlNet's residuals to those of ControlNets further out, and forwards.
    fn denoise(&self, inner: &DenoiserClient, host: HostRef, mut req: DenoiseRequest) -> Denoised {
        if self.active(req.step) && self.strength != 0.0 {
            let ctx = req.cond.require_context("ControlNet")?.clone();
            let (down, mid) = self.residuals(
                host.sabi_reborrow(),
                &req.x,
                req.timestep,
                &ctx,
                req.cond.pooled.as_ref(),
                req.step,
            )?;
            let (down, mid) = match (
                req.cond.get(names::CONTROL_DOWN),
                req.cond.get(names::CONTROL_MID),
            ) {
                (Some(d), Some(Value::Tensor(m))) => {
                    let earlier = tensor_list(d, "ControlNet residuals")?;
                    if earlier.len() != down.len() {
                        return Err(NodeError::invalid(format!(
                            "chained ControlNets give {} and {} residuals",
                            earlier.len(),
                            down.len()
                        )));
                    }
                    let down = down
                        .iter()
                        .zip(&earlier)
                        .map(|(a, b)| a + b)
                        .collect::<candle_core::Result<Vec<_>>>()
                        .map_err(fail)?;
                    (down, (mid + f32_tensor(m)?).map_err(fail)?)
                }
                _ => (down, mid),
            };
            req.cond.set(names::CONTROL_DOWN, list_value(&down)?);
            req.cond
                .set(names::CONTROL_MID, Value::Tensor(from_candle(&mid)?));
        }
        inner.denoise(host, req)
    }
}

/// `sd.apply_controlnet`.
fn apply(inputs: &Inputs, p: &Params) -> Result<Controlled, NodeError> {
    let controlnet = inputs.object("controlnet")?.clone();
    if controlnet.interface() != "ControlNet" {
        return Err(NodeError::invalid(format!(
            "expected a ControlNet, got a {}",
            controlnet.interface()
        )));
    }
    // Every image is kept: a video model takes one per frame; image models use the first.
    let image = to_candle(inputs.tensor("image")?, &Device::Cpu)?
        .permute((0, 3, 1, 2))
        .and_then(|t| t.contiguous())
        .map_err(fail)?;
    let (start, end) = (p.f64("start")?, p.f64("end")?);
    if start > end {
        return Err(NodeError::invalid(format!(
            "start {start} is after end {end}"
        )));
    }
    Ok(Controlled {
        controlnet,
        image,
        strength: p.f64("strength")?,
        start,
        end,
        guess_mode: p.bool("guess_mode")?,
        resize: p.str("fit")? == "resize",
    })
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("sd.load_controlnet", |_, _, p| {
            // Where the model computes; this build's models run on the CPU only.
            compute_device(p)?;
            let path = std::path::PathBuf::from(p.str("path")?);
            let config = p.str("config")?;
            let config = (!config.is_empty()).then(|| std::path::PathBuf::from(config));
            let model = latentflow_models::sd::loader::component(&path, "controlnet", |p| ControlNet::load_with(p, config.as_deref()))
                .map_err(fail)?;
            Ok(vec![Value::Object(ObjectHandle::new(ControlNetObject::new(model, path.display().to_string())))])
        }).param(Param::device())
        .doc("Loads a ControlNet: a diffusers ControlNetModel folder, or a single-file .safetensors in the original layout (control_model.* / zero_convs.* keys, e.g. lllyasviel's v1.1 files) whose architecture is SD 1.5's unless `config` names a diffusers ControlNet folder. Loaded once however many nodes use it.")
        .output("controlnet", PortType::handle("ControlNet"), "the ControlNet")
        .param(Param::path("path").doc("ControlNet folder or single file"))
        .param(Param::path("config").default("").doc("single files: a diffusers ControlNet folder with the config")),
        wrapper_node("sd.apply_controlnet", "the controlled denoiser", |_, i, p| apply(i, p))
            .doc("Wraps a denoiser so every step adds a ControlNet's residuals, computed from the control image, as diffusers' ControlNet pipeline does: scaled by strength, only for steps i with start ≤ i/n and (i+1)/n ≤ end, guess mode (residuals 0.1→1 on a log scale; the negative half of a CFG batch gets none). Chain several to sum them.")
            .input("controlnet", PortType::handle("ControlNet"), "the ControlNet")
            .input("image", PortType::Image, "control image in [0, 1], at the size being generated; for a video model (sd.animatediff) one per frame (or one for all)")
            .param(Param::float("strength").default(1.0).range(0.0, 10.0).doc("controlnet_conditioning_scale"))
            .param(Param::float("start").default(0.0).range(0.0, 1.0).doc("first fraction of the steps to control"))
            .param(Param::float("end").default(1.0).range(0.0, 1.0).doc("last fraction of the steps to control"))
            .param(Param::bool("guess_mode").default(false))
            .param(Param::choice("fit", &["exact", "resize"]).default("exact").doc("exact: the image must be the generated size; resize: crop its middle to the latent's aspect ratio and resize it (nearest-exact), as ComfyUI does")),
    ]
}
