//! The `SamplerHook` protocol: code in any plugin that sees, and may replace, the predicted
//! clean sample x̂0 of each sampling step and the latent after it. The inpainting blend is one;
//! TPM-guided inpainting and FreeInit are others.
//!
//! | method | argument | returns |
//! |---|---|---|
//! | `info` | none | a `HookInfo` record: `wants_x0` (bool) |
//! | `on_x0` | a `HookStep` record with `x0` | a replacement tensor, or none |
//! | `on_step` | a `HookStep` record with `x` | a replacement tensor, or none |
//!
//! A `HookStep` record has `index`, `total`, `timestep`, the coefficients `next_a`, `next_b`
//! that noise a clean sample to the level the latent has after this step (a·x0 + b·noise; absent
//! after the last step), `initial_noise`, the unit noise the run started from, and, when the
//! sampler knows them, `variance` (the model's variance of p(x_{t−1} | x_t), the latent's shape)
//! and `t_index`, `t_count` (the step's timestep index in a respaced process, counting down, and
//! the process's length).

use crate::error::NodeError;
use crate::host::HostRef;
use crate::object::{ObjectHandle, ObjectImpl, Reply};
use crate::tensor::Tensor;
use crate::value::{Record, Value};

/// The interface name of sampler hooks.
pub const SAMPLER_HOOK: &str = "SamplerHook";

/// Where the sampler is, for a hook.
#[derive(Debug, Clone)]
pub struct HookStep {
    /// This step's index within the run (0-based).
    pub index: usize,
    /// Steps in the run.
    pub total: usize,
    /// The timestep given to the model.
    pub timestep: f64,
    /// (a, b): a·x0 + b·noise is a clean sample at the latent's level after this step; `None`
    /// after the last step.
    pub next_level: Option<(f64, f64)>,
    /// The unit noise the run started from.
    pub initial_noise: Tensor,
    /// The model's variance of p(x_{t−1} | x_t), when the sampler knows it.
    pub variance: Option<Tensor>,
    /// The step's timestep index in a respaced process (counting down) and its length, when the
    /// sampler runs one.
    pub position: Option<(usize, usize)>,
}

impl HookStep {
    fn to_record(&self, tensor_name: &str, t: &Tensor) -> Record {
        let mut r = Record::new("HookStep")
            .with("index", self.index as i64)
            .with("total", self.total as i64)
            .with("timestep", self.timestep)
            .with("initial_noise", self.initial_noise.clone())
            .with(tensor_name, t.clone());
        if let Some((a, b)) = self.next_level {
            r.set("next_a", a);
            r.set("next_b", b);
        }
        if let Some(v) = &self.variance {
            r.set("variance", v.clone());
        }
        if let Some((i, n)) = self.position {
            r.set("t_index", i as i64);
            r.set("t_count", n as i64);
        }
        r
    }

    fn from_record(r: &Record) -> Result<Self, NodeError> {
        r.expect_kind("HookStep")?;
        let next_level = match (r.get("next_a"), r.get("next_b")) {
            (Some(a), Some(b)) => Some((a.as_float().unwrap_or(1.0), b.as_float().unwrap_or(0.0))),
            _ => None,
        };
        Ok(HookStep {
            index: r.int("index")?.max(0) as usize,
            total: r.int("total")?.max(0) as usize,
            timestep: r.float("timestep")?,
            next_level,
            initial_noise: r.tensor("initial_noise")?.clone(),
            variance: r.get("variance").and_then(Value::as_tensor).cloned(),
            position: match (r.get("t_index"), r.get("t_count")) {
                (Some(Value::Int(i)), Some(Value::Int(n))) if *i >= 0 && *n > *i => {
                    Some((*i as usize, *n as usize))
                }
                _ => None,
            },
        })
    }
}

/// Where in a step a hook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// x̂0, before the step is taken from it (method `on_x0`, record field `x0`; only for hooks
    /// that want it).
    X0,
    /// The latent after the step (method `on_step`, record field `x`).
    Latent,
}

