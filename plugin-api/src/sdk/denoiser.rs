//! The `Denoiser` protocol: how a sampler in one plugin drives a model in another, and how
//! wrappers (ControlNet, LoRA'd models, DeepCache, attention capture, ELLA, ...) sit between.
//!
//! A denoiser is an [`ObjectHandle`] whose interface is [`DENOISER`] and whose family names the
//! model family (`sd1`, ...). Its methods take and return typed records:
//!
//! | method | argument | returns |
//! |---|---|---|
//! | `info` | none | a [`DenoiserInfo`] record |
//! | `denoise` | a [`DenoiseRequest`] record | a [`DenoiseOutput`] record |
//! | `vjp` | a [`DenoiseRequest`] record and a cotangent tensor (the output's shape) | the tensor cotangentᵀ · ∂prediction/∂x (x's shape) |
//! | `with_…` (e.g. `with_lora`) | method-specific | a new denoiser first, then method-specific values |
//! | anything else | method-specific | method-specific (queries such as `features`) |
//!
//! A request carries a latent of any rank, the timestep, the sampler's position, whether the
//! batch is `[negative; positive]` for guidance, the conditioning with named parts (context,
//! pooled vector, mask, extra named values such as SDXL time ids, class labels or ControlNet
//! residuals) and options for the model (DeepCache, attention capture). Wrappers change what
//! they are for and forward the rest, so every wrapper composes with every other in any order:
//! [`wrapper_handle`] forwards `info`, unknown methods and `with_…` transforms (re-wrapping the
//! new model) for them.

use crate::error::NodeError;
use crate::host::HostRef;
use crate::object::{ObjectHandle, ObjectImpl, Reply};
use crate::tensor::Tensor;
use crate::value::{lookup, upsert, Record, Value};

/// A method call on an object: its name and arguments.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The method.
    pub method: &'a str,
    /// The arguments.
    pub args: &'a [Value],
}

impl<'a> Call<'a> {
    /// `method` with `args`.
    pub fn new(method: &'a str, args: &'a [Value]) -> Self {
        Call { method, args }
    }
}

/// The interface name of denoisers.
pub const DENOISER: &str = "Denoiser";

/// Record kinds of the protocol.
pub mod kinds {
    /// [`super::DenoiseRequest`].
    pub const REQUEST: &str = "DenoiseRequest";
    /// [`super::DenoiseOutput`].
    pub const OUTPUT: &str = "DenoiseOutput";
    /// [`super::DenoiserInfo`].
    pub const INFO: &str = "DenoiserInfo";
    /// [`super::Conditioning`].
    pub const CONDITIONING: &str = "Conditioning";
}

/// Well-known names of [`Conditioning::extra`] entries and [`DenoiseRequest::options`].
pub mod names {
    /// Class labels of class-conditional models: an int64 tensor with one label per batch row.
    pub const CLASS_LABELS: &str = "class_labels";
    /// ControlNet residuals for the UNet's skip connections: a list of tensors (summed by
    /// chained ControlNets).
    pub const CONTROL_DOWN: &str = "control.down";
    /// The ControlNet residual of the mid block: a tensor.
    pub const CONTROL_MID: &str = "control.mid";
    /// Option: a DeepCache step, a record with `branch` (int), `refresh` (bool), `key` (int).
    pub const DEEPCACHE: &str = "deepcache";
    /// Option: capture cross-attention, a record with `key` (int), `reset` (bool) and
    /// `skip_factor` (int).
    pub const CAPTURE_ATTENTION: &str = "capture_attention";
}

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionKind {
    /// The noise ε.
    Epsilon,
    /// The velocity v = √ᾱ ε − √(1−ᾱ) x0.
    V,
    /// The clean sample x0.
    Sample,
    /// A flow-matching velocity.
    Flow,
}

