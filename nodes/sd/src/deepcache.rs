//! `sd.deepcache`: DeepCache (Ma et al., 2024) as a denoiser wrapper. Every `cache_interval`-th
//! step runs the full UNet and keeps the deep feature entering the up path at
//! `cache_branch_id`; the steps between run only the shallow layers around that branch. Any
//! sampler works with it; the wrapped model must offer `predict_deepcache` (the SD UNet does).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use latentflow_plugin_api::sdk::denoiser::{denoiser_handle, DenoiserClient, DenoiserImpl, Step};
use latentflow_plugin_api::sdk::prelude::*;

static KEYS: AtomicI64 = AtomicI64::new(1);

/// Where the wrapper is within a sampling run.
struct Progress {
    step: usize,
    last_t: f64,
}

struct DeepCache {
    inner: ObjectHandle,
    interval: usize,
    /// Quadratic refresh schedule around this step (`None`: uniform).
    quad_center: Option<f64>,
    branch: usize,
    key: i64,
    prediction: String,
    progress: Mutex<Progress>,
}

impl DenoiserImpl for DeepCache {
    fn family(&self) -> String {
        "sd-deepcache".into()
    }

    fn prediction_type(&self) -> String {
        self.prediction.clone()
    }

    fn predict(
        &self,
        host: HostRef<'_>,
        x: &Tensor,
        timestep: f64,
        context: Option<&Tensor>,
    ) -> Result<Tensor, NodeError> {
        self.predict_step(host, x, timestep, context, None)
    }

    fn predict_step(
        &self,
        host: HostRef<'_>,
        x: &Tensor,
        timestep: f64,
        context: Option<&Tensor>,
        step: Option<Step>,
    ) -> Result<Tensor, NodeError> {
        let refresh = {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            match step {
                // The sampler says where it is.
                Some(s) => p.step = s.index,
                // Otherwise: timesteps fall within a run; one that does not starts a new run.
                None if timestep >= p.last_t => p.step = 0,
                None => {}
            }
            p.last_t = timestep;
            let refresh = match (self.quad_center, step) {
                (Some(center), Some(s)) => quad_center_schedule(s.total, self.interval, center, 1.4)
                    .ok_or_else(|| {
                        NodeError::invalid(format!(
                            "no quadratic DeepCache schedule fits {} steps at interval {}: use schedule uniform",
                            s.total, self.interval
                        ))
                    })?
                    .contains(&p.step),
                _ => p.step.is_multiple_of(self.interval),
            };
            p.step += 1;
            refresh
        };
        let ctx = context.ok_or_else(|| NodeError::invalid("DeepCache needs a conditioning"))?;
        let mut args = vec![
            Value::Tensor(x.clone()),
            Value::Float(timestep),
            Value::Tensor(ctx.clone()),
            Value::Int(self.branch as i64),
            Value::Bool(refresh),
            Value::Int(self.key),
        ];
        // The step, for wrappers in between (a ControlNet's guidance window).
        args.extend(
            step.map(Step::to_args)
                .unwrap_or([Value::None, Value::None, Value::None]),
        );
        let out = self.inner.call(host, "predict_deepcache", args)?;
        match out.into_iter().next() {
            Some(Value::Tensor(t)) => Ok(t),
            _ => Err(NodeError::failed("predict_deepcache returned no tensor")),
        }
    }

    fn describe(&self) -> String {
        format!(
            "Denoiser(DeepCache interval {} branch {} over {})",
            self.interval,
            self.branch,
            self.inner.describe()
        )
    }
}

/// The node.
pub fn deepcache(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let inner = inputs.object("model")?.clone();
    let prediction = DenoiserClient::new(&inner)?.prediction_type(ctx.host())?;
    let interval = p.usize("cache_interval")?.max(1);
    let quad_center = match p.str("schedule")? {
        "quad" => Some(p.f64("center")?),
        _ => None,
    };
    let wrapped = DeepCache {
        inner,
        interval,
        quad_center,
        branch: p.usize("cache_branch_id")?,
        key: KEYS.fetch_add(1, Ordering::Relaxed),
        prediction,
        progress: Mutex::new(Progress {
            step: 0,
            last_t: f64::INFINITY,
        }),
    };
    Ok(vec![Value::Object(denoiser_handle(wrapped))])
}