impl HookPoint {
    /// The protocol method and the record field holding the tensor.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            HookPoint::X0 => ("on_x0", "x0"),
            HookPoint::Latent => ("on_step", "x"),
        }
    }
}

/// A hook's answer: a replacement tensor, or none to leave it as it is.
pub type Replacement = Result<Option<Tensor>, NodeError>;

/// What a plugin implements to offer a sampler hook.
pub trait SamplerHookImpl: Send + Sync + 'static {
    /// Whether it is called at [`HookPoint::X0`].
    fn wants_x0(&self) -> bool {
        false
    }

    /// The tensor at `at` of this step; a returned tensor replaces it.
    fn see(&self, host: HostRef, at: HookPoint, step: &HookStep, t: &Tensor) -> Replacement;

    /// A short description.
    fn describe(&self) -> String {
        SAMPLER_HOOK.into()
    }
}

struct AsObject<T>(T);

impl<T: SamplerHookImpl> ObjectImpl for AsObject<T> {
    fn interface(&self) -> String {
        SAMPLER_HOOK.into()
    }

    fn call(&self, host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        let record = || {
            args.first().and_then(Value::as_record).ok_or_else(|| {
                NodeError::invalid(format!("{SAMPLER_HOOK}.{method} takes one record"))
            })
        };
        let replaced = |t: Option<Tensor>| vec![t.map(Value::Tensor).unwrap_or(Value::None)];
        match method {
            "info" => Ok(vec![Record::new("HookInfo")
                .with("wants_x0", self.0.wants_x0())
                .into()]),
            "on_x0" | "on_step" => {
                let at = if method == "on_x0" {
                    HookPoint::X0
                } else {
                    HookPoint::Latent
                };
                let r = record()?;
                let step = HookStep::from_record(r)?;
                let t = r.tensor(at.names().1)?;
                Ok(replaced(self.0.see(host, at, &step, t)?))
            }
            other => Err(NodeError::invalid(format!(
                "this {SAMPLER_HOOK} has no method `{other}`"
            ))),
        }
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// Wraps a hook as an object handle.
pub fn hook_handle<T: SamplerHookImpl>(hook: T) -> ObjectHandle {
    ObjectHandle::new(AsObject(hook))
}

/// The sampler's side.
pub struct HookClient<'a> {
    handle: &'a ObjectHandle,
    wants_x0: bool,
}

impl<'a> HookClient<'a> {
    /// Checks that `handle` is a sampler hook and asks what it wants.
    pub fn new(host: HostRef<'_>, handle: &'a ObjectHandle) -> Result<Self, NodeError> {
        if handle.interface() != SAMPLER_HOOK {
            return Err(NodeError::invalid(format!(
                "expected a {SAMPLER_HOOK}, got a {}",
                handle.interface()
            )));
        }
        let info = handle.call(host, "info", Vec::new())?;
        let wants_x0 = info
            .first()
            .and_then(Value::as_record)
            .is_some_and(|r| r.flag("wants_x0"));
        Ok(HookClient { handle, wants_x0 })
    }

    /// Whether it wants x̂0.
    pub fn wants_x0(&self) -> bool {
        self.wants_x0
    }

    /// The tensor at `at` of this step, possibly replaced.
    pub fn see(&self, host: HostRef, at: HookPoint, step: &HookStep, t: &Tensor) -> Replacement {
        let (method, field) = at.names();
        let out = self
            .handle
            .call(host, method, vec![step.to_record(field, t).into()])?;
        match out.into_iter().next() {
            Some(Value::Tensor(t)) => Ok(Some(t)),
            Some(Value::None) | None => Ok(None),
            Some(other) => Err(NodeError::failed(format!(
                "{SAMPLER_HOOK}.{method} returned a {}",
                other.kind_name()
            ))),
        }
    }
}
