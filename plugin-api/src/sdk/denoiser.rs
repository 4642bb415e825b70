//! The `Denoiser` object interface: how a sampler in one plugin drives a model in another.
//!
//! A denoiser is an [`ObjectHandle`] whose interface is [`DENOISER`] and whose family names the
//! model family (`sd1`, `sd2`, ...). Methods:
//!
//! | method | arguments | returns |
//! |---|---|---|
//! | `predict` | `x`: tensor `N×C×H×W` f32 (the scheduler-scaled model input), `timestep`: float, `context`: conditioning tensor `N×T×D` or none | the model output, same shape as `x` |
//! | `prediction_type` | none | `"epsilon"` or `"v_prediction"` |
//!
//! Batching for classifier-free guidance is the sampler's business: it stacks the unconditional
//! and conditional halves along `N` and calls `predict` once, as diffusers does.

use crate::error::NodeError;
use crate::host::HostRef;
use crate::object::{ObjectHandle, ObjectImpl};
use crate::tensor::Tensor;
use crate::value::Value;

/// The interface name of denoisers.
pub const DENOISER: &str = "Denoiser";

/// What a model plugin implements to offer a denoiser.
pub trait DenoiserImpl: Send + Sync + 'static {
    /// The model family (`sd1`, ...).
    fn family(&self) -> String;

    /// `"epsilon"` or `"v_prediction"`.
    fn prediction_type(&self) -> String;

    /// The model output for input `x` at `timestep` with optional `context`.
    fn predict(
        &self,
        host: HostRef<'_>,
        x: &Tensor,
        timestep: f64,
        context: Option<&Tensor>,
    ) -> Result<Tensor, NodeError>;

    /// A short description.
    fn describe(&self) -> String {
        format!("{DENOISER}({})", self.family())
    }

    /// [`DenoiserImpl::predict`] with the sampler's position: wrappers that act on part of the
    /// schedule (ControlNet's guidance window, DeepCache) override this; the default ignores it.
    fn predict_step(
        &self,
        host: HostRef<'_>,
        x: &Tensor,
        timestep: f64,
        context: Option<&Tensor>,
        step: Option<Step>,
    ) -> Result<Tensor, NodeError> {
        let _ = step;
        self.predict(host, x, timestep, context)
    }

    /// Methods beyond `predict` and `prediction_type` that this denoiser offers (for example
    /// `predict_deepcache` of the SD UNet); `None` when it has no method of that name.
    fn call_extra(
        &self,
        _host: HostRef<'_>,
        _method: &str,
        _args: Vec<Value>,
    ) -> Option<Result<Vec<Value>, NodeError>> {
        None
    }
}

/// Where a sampler is when it calls the denoiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// This step's index within the run (0-based; img2img counts from its first step).
    pub index: usize,
    /// The number of steps in the run.
    pub total: usize,
    /// Whether the batch is `[negative; positive]` for classifier-free guidance.
    pub cfg: bool,
}

impl Step {
    /// As trailing `predict` arguments.
    pub fn to_args(self) -> [Value; 3] {
        [
            Value::Int(self.index as i64),
            Value::Int(self.total as i64),
            Value::Bool(self.cfg),
        ]
    }

    /// From `predict` arguments starting at `at` (absent or malformed: `None`).
    pub fn from_args(args: &[Value], at: usize) -> Option<Self> {
        let index = args.get(at)?.as_int()?;
        let total = args.get(at + 1)?.as_int()?;
        let cfg = matches!(args.get(at + 2), Some(Value::Bool(true)));
        (index >= 0 && total > 0).then_some(Step {
            index: index as usize,
            total: total as usize,
            cfg,
        })
    }
}

struct AsObject<T>(T);

impl<T: DenoiserImpl> ObjectImpl for AsObject<T> {
    fn interface(&self) -> String {
        DENOISER.into()
    }

    fn family(&self) -> String {
        self.0.family()
    }

    fn call(
        &self,
        host: HostRef<'_>,
        method: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, NodeError> {
        match method {
            "predict" => {
                let x = args.first().and_then(Value::as_tensor).ok_or_else(|| {
                    NodeError::invalid("predict: argument 1 must be the input tensor")
                })?;
                let t = args.get(1).and_then(Value::as_float).ok_or_else(|| {
                    NodeError::invalid("predict: argument 2 must be the timestep")
                })?;
                let context = args.get(2).and_then(Value::as_tensor);
                let step = Step::from_args(&args, 3);
                Ok(vec![Value::Tensor(
                    self.0.predict_step(host, x, t, context, step)?,
                )])
            }
            "prediction_type" => Ok(vec![Value::from(self.0.prediction_type())]),
            other => self.0.call_extra(host, other, args).unwrap_or_else(|| {
                Err(NodeError::invalid(format!(
                    "this {DENOISER} has no method `{other}`"
                )))
            }),
        }
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// Wraps a denoiser as an object handle (panics inside become errors).
pub fn denoiser_handle<T: DenoiserImpl>(d: T) -> ObjectHandle {
    ObjectHandle::new(AsObject(d))
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

    /// The model's prediction type.
    pub fn prediction_type(&self, host: HostRef<'_>) -> Result<String, NodeError> {
        let out = self.handle.call(host, "prediction_type", Vec::new())?;
        out.first()
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| NodeError::failed("prediction_type returned no string"))
    }

    /// The model output for `x` at `timestep`.
    pub fn predict(
        &self,
        host: HostRef<'_>,
        x: Tensor,
        timestep: f64,
        context: Option<Tensor>,
    ) -> Result<Tensor, NodeError> {
        self.predict_step(host, x, timestep, context, None)
    }

    /// The model output for `x` at `timestep`, telling the model where the sampler is.
    pub fn predict_step(
        &self,
        host: HostRef<'_>,
        x: Tensor,
        timestep: f64,
        context: Option<Tensor>,
        step: Option<Step>,
    ) -> Result<Tensor, NodeError> {
        let mut args = vec![
            Value::Tensor(x),
            Value::Float(timestep),
            context.map(Value::Tensor).unwrap_or(Value::None),
        ];
        if let Some(s) = step {
            args.extend(s.to_args());
        }
        let out = self.handle.call(host, "predict", args)?;
        match out.into_iter().next() {
            Some(Value::Tensor(t)) => Ok(t),
            _ => Err(NodeError::failed("predict returned no tensor")),
        }
    }
}