impl PredictionKind {
    /// diffusers' spelling: `epsilon`, `v_prediction`, `sample`, `flow_prediction`.
    pub fn name(self) -> &'static str {
        match self {
            PredictionKind::Epsilon => "epsilon",
            PredictionKind::V => "v_prediction",
            PredictionKind::Sample => "sample",
            PredictionKind::Flow => "flow_prediction",
        }
    }

    /// From diffusers' spelling.
    pub fn parse(s: &str) -> Result<Self, NodeError> {
        Ok(match s {
            "epsilon" => PredictionKind::Epsilon,
            "v_prediction" => PredictionKind::V,
            "sample" => PredictionKind::Sample,
            "flow_prediction" | "flow" => PredictionKind::Flow,
            other => {
                return Err(NodeError::invalid(format!(
                    "unknown prediction type `{other}` (epsilon, v_prediction, sample, flow_prediction)"
                )))
            }
        })
    }
}

/// Where a sampler is when it calls the denoiser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// This step's index within the run (0-based; img2img counts from its first step).
    pub index: usize,
    /// The number of steps in the run.
    pub total: usize,
    /// Under classifier-free guidance, the scale the sampler combines the halves of the batch
    /// `[negative; positive]` with (`u + g·(c − u)`).
    pub guidance: Option<f64>,
}

impl Step {
    /// Whether the batch is `[negative; positive]` for classifier-free guidance.
    pub fn guided(&self) -> bool {
        self.guidance.is_some()
    }
}

/// The conditioning of a request, in named parts.
#[derive(Debug, Clone, Default)]
pub struct Conditioning {
    /// Token embeddings N×T×D (cross-attention context).
    pub context: Option<Tensor>,
    /// A pooled text embedding N×D.
    pub pooled: Option<Tensor>,
    /// A token mask N×T (1 = attend).
    pub mask: Option<Tensor>,
    /// Other named parts (time ids, class labels, ControlNet residuals, ...).
    pub extra: Vec<(String, Value)>,
}

impl Conditioning {
    /// A context-only conditioning.
    pub fn context(context: Tensor) -> Self {
        Conditioning {
            context: Some(context),
            ..Default::default()
        }
    }

    /// The extra part `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        lookup(&self.extra, name)
    }

    /// Sets the extra part `name`.
    pub fn set(&mut self, name: &str, value: Value) {
        upsert(&mut self.extra, name, value);
    }

    /// The context, or an error naming who needs it.
    pub fn require_context(&self, who: &str) -> Result<&Tensor, NodeError> {
        self.context
            .as_ref()
            .ok_or_else(|| NodeError::invalid(format!("{who} needs a text conditioning")))
    }

    fn to_record(&self) -> Record {
        let mut r = Record::new(kinds::CONDITIONING)
            .with("context", self.context.clone())
            .with("pooled", self.pooled.clone())
            .with("mask", self.mask.clone());
        r.set(
            "extra",
            Record {
                kind: "Extra".into(),
                fields: self.extra.clone(),
            },
        );
        r
    }

    fn from_record(r: &Record) -> Result<Self, NodeError> {
        r.expect_kind(kinds::CONDITIONING)?;
        Ok(Conditioning {
            context: r.opt_tensor("context")?.cloned(),
            pooled: r.opt_tensor("pooled")?.cloned(),
            mask: r.opt_tensor("mask")?.cloned(),
            extra: r
                .record("extra")?
                .map(|e| e.fields.clone())
                .unwrap_or_default(),
        })
    }
}

/// One call of the model.
#[derive(Debug, Clone)]
pub struct DenoiseRequest {
    /// The scheduler-scaled model input, N×C×… (any rank).
    pub x: Tensor,
    /// The timestep.
    pub timestep: f64,
    /// Where the sampler is, when a sampler calls.
    pub step: Option<Step>,
    /// The conditioning (for the whole batch, `[negative; positive]` under guidance).
    pub cond: Conditioning,
    /// Options for the model (see [`names`]).
    pub options: Vec<(String, Value)>,
}

impl DenoiseRequest {
    /// A request for `x` at `timestep` with `cond`.
    pub fn new(x: Tensor, timestep: f64, cond: Conditioning) -> Self {
        DenoiseRequest {
            x,
            timestep,
            step: None,
            cond,
            options: Vec::new(),
        }
    }