/// The node's definition.
pub fn node() -> NodeDef {
    NodeDef::new("sd.deepcache", deepcache)
        .doc("DeepCache: every cache_interval-th sampling step runs the whole UNet and caches the deep feature at cache_branch_id (block = id / 3, layer = id % 3, numbered as the DeepCache package does); the steps in between recompute only the shallow layers. interval 1 is the plain model. Use one wrapped model per sampler at a time.")
        .input("model", PortType::handle("Denoiser", ""), "an SD UNet denoiser")
        .output("model", PortType::handle("Denoiser", ""), "the cached denoiser")
        .param(Param::int("cache_interval").default(3).range(1.0, 1000.0).doc("full UNet every N steps"))
        .param(Param::int("cache_branch_id").default(0).range(0.0, 64.0).doc("skip branch whose deep feature is reused (0: shallowest)"))
        .param(Param::choice("schedule", &["uniform", "quad"]).default("uniform").doc("uniform: every cache_interval-th step is full; quad: ⌈steps/interval⌉ full steps packed around `center` (the DeepCache pipelines' non-uniform schedule, exponent 1.4)"))
        .param(Param::float("center").default(15.0).range(0.0, 1000.0).doc("quad: the step the full steps cluster around"))
}

/// DeepCache's non-uniform refresh steps (`sample_from_quad_center` of the DeepCache
/// pipelines): n = ⌈steps / interval⌉ full steps, denser around step `center`. The reference
/// evaluates x^p on a linspace that starts at the complex (−center)^(1/p) and truncates the
/// real parts; this reproduces that arithmetic. Starting from `pow`, the exponent drops by 0.02
/// until the set has n steps; `None` when no exponent above 1 works.
pub fn quad_center_schedule(
    steps: usize,
    interval: usize,
    center: f64,
    pow: f64,
) -> Option<Vec<usize>> {
    let n = steps.div_ceil(interval.max(1));
    let mut p = pow;
    while p > 1.0 {
        // Endpoints: (−c)^(1/p) is complex (principal value); (steps − c)^(1/p) is real.
        let (r0, t0) = (center.powf(1.0 / p), std::f64::consts::PI / p);
        let start = (r0 * t0.cos(), r0 * t0.sin());
        let end_base = steps as f64 - center;
        let end = if end_base >= 0.0 {
            (end_base.powf(1.0 / p), 0.0)
        } else {
            let r = (-end_base).powf(1.0 / p);
            (r * t0.cos(), r * t0.sin())
        };
        let count = n + 1;
        let step = (
            (end.0 - start.0) / (count - 1) as f64,
            (end.1 - start.1) / (count - 1) as f64,
        );
        let mut values: Vec<i64> = (0..count)
            .map(|k| {
                let z = if k == count - 1 {
                    end
                } else {
                    (start.0 + k as f64 * step.0, start.1 + k as f64 * step.1)
                };
                // z^p = exp(p·log z), then numpy's int32 cast of the real part.
                let (re, im) = z;
                let (r, theta) = ((re * re + im * im).sqrt(), im.atan2(re));
                let w = r.powf(p) * (p * theta).cos();
                w.trunc() as i64
            })
            .collect();
        values.sort_unstable();
        values.dedup();
        let mut out = vec![0usize];
        if values.len() > 2 {
            out.extend(
                values[1..values.len() - 1]
                    .iter()
                    .map(|v| (*v as f64 + center) as usize),
            );
        }
        if out.len() == n {
            out.sort_unstable();
            return Some(out);
        }
        p -= 0.02;
    }
    None
}
