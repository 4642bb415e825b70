//! `sd.deepcache`: DeepCache (Ma et al., 2024) as a denoiser wrapper. Every `cache_interval`-th
//! step runs the full UNet and keeps the deep feature entering the up path at
//! `cache_branch_id`; the steps between run only the shallow layers around that branch. The
//! wrapper asks for it with the request's `deepcache` option; the UNet at the end of the chain
//! does the work, so any wrappers may sit in between.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use latentflow_models::sd::deepcache::quad_center_schedule;
use latentflow_plugin_api::sdk::denoiser::{
    names, wrapper_node, DenoiseRequest, Denoised, DenoiserClient, WrapperImpl,
};
use latentflow_plugin_api::sdk::prelude::*;

static KEYS: AtomicI64 = AtomicI64::new(1);

/// Where the wrapper is within a sampling run.
struct Progress {
    step: usize,
    last_t: f64,
}

struct DeepCache {
    interval: usize,
    /// Quadratic refresh schedule around this step (`None`: uniform).
    quad_center: Option<f64>,
    branch: usize,
    key: i64,
    progress: Arc<Mutex<Progress>>,
}

impl DeepCache {
    /// A wrapper with its own cache key, at the start of a run.
    fn new(interval: usize, quad_center: Option<f64>, branch: usize) -> Self {
        DeepCache {
            interval,
            quad_center,
            branch,
            key: KEYS.fetch_add(1, Ordering::Relaxed),
            progress: Arc::new(Mutex::new(Progress {
                step: 0,
                last_t: f64::INFINITY,
            })),
        }
    }

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
    fn rewrapped(&self) -> Self {
        DeepCache::new(self.interval, self.quad_center, self.branch)
    }

    fn name(&self) -> String {
        format!(
            "DeepCache interval {} branch {}",
            self.interval, self.branch
        )
    }

    fn denoise(&self, inner: &DenoiserClient, host: HostRef, mut req: DenoiseRequest) -> Denoised {
        let refresh = self.refresh(&req)?;
        req.set_option(
            names::DEEPCACHE,
            Record::new("DeepCache")
                .with("branch", self.branch as i64)
                .with("refresh", refresh)
                .with("key", self.key)
                .into(),
        );
        inner.denoise(host, req)
    }
}

/// The node's definition.
pub fn node() -> NodeDef {
    wrapper_node("sd.deepcache", "the cached denoiser", |_, _, p| {
        let quad_center = match p.str("schedule")? {
            "quad" => Some(p.f64("center")?),
            _ => None,
        };
        Ok(DeepCache::new(
            p.usize("cache_interval")?.max(1),
            quad_center,
            p.usize("cache_branch_id")?,
        ))
    })
        .doc("DeepCache: every cache_interval-th sampling step runs the whole UNet and caches the deep feature at cache_branch_id (block = id / 3, layer = id % 3, numbered as the DeepCache package does); the steps in between recompute only the shallow layers. interval 1 is the plain model. Composes with every other wrapper (ControlNet, inpainting, attention capture, LoRA) in any order. Use one wrapped model per sampler at a time.")
        .param(Param::int("cache_interval").default(3).range(1.0, 1000.0).doc("full UNet every N steps"))
        .param(Param::int("cache_branch_id").default(0).range(0.0, 64.0).doc("skip branch whose deep feature is reused (0: shallowest)"))
        .param(Param::choice("schedule", &["uniform", "quad"]).default("uniform").doc("uniform: every cache_interval-th step is full; quad: ⌈steps/interval⌉ full steps packed around `center` (the DeepCache pipelines' non-uniform schedule, exponent 1.4)"))
        .param(Param::float("center").default(15.0).range(0.0, 1000.0).doc("quad: the step the full steps cluster around"))
}