    /// The option `name`.
    pub fn option(&self, name: &str) -> Option<&Value> {
        lookup(&self.options, name)
    }

    /// Sets the option `name`.
    pub fn set_option(&mut self, name: &str, value: Value) {
        upsert(&mut self.options, name, value);
    }

    /// As a record.
    pub fn to_record(&self) -> Record {
        let mut r = Record::new(kinds::REQUEST)
            .with("x", self.x.clone())
            .with("timestep", self.timestep)
            .with("cond", self.cond.to_record());
        if let Some(s) = self.step {
            r.set("step_index", s.index as i64);
            r.set("step_total", s.total as i64);
            if let Some(g) = s.guidance {
                r.set("guidance", g);
            }
        }
        r.set(
            "options",
            Record {
                kind: "Options".into(),
                fields: self.options.clone(),
            },
        );
        r
    }

    /// From a record.
    pub fn from_record(r: &Record) -> Result<Self, NodeError> {
        r.expect_kind(kinds::REQUEST)?;
        let step = match (r.get("step_index"), r.get("step_total")) {
            (Some(i), Some(t)) => {
                let (i, t) = (i.as_int().unwrap_or(-1), t.as_int().unwrap_or(0));
                if i < 0 || t <= 0 || i >= t {
                    return Err(NodeError::invalid(format!(
                        "DenoiseRequest: step {i} of {t} is not a step"
                    )));
                }
                Some(Step {
                    index: i as usize,
                    total: t as usize,
                    guidance: r.get("guidance").and_then(Value::as_float),
                })
            }
            _ => None,
        };
        let cond = match r.record("cond")? {
            Some(c) => Conditioning::from_record(c)?,
            None => Conditioning::default(),
        };
        Ok(DenoiseRequest {
            x: r.tensor("x")?.clone(),
            timestep: r.float("timestep")?,
            step,
            cond,
            options: r
                .record("options")?
                .map(|o| o.fields.clone())
                .unwrap_or_default(),
        })
    }
}

/// The model's answer.
#[derive(Debug, Clone)]
pub struct DenoiseOutput {
    /// The prediction, the input's shape.
    pub prediction: Tensor,
    /// What it is.
    pub kind: PredictionKind,
    /// For models that learn their variance (ADM's `learn_sigma`): the extra output channels,
    /// v ∈ [−1, 1] per element, interpolating log β̃ₜ (−1) and log βₜ (1); the prediction's shape.
    pub learned_range: Option<Tensor>,
}

impl DenoiseOutput {
    /// A prediction without a learned variance.
    pub fn new(prediction: Tensor, kind: PredictionKind) -> Self {
        DenoiseOutput {
            prediction,
            kind,
            learned_range: None,
        }
    }

    /// As a record.
    pub fn to_record(&self) -> Record {
        let mut r = Record::new(kinds::OUTPUT).with("kind", self.kind.name());
        if let Some(v) = &self.learned_range {
            r.set("learned_range", v.clone());
        }
        r.with("prediction", self.prediction.clone())
    }

    /// From a record.
    pub fn from_record(r: &Record) -> Result<Self, NodeError> {
        r.expect_kind(kinds::OUTPUT)?;
        let kind = PredictionKind::parse(r.str("kind")?)?;
        let prediction = r.tensor("prediction")?.clone();
        let learned_range = r.get("learned_range").and_then(Value::as_tensor).cloned();
        Ok(DenoiseOutput {
            prediction,
            kind,
            learned_range,
        })
    }
}

/// What a denoiser says about itself.
#[derive(Debug, Clone)]
pub struct DenoiserInfo {
    /// The model family (`sd1`, ...).
    pub family: String,
    /// What `denoise` returns.
    pub prediction: PredictionKind,
    /// A description, wrappers included (for logs).
    pub description: String,
}

impl DenoiserInfo {
    /// As a record.
    pub fn to_record(&self) -> Record {
        Record::new(kinds::INFO)
            .with("family", self.family.as_str())
            .with("prediction", self.prediction.name())
            .with("description", self.description.as_str())
    }

