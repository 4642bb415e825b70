//! `sd.deepcache`: DeepCache (Ma et al., 2024) as a denoiser wrapper. Every `cache_interval`-th
//! step runs the full UNet and keeps the deep feature entering the up path at
//! `cache_branch_id`; the steps between run only the shallow layers around that branch. The
//! wrapper asks for it with the request's `deepcache` option; the UNet at the end of the chain
//! does the work, so any wrappers may sit in between.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use latentflow_models::sd::deepcache::quad_center_schedule;
use latentflow_plugin_api::sdk::denoiser::{
    names, wrapper_handle, DenoiseOutput, DenoiseRequest, WrapperImpl,
};
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
    progress: Arc<Mutex<Progress>>,
}

impl DeepCache {
    /// Whether this call is a refresh (full) step.
    fn refresh(&self, req: &DenoiseRequest) -> Result<bool, NodeError> {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        match req.step {
            // The sampler says where it is.
            Some(s) => p.step = s.index,
            // Otherwise: timesteps fall within a run; one that does not starts a new run.
            None if req.timestep >= p.last_t => p.step = 0,
            None => {}
        }
        p.last_t = req.timestep;
        let refresh = match (self.quad_center, req.step) {
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
        Ok(refresh)
    }
}

impl WrapperImpl for DeepCache {
    fn inner(&self) -> &ObjectHandle {
        &self.inner
    }

    fn with_inner(&self, inner: ObjectHandle) -> Self {
        DeepCache {
            inner,
            interval: self.interval,
            quad_center: self.quad_center,
            branch: self.branch,
            key: KEYS.fetch_add(1, Ordering::Relaxed),
            progress: Arc::new(Mutex::new(Progress {
                step: 0,
                last_t: f64::INFINITY,
            })),
        }
    }

    fn name(&self) -> String {
        format!(
            "DeepCache interval {} branch {}",
            self.interval, self.branch
        )
    }

    fn denoise(
        &self,
        host: HostRef<'_>,
        mut req: DenoiseRequest,
    ) -> Result<DenoiseOutput, NodeError> {
        let refresh = self.refresh(&req)?;
        req.set_option(
            names::DEEPCACHE,
            Record::new("DeepCache")
                .with("branch", self.branch as i64)
                .with("refresh", refresh)
                .with("key", self.key)
                .into(),
        );
        latentflow_plugin_api::sdk::denoiser::DenoiserClient::new(&self.inner)?.denoise(host, req)
    }
}

fn deepcache(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let quad_center = match p.str("schedule")? {
        "quad" => Some(p.f64("center")?),
        _ => None,
    };
    let wrapped = DeepCache {
        inner: inputs.object("model")?.clone(),
        interval: p.usize("cache_interval")?.max(1),
        quad_center,
        branch: p.usize("cache_branch_id")?,
        key: KEYS.fetch_add(1, Ordering::Relaxed),
        progress: Arc::new(Mutex::new(Progress {
            step: 0,
            last_t: f64::INFINITY,
        })),
    };
    Ok(vec![Value::Object(wrapper_handle(ctx.host(), wrapped)?)])
}

/// The node's definition.
pub fn node() -> NodeDef {
    let f = || Family::var("F");
    NodeDef::new("sd.deepcache", deepcache)
        .doc("DeepCache: every cache_interval-th sampling step runs the whole UNet and caches the deep feature at cache_branch_id (block = id / 3, layer = id % 3, numbered as the DeepCache package does); the steps in between recompute only the shallow layers. interval 1 is the plain model. Composes with every other wrapper (ControlNet, inpainting, attention capture, LoRA) in any order. Use one wrapped model per sampler at a time.")
        .input("model", PortType::handle_of("Denoiser", f()), "an SD UNet denoiser, wrapped or not")
        .output("model", PortType::handle_of("Denoiser", f()), "the cached denoiser")
        .param(Param::int("cache_interval").default(3).range(1.0, 1000.0).doc("full UNet every N steps"))
        .param(Param::int("cache_branch_id").default(0).range(0.0, 64.0).doc("skip branch whose deep feature is reused (0: shallowest)"))
        .param(Param::choice("schedule", &["uniform", "quad"]).default("uniform").doc("uniform: every cache_interval-th step is full; quad: ⌈steps/interval⌉ full steps packed around `center` (the DeepCache pipelines' non-uniform schedule, exponent 1.4)"))
        .param(Param::float("center").default(15.0).range(0.0, 1000.0).doc("quad: the step the full steps cluster around"))
}
