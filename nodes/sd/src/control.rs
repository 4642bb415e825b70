//! ControlNet as nodes: `sd.load_controlnet` gives a `ControlNet` object whose `residuals`
//! method runs the network; `sd.apply_controlnet` wraps a denoiser so that every step adds the
//! ControlNet's residuals to the UNet, within a guidance window. Wrappers chain: several
//! ControlNets sum their residuals, as diffusers' `MultiControlNetModel` does.

use std::sync::Arc;

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::denoiser::{denoiser_handle, DenoiserClient, DenoiserImpl, Step};
use latentflow_plugin_api::sdk::prelude::*;

use crate::controlnet::ControlNet;

fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

fn tensor_arg(args: &[Value], i: usize, what: &str) -> Result<CTensor, NodeError> {
    let t = args
        .get(i)
        .and_then(Value::as_tensor)
        .ok_or_else(|| NodeError::invalid(format!("ControlNet: {what} must be a tensor")))?;
    to_candle(t, &Device::Cpu)
}

/// A loaded ControlNet: `residuals(x, t, context, image N×3×H×W, scale, guess_mode)` →
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
    fn family(&self) -> String {
        String::new()
    }
    fn call(
        &self,
        _host: HostRef<'_>,
        method: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, NodeError> {
        if method != "residuals" {
            return Err(NodeError::invalid(format!(
                "ControlNet has no method `{method}`"
            )));
        }
        let x = tensor_arg(&args, 0, "x")?;
        let t = args
            .get(1)
            .and_then(Value::as_float)
            .ok_or_else(|| NodeError::invalid("ControlNet.residuals: t must be a number"))?;
        let ctx = tensor_arg(&args, 2, "the conditioning")?;
        let image = tensor_arg(&args, 3, "the control image")?;
        let scale = args.get(4).and_then(Value::as_float).unwrap_or(1.0);
        let guess = matches!(args.get(5), Some(Value::Bool(true)));
        let r = self
            .model
            .forward(&x, t, &ctx, &image, scale, guess)
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
struct Controlled {
    inner: ObjectHandle,
    controlnet: ObjectHandle,
    /// 1×3×H×W control image in [0, 1].
    image: CTensor,
    strength: f64,
    start: f64,
    end: f64,
    guess_mode: bool,
    prediction: String,
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
        step: Option<Step>,
    ) -> Result<(Vec<CTensor>, CTensor), NodeError> {
        let xs = to_candle(x, &Device::Cpu)?;
        let cs = to_candle(ctx, &Device::Cpu)?;
        let b = xs.dim(0).map_err(fail)?;
        let (h, w) = (xs.dim(2).map_err(fail)?, xs.dim(3).map_err(fail)?);
        let (ih, iw) = (
            self.image.dim(2).map_err(fail)?,
            self.image.dim(3).map_err(fail)?,
        );
        if ih % h != 0 || iw % w != 0 || ih / h != iw / w {
            return Err(NodeError::invalid(format!(
                "the control image is {iw}×{ih}; the latent {w}×{h} needs an image of the generated size"
            )));
        }
        // Guess mode with CFG: the ControlNet sees only the positive half.
        let split = self.guess_mode && step.is_some_and(|s| s.cfg) && b % 2 == 0;
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
        let image = self.image.repeat((n, 1, 1, 1)).map_err(fail)?;
        let out = self.controlnet.call(
            host,
            "residuals",
            vec![
                Value::Tensor(from_candle(&xin)?),
                Value::Float(t),
                Value::Tensor(from_candle(&cin)?),
                Value::Tensor(from_candle(&image)?),
                Value::Float(self.strength),
                Value::Bool(self.guess_mode),
            ],
        )?;
        let mut it = out.into_iter();
        let down = match it.next() {
            Some(Value::List(items)) => items
                .iter()
                .map(|v| {
                    v.as_tensor()
                        .ok_or_else(|| NodeError::failed("ControlNet returned a non-tensor"))
                        .and_then(|t| to_candle(t, &Device::Cpu))
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(NodeError::failed("ControlNet returned no residual list")),
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

    /// Passes `x` on with residuals (ours plus `extra`) to the wrapped denoiser.
    fn forward(
        &self,
        host: HostRef<'_>,
        x: &Tensor,
        t: f64,
        ctx: Option<&Tensor>,
        step: Option<Step>,
        extra: Option<(Vec<CTensor>, CTensor)>,
    ) -> Result<Tensor, NodeError> {
        let ctx_t = ctx.ok_or_else(|| NodeError::invalid("ControlNet needs a conditioning"))?;
        let own = if self.active(step) && self.strength != 0.0 {
            Some(self.residuals(host.sabi_reborrow(), x, t, ctx_t, step)?)
        } else {
            None
        };
        let total = match (own, extra) {
            (Some((d, m)), Some((ed, em))) => {
                let d = d
                    .iter()
                    .zip(&ed)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<Vec<_>>>()
                    .map_err(fail)?;
                Some((d, (m + em).map_err(fail)?))
            }
            (a, b) => a.or(b),
        };
        match total {
            None => DenoiserClient::new(&self.inner)?.predict_step(
                host,
                x.clone(),
                t,
                ctx.cloned(),
                step,
            ),
            Some((down, mid)) => {
                let mut args = vec![
                    Value::Tensor(x.clone()),
                    Value::Float(t),
                    Value::Tensor(ctx_t.clone()),
                    Value::List(
                        down.iter()
                            .map(from_candle)
                            .collect::<Result<Vec<_>, _>>()?
                            .into_iter()
                            .map(Value::Tensor)
                            .collect(),
                    ),
                    Value::Tensor(from_candle(&mid)?),
                ];
                if let Some(s) = step {
                    args.extend(s.to_args());
                }
                match self
                    .inner
                    .call(host, "predict_with_residuals", args)?
                    .into_iter()
                    .next()
                {
                    Some(Value::Tensor(t)) => Ok(t),
                    _ => Err(NodeError::failed(
                        "predict_with_residuals returned no tensor",
                    )),
                }
            }
        }
    }
}

impl Controlled {
    /// DeepCache over a ControlNet: add this ControlNet's residuals (to any passed in, at
    /// arguments 9 and 10) and pass the DeepCache step on to the wrapped model.
    fn deepcache(&self, host: HostRef<'_>, mut args: Vec<Value>) -> Result<Vec<Value>, NodeError> {
        let x = args
            .first()
            .and_then(Value::as_tensor)
            .cloned()
            .ok_or_else(|| NodeError::invalid("x must be a tensor"))?;
        let t = args
            .get(1)
            .and_then(Value::as_float)
            .ok_or_else(|| NodeError::invalid("t must be a number"))?;
        let ctx = args
            .get(2)
            .and_then(Value::as_tensor)
            .cloned()
            .ok_or_else(|| NodeError::invalid("ControlNet needs a conditioning"))?;
        let step = Step::from_args(&args, 6);
        let own = if self.active(step) && self.strength != 0.0 {
            Some(self.residuals(host.sabi_reborrow(), &x, t, &ctx, step)?)
        } else {
            None
        };
        let incoming = match (args.get(9), args.get(10).and_then(Value::as_tensor)) {
            (Some(Value::List(items)), Some(mid)) => Some((
                items
                    .iter()
                    .map(|v| {
                        v.as_tensor()
                            .ok_or_else(|| NodeError::invalid("residuals must be tensors"))
                            .and_then(|t| to_candle(t, &Device::Cpu))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                to_candle(mid, &Device::Cpu)?,
            )),
            _ => None,
        };
        let total = match (own, incoming) {
            (Some((d, m)), Some((ed, em))) => {
                let d = d
                    .iter()
                    .zip(&ed)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<Vec<_>>>()
                    .map_err(fail)?;
                Some((d, (m + em).map_err(fail)?))
            }
            (a, b) => a.or(b),
        };
        args.truncate(9);
        while args.len() < 9 {
            args.push(Value::None);
        }
        if let Some((down, mid)) = total {
            args.push(Value::List(
                down.iter()
                    .map(from_candle)
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .map(Value::Tensor)
                    .collect(),
            ));
            args.push(Value::Tensor(from_candle(&mid)?));
        }
        self.inner.call(host, "predict_deepcache", args)
    }
}

impl DenoiserImpl for Controlled {
    fn family(&self) -> String {
        "sd-controlnet".into()
    }
    fn prediction_type(&self) -> String {
        self.prediction.clone()
    }
    fn predict(
        &self,
        host: HostRef<'_>,
        x: &Tensor,
        t: f64,
        ctx: Option<&Tensor>,
    ) -> Result<Tensor, NodeError> {
        self.forward(host, x, t, ctx, None, None)
    }
    fn predict_step(
        &self,
        host: HostRef<'_>,
        x: &Tensor,
        t: f64,
        ctx: Option<&Tensor>,
        step: Option<Step>,
    ) -> Result<Tensor, NodeError> {
        self.forward(host, x, t, ctx, step, None)
    }
    fn call_extra(
        &self,
        host: HostRef<'_>,
        method: &str,
        args: Vec<Value>,
    ) -> Option<Result<Vec<Value>, NodeError>> {
        if method == "predict_deepcache" {
            return Some(self.deepcache(host, args));
        }
        if method != "predict_with_residuals" {
            return None;
        }
        // An outer ControlNet passes its residuals: add ours and pass all on.
        Some((|| {
            let x = args
                .first()
                .and_then(Value::as_tensor)
                .ok_or_else(|| NodeError::invalid("x must be a tensor"))?;
            let t = args
                .get(1)
                .and_then(Value::as_float)
                .ok_or_else(|| NodeError::invalid("t must be a number"))?;
            let ctx = args.get(2).and_then(Value::as_tensor);
            let down = match args.get(3) {
                Some(Value::List(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_tensor()
                            .ok_or_else(|| NodeError::invalid("residuals must be tensors"))
                            .and_then(|t| to_candle(t, &Device::Cpu))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(NodeError::invalid("argument 3 must be the residual list")),
            };
            let mid = tensor_arg(&args, 4, "the mid residual")?;
            let step = Step::from_args(&args, 5);
            Ok(vec![Value::Tensor(self.forward(
                host,
                x,
                t,
                ctx,
                step,
                Some((down, mid)),
            )?)])
        })())
    }
    fn describe(&self) -> String {
        format!(
            "Denoiser(ControlNet {} over {})",
            self.controlnet.describe(),
            self.inner.describe()
        )
    }
}

/// `sd.apply_controlnet`.
pub fn apply(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let inner = inputs.object("model")?.clone();
    let prediction = DenoiserClient::new(&inner)?.prediction_type(ctx.host())?;
    let controlnet = inputs.object("controlnet")?.clone();
    if controlnet.interface() != "ControlNet" {
        return Err(NodeError::invalid(format!(
            "expected a ControlNet, got a {}",
            controlnet.interface()
        )));
    }
    let image = to_candle(inputs.tensor("image")?, &Device::Cpu)?
        .narrow(0, 0, 1)
        .and_then(|t| t.permute((0, 3, 1, 2)))
        .and_then(|t| t.contiguous())
        .map_err(fail)?;
    let (start, end) = (p.f64("start")?, p.f64("end")?);
    if start > end {
        return Err(NodeError::invalid(format!(
            "start {start} is after end {end}"
        )));
    }
    Ok(vec![Value::Object(denoiser_handle(Controlled {
        inner,
        controlnet,
        image,
        strength: p.f64("strength")?,
        start,
        end,
        guess_mode: p.bool("guess_mode")?,
        prediction,
    }))])
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("sd.load_controlnet", |_, _, p| {
            let path = std::path::PathBuf::from(p.str("path")?);
            let config = p.str("config")?;
            let config = (!config.is_empty()).then(|| std::path::PathBuf::from(config));
            let model = crate::models::component(&path, "controlnet", |p| ControlNet::load_with(p, config.as_deref()))
                .map_err(fail)?;
            Ok(vec![Value::Object(ObjectHandle::new(ControlNetObject::new(model, path.display().to_string())))])
        })
        .doc("Loads a ControlNet: a diffusers ControlNetModel folder, or a single-file .safetensors in the original layout (control_model.* / zero_convs.* keys, e.g. lllyasviel's v1.1 files) whose architecture is SD 1.5's unless `config` names a diffusers ControlNet folder. Loaded once however many nodes use it.")
        .output("controlnet", PortType::handle("ControlNet", ""), "the ControlNet")
        .param(Param::path("path").doc("ControlNet folder or single file"))
        .param(Param::path("config").default("").doc("single files: a diffusers ControlNet folder with the config")),
        NodeDef::new("sd.apply_controlnet", apply)
            .doc("Wraps a denoiser so every step adds a ControlNet's residuals, computed from the control image, as diffusers' ControlNet pipeline does: scaled by strength, only for steps i with start ≤ i/n and (i+1)/n ≤ end, guess mode (residuals 0.1→1 on a log scale; the negative half of a CFG batch gets none). Chain several to sum them.")
            .input("model", PortType::handle("Denoiser", ""), "the UNet (or another ControlNet wrapper)")
            .input("controlnet", PortType::handle("ControlNet", ""), "the ControlNet")
            .input("image", PortType::Image, "control image in [0, 1], at the size being generated")
            .output("model", PortType::handle("Denoiser", ""), "the controlled denoiser")
            .param(Param::float("strength").default(1.0).range(0.0, 10.0).doc("controlnet_conditioning_scale"))
            .param(Param::float("start").default(0.0).range(0.0, 1.0).doc("first fraction of the steps to control"))
            .param(Param::float("end").default(1.0).range(0.0, 1.0).doc("last fraction of the steps to control"))
            .param(Param::bool("guess_mode").default(false)),
    ]
}