    /// From a record.
    pub fn from_record(r: &Record) -> Result<Self, NodeError> {
        r.expect_kind(kinds::INFO)?;
        Ok(DenoiserInfo {
            family: r.str("family")?.to_string(),
            prediction: PredictionKind::parse(r.str("prediction")?)?,
            description: r.str("description").unwrap_or_default().to_string(),
        })
    }
}

/// What a model plugin implements to offer a denoiser.
pub trait DenoiserImpl: Send + Sync + 'static {
    /// Family, prediction type and description.
    fn info(&self) -> DenoiserInfo;

    /// The model output for a request.
    fn denoise(&self, host: HostRef, req: DenoiseRequest) -> Denoised;

    /// `cotangentᵀ · ∂prediction/∂x` at the request's `x`: gradients through the model, for
    /// samplers that optimise the latent (CoPaint). Models that cannot differentiate keep the
    /// default, an error saying so.
    fn vjp(
        &self,
        host: HostRef,
        req: DenoiseRequest,
        cotangent: &Tensor,
    ) -> Result<Tensor, NodeError> {
        let _ = (host, req, cotangent);
        Err(no_gradients(&self.info().description))
    }

    /// Methods beyond `info` and `denoise` (queries such as `features`, transforms such as
    /// `with_lora`); `None` when it has no method of that name.
    fn call_extra(&self, host: HostRef, call: Call) -> Option<Reply> {
        let _ = (host, call);
        None
    }
}

fn no_gradients(who: &str) -> NodeError {
    NodeError::invalid(format!(
        "{who} cannot give gradients (the `vjp` method): use a model whose plugin implements it, such as sd.load_unet2d's, without wrappers"
    ))
}

fn vjp_args(args: &[Value]) -> Result<(DenoiseRequest, &Tensor), NodeError> {
    let req = DenoiseRequest::from_record(record_arg(args, "vjp")?)?;
    let cot = args.get(1).and_then(Value::as_tensor).ok_or_else(|| {
        NodeError::invalid(format!(
            "{DENOISER}.vjp takes a request and a cotangent tensor"
        ))
    })?;
    Ok((req, cot))
}

fn record_arg<'a>(args: &'a [Value], method: &str) -> Result<&'a Record, NodeError> {
    args.first()
        .and_then(Value::as_record)
        .ok_or_else(|| NodeError::invalid(format!("{DENOISER}.{method} takes one record")))
}

struct AsObject<T>(T);

impl<T: DenoiserImpl> ObjectImpl for AsObject<T> {
    fn interface(&self) -> String {
        DENOISER.into()
    }

    fn family(&self) -> String {
        self.0.info().family
    }

    fn call(&self, host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        match method {
            "info" => Ok(vec![self.0.info().to_record().into()]),
            "denoise" => {
                let req = DenoiseRequest::from_record(record_arg(&args, method)?)?;
                Ok(vec![self.0.denoise(host, req)?.to_record().into()])
            }
            "vjp" => {
                let (req, cot) = vjp_args(&args)?;
                Ok(vec![Value::Tensor(self.0.vjp(host, req, cot)?)])
            }
            other => self
                .0
                .call_extra(host, Call::new(other, &args))
                .unwrap_or_else(|| {
                    Err(NodeError::invalid(format!(
                        "this {DENOISER} ({}) has no method `{other}`",
                        self.0.info().description
                    )))
                }),
        }
    }

    fn describe(&self) -> String {
        self.0.info().description
    }
}

/// Wraps a denoiser as an object handle (panics inside become errors).
pub fn denoiser_handle<T: DenoiserImpl>(d: T) -> ObjectHandle {
    ObjectHandle::new(AsObject(d))
}

/// What a denoiser call returns.
pub type Denoised = Result<DenoiseOutput, NodeError>;

/// What a wrapper implements: only what it changes. The wrapped denoiser is held by the
/// handle ([`wrapper_handle`]); `info`, unknown methods and `with_…` transforms are forwarded to
/// it, the transformed model wrapped again with [`WrapperImpl::rewrapped`].
pub trait WrapperImpl: Send + Sync + Sized + 'static {
    /// A short name for descriptions, e.g. `DeepCache interval 3`.
    fn name(&self) -> String;

    /// The call; `inner` is the wrapped denoiser. The default forwards it unchanged.
    fn denoise(&self, inner: &DenoiserClient, host: HostRef, req: DenoiseRequest) -> Denoised {
        inner.denoise(host, req)
    }

    /// Methods of the wrapper itself; `None` forwards the call to `inner`.
    fn call_own(&self, inner: &ObjectHandle, host: HostRef, call: Call) -> Option<Reply> {
        let _ = (inner, host, call);
        None
    }

    /// The wrapper to put around a transformed inner model (a LoRA'd one); state that belongs to
    /// one model (caches) must start afresh.
    fn rewrapped(&self) -> Self;

    /// The family the wrapped model answers to, when the wrapper changes what conditioning it
    /// takes (ELLA turns an `sd1` UNet into a model conditioned on T5 features); `None` keeps the
    /// inner model's.
    fn family(&self) -> Option<String> {
        None
    }
}

struct Wrapped<W> {
    wrapper: W,
    inner: ObjectHandle,
    /// The inner denoiser's info, read once.
    inner_info: DenoiserInfo,
}

impl<W: WrapperImpl> ObjectImpl for Wrapped<W> {
    fn interface(&self) -> String {
        DENOISER.into()
    }

    fn family(&self) -> String {
        self.info().family
    }

    fn call(&self, host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        if let Some(r) =
            self.wrapper
                .call_own(&self.inner, host.sabi_reborrow(), Call::new(method, &args))
        {
            return r;
        }
        match method {
            "info" => Ok(vec![self.info().to_record().into()]),
            "denoise" => {
                let req = DenoiseRequest::from_record(record_arg(&args, method)?)?;
                let inner = DenoiserClient::new(&self.inner)?;
                Ok(vec![self
                    .wrapper
                    .denoise(&inner, host, req)?
                    .to_record()
                    .into()])
            }
            transform if transform.starts_with("with_") => {
                let mut out = self.inner.call(host.sabi_reborrow(), method, args)?;
                match out.first() {
                    Some(Value::Object(inner)) if inner.interface() == DENOISER => {
                        let again = wrapper_handle(host, inner.clone(), self.wrapper.rewrapped())?;
                        out[0] = Value::Object(again);
                        Ok(out)
                    }
                    _ => Err(NodeError::failed(format!(
                        "{method} returned no denoiser to wrap in {} again",
                        self.wrapper.name()
                    ))),
                }
            }
            // A wrapper changes the function, so the inner model's gradients are not its own:
            // only a wrapper that answers `vjp` itself (in `call_own`) gives them.
            "vjp" => Err(no_gradients(&self.info().description)),
            _ => self.inner.call(host, method, args),
        }
    }

    fn describe(&self) -> String {
        self.info().description
    }
}

impl<W: WrapperImpl> Wrapped<W> {
    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            description: format!(
                "{} over {}",
                self.wrapper.name(),
                self.inner_info.description
            ),
            family: self
                .wrapper
                .family()
                .unwrap_or_else(|| self.inner_info.family.clone()),
            ..self.inner_info.clone()
        }
    }
}

/// A node type that wraps its `model` input (a denoiser of any family `F`) in the wrapper that
/// `make` builds from the node's inputs and parameters; declare further inputs and parameters
/// on the result.
pub fn wrapper_node<W, F>(type_id: &str, what: &str, make: F) -> crate::sdk::NodeDef
where
    W: WrapperImpl,
    F: Fn(&crate::sdk::Ctx<'_>, &crate::sdk::Inputs, &crate::sdk::Params) -> Result<W, NodeError>
        + Send
        + Sync
        + 'static,
{
    let family = || crate::types::Family::var("F");
    crate::sdk::NodeDef::new(type_id, move |ctx, inputs, params| {
        let wrapper = make(ctx, inputs, params)?;
        let inner = inputs.object("model")?.clone();
        Ok(vec![Value::Object(wrapper_handle(
            ctx.host(),
            inner,
            wrapper,
        )?)])
    })
    .input(
        "model",
        crate::types::PortType::handle_of(DENOISER, family()),
        "the denoiser to wrap (bare, or under other wrappers)",
    )
    .output(
        "model",
        crate::types::PortType::handle_of(DENOISER, family()),
        what,
    )
}

/// Wraps the denoiser `inner` in `wrapper`; reads the inner denoiser's info once.
pub fn wrapper_handle<W: WrapperImpl>(
    host: HostRef<'_>,
    inner: ObjectHandle,
    wrapper: W,
) -> Result<ObjectHandle, NodeError> {
    let inner_info = DenoiserClient::new(&inner)?.info(host)?;
    Ok(ObjectHandle::new(Wrapped {
        wrapper,
        inner,
        inner_info,
    }))
}

/// The caller's side: typed calls on a denoiser handle from any plugin.
pub struct DenoiserClient<'a> {
    handle: &'a ObjectHandle,
}

impl<'a> DenoiserClient<'a> {
    /// Checks that `handle` is a denoiser.
    pub fn new(handle: &'a ObjectHandle) -> Result<Self, NodeError> {
        if handle.interface() != DENOISER {
            return Err(NodeError::invalid(format!(
                "expected a {DENOISER}, got a {}",
                handle.interface()
            )));
        }
        Ok(DenoiserClient { handle })
    }

    /// Family, prediction type and description.
    pub fn info(&self, host: HostRef<'_>) -> Result<DenoiserInfo, NodeError> {
        let out = self.handle.call(host, "info", Vec::new())?;
        match out.first() {
            Some(Value::Record(r)) => DenoiserInfo::from_record(r),
            _ => Err(NodeError::failed("info returned no record")),
        }
    }

    /// The model output for a request.
    pub fn denoise(&self, host: HostRef, req: DenoiseRequest) -> Denoised {
        let out = self
            .handle
            .call(host, "denoise", vec![req.to_record().into()])?;
        match out.first() {
            Some(Value::Record(r)) => DenoiseOutput::from_record(r),
            _ => Err(NodeError::failed("denoise returned no record")),
        }
    }

    /// `cotangentᵀ · ∂prediction/∂x` at the request's `x` (see [`DenoiserImpl::vjp`]).
    pub fn vjp(
        &self,
        host: HostRef,
        req: DenoiseRequest,
        cotangent: &Tensor,
    ) -> Result<Tensor, NodeError> {
        let args = vec![req.to_record().into(), Value::Tensor(cotangent.clone())];
        match self.handle.call(host, "vjp", args)?.into_iter().next() {
            Some(Value::Tensor(t)) => Ok(t),
            _ => Err(NodeError::failed("vjp returned no tensor")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_records() {
        let x = Tensor::from_vec(vec![0f32; 8], &[2, 4]).unwrap();
        let mut cond = Conditioning::context(Tensor::from_vec(vec![1f32; 6], &[2, 3, 1]).unwrap());
        cond.set(names::CONTROL_MID, Value::Tensor(x.clone()));
        let mut req = DenoiseRequest::new(x, 500.0, cond);
        req.step = Some(Step {
            index: 2,
            total: 10,
            guidance: Some(7.5),
        });
        req.set_option(
            names::DEEPCACHE,
            Record::new("DeepCache").with("branch", 1i64).into(),
        );
        let back = DenoiseRequest::from_record(&req.to_record()).unwrap();
        assert_eq!(back.timestep, 500.0);
        assert_eq!(back.step, req.step);
        assert_eq!(back.cond.context.as_ref().unwrap().shape(), vec![2, 3, 1]);
        assert!(back.cond.get(names::CONTROL_MID).is_some());
        assert!(back.option(names::DEEPCACHE).is_some());
    }

    #[test]
    fn a_step_outside_the_run_is_refused() {
        let x = Tensor::from_vec(vec![0f32; 2], &[2]).unwrap();
        let mut r = DenoiseRequest::new(x, 1.0, Conditioning::default()).to_record();
        r.set("step_index", 5i64);
        r.set("step_total", 5i64);
        assert!(DenoiseRequest::from_record(&r).is_err());
    }
}
