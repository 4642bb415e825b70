//! The SD UNet as a `Denoiser`: it reads everything wrappers put into a request — ControlNet
//! residuals in the conditioning, DeepCache and attention-capture options — so any chain of
//! wrappers ends here. Queries: `features` (VPD taps) and `attention_maps` (DAAM); transforms:
//! `with_lora`, `with_motion` (AnimateDiff's motion modules: the denoiser then takes video
//! latents B×C×F×H×W).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::Tensor as CTensor;
use latentflow_models::animatediff::{ContextWindows, MotionAdapter, MotionUNet, Weighting};
use latentflow_models::sd::daam::Accumulator;
use latentflow_models::sd::unet::Extras;
use latentflow_models::sd::{deepcache, lora, LoadedUNet, PredictionType};
use latentflow_plugin_api::sdk::denoiser::{
    denoiser_handle, names, Call, DenoiseOutput, DenoiseRequest, Denoised, DenoiserImpl,
    DenoiserInfo, PredictionKind,
};
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::{arg, f32_tensor, fail, int_arg, lora_result, tensor_list};

/// One layer's probabilities: name, heads, queries, tokens, values.
type AttentionRecord = (String, usize, usize, usize, Vec<f32>);

/// The UNet as a denoiser.
pub struct UNetDenoiser {
    model: Arc<LoadedUNet>,
    name: String,
    prediction: PredictionKind,
    /// AnimateDiff's motion modules, when applied.
    motion: Option<Arc<MotionAdapter>>,
    /// FreeNoise's windows for the motion modules, when set.
    windows: Option<ContextWindows>,
    /// DeepCache features by the caller's key.
    deep_cache: Mutex<HashMap<i64, CTensor>>,
    /// Cross-attention accumulators by the caller's key.
    attention: Mutex<HashMap<i64, Accumulator>>,
}

/// The protocol's name of a prediction type.
pub fn prediction_kind(p: PredictionType) -> PredictionKind {
    match p {
        PredictionType::Epsilon => PredictionKind::Epsilon,
        PredictionType::V => PredictionKind::V,
        PredictionType::Sample => PredictionKind::Sample,
    }
}

impl UNetDenoiser {
    /// Wraps a loaded UNet; `prediction` overrides its scheduler config's prediction type.
    pub fn new(model: Arc<LoadedUNet>, name: String, prediction: Option<PredictionKind>) -> Self {
        let prediction = prediction.unwrap_or(prediction_kind(model.prediction));
        Self {
            model,
            name,
            prediction,
            motion: None,
            windows: None,
            deep_cache: Default::default(),
            attention: Default::default(),
        }
    }

    /// As a handle.
    pub fn handle(self) -> ObjectHandle {
        denoiser_handle(self)
    }

    /// The context for a batch of `b` (a batch-1 conditioning broadcasts).
    fn context(&self, ctx: &Tensor, b: usize) -> Result<CTensor, NodeError> {
        let ctx = f32_tensor(ctx)?;
        let cb = ctx.dim(0).map_err(fail)?;
        if cb == b {
            Ok(ctx)
        } else if cb == 1 {
            ctx.repeat((b, 1, 1)).map_err(fail)
        } else {
            Err(NodeError::invalid(format!(
                "conditioning batch {cb} for a latent batch {b}"
            )))
        }
    }

    /// `features(x, t, context, attention)` → list of multi-scale UNet features, finest first.
    fn features(&self, args: &[Value]) -> Result<Vec<Value>, NodeError> {
        let m = "features";
        let x = f32_tensor(
            arg(args, 0, m)?
                .as_tensor()
                .ok_or_else(|| NodeError::invalid("features: x must be a tensor"))?,
        )?;
        let t = arg(args, 1, m)?.as_float().unwrap_or(1.0);
        let ctx = arg(args, 2, m)?
            .as_tensor()
            .ok_or_else(|| NodeError::invalid("features: the conditioning must be a tensor"))?;
        let ctx = self.context(ctx, x.dim(0).map_err(fail)?)?;
        let attention = matches!(args.get(3), Some(Value::Bool(true)));
        let feats = self
            .model
            .unet
            .features_with(&x, t, &ctx, attention)
            .map_err(fail)?;
        let feats = feats
            .iter()
            .map(latentflow_plugin_api::sdk::candle::from_candle)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![Value::List(
            feats.into_iter().map(Value::Tensor).collect(),
        )])
    }

    /// `with_lora(path, multiplier)` → `[LoRA'd denoiser, modules patched, unmatched names]`.
    fn with_lora(&self, args: &[Value]) -> Result<Vec<Value>, NodeError> {
        let (updates, m, path) = crate::convert::lora_args(args, "with_lora")?;
        let (model, applied) = lora::unet_with(&self.model, &updates, m).map_err(fail)?;
        let mut obj = UNetDenoiser::new(
            Arc::new(model),
            format!("{} + LoRA {path}", self.name),
            Some(self.prediction),
        );
        obj.motion = self.motion.clone();
        obj.windows = self.windows;
        Ok(lora_result(obj.handle(), &applied))
    }

    /// `with_motion(path[, context_length, context_stride, weighting])` → `[the denoiser with
    /// the motion adapter at path]`, with FreeNoise's windows when `context_length` > 0.
    fn with_motion(&self, args: &[Value]) -> Result<Vec<Value>, NodeError> {
        let path = arg(args, 0, "with_motion")?
            .as_str()
            .ok_or_else(|| NodeError::invalid("with_motion: the path must be a string"))?;
        let windows = match args.get(1) {
            None | Some(Value::Int(0)) => None,
            Some(Value::Int(length)) => {
                let stride = match args.get(2) {
                    Some(Value::Int(s)) => *s,
                    _ => 4,
                };
                let weighting = match args.get(3) {
                    Some(Value::Str(w)) => w.parse::<Weighting>().map_err(NodeError::invalid)?,
                    _ => Weighting::Pyramid,
                };
                let size = |v: i64, what: &str| {
                    usize::try_from(v)
                        .map_err(|_| NodeError::invalid(format!("{what} must not be negative")))
                };
                Some(
                    ContextWindows::new(
                        size(*length, "context_length")?,
                        size(stride, "context_stride")?,
                        weighting,
                    )
                    .map_err(NodeError::invalid)?,
                )
            }
            Some(_) => {
                return Err(NodeError::invalid(
                    "with_motion: context_length must be an integer",
                ))
            }
        };
        let unet = &self.model.unet;
        let adapter = MotionAdapter::load(
            std::path::Path::new(path),
            unet.config.norm_num_groups,
            &candle_core::Device::Cpu,
        )
        .map_err(|e| NodeError::invalid(e.to_string()))?;
        MotionUNet::new(unet, &adapter)
            .and_then(|m| m.with_windows(windows))
            .map_err(|e| NodeError::invalid(e.to_string()))?;
        let mut obj = UNetDenoiser::new(
            self.model.clone(),
            format!("{} + motion {path}", self.name),
            Some(self.prediction),
        );
        obj.motion = Some(Arc::new(adapter));
        obj.windows = windows;
        Ok(vec![Value::Object(obj.handle())])
    }

    /// `attention_maps(key)` → tokens × h × w global maps of the last capture.
    fn attention_maps(&self, args: &[Value]) -> Result<Vec<Value>, NodeError> {
        let key = int_arg(args, 0, "attention_maps")?;
        let stores = self.attention.lock().unwrap_or_else(|e| e.into_inner());
        let acc = stores.get(&key).filter(|a| !a.is_empty()).ok_or_else(|| {
            NodeError::invalid(
                "no cross-attention was captured: sample with the capturing model first",
            )
        })?;
        let (tokens, maps) = acc.global_maps();
        let (h, w) = acc.latent;
        Ok(vec![Value::Tensor(Tensor::from_vec(
            maps,
            &[tokens, h, w],
        )?)])
    }

    /// Adds a capture's records to its accumulator (down and up blocks, as DAAM does).
    fn accumulate(&self, capture: &Record, latent: (usize, usize), records: Vec<AttentionRecord>) {
        let key = capture.int("key").unwrap_or(0);
        let skip = capture.int("skip_factor").unwrap_or(8).max(0) as usize;
        let mut stores = self.attention.lock().unwrap_or_else(|e| e.into_inner());
        let acc = stores
            .entry(key)
            .or_insert_with(|| Accumulator::new(latent.0, latent.1, skip));
        if capture.flag("reset") || acc.latent != latent {
            *acc = Accumulator::new(latent.0, latent.1, skip);
        }
        for (name, heads, q, k, v) in records {
            if !name.starts_with("mid_block") {
                acc.add(&name, heads, q, k, &v);
            }
        }
    }
}

impl DenoiserImpl for UNetDenoiser {
    fn info(&self) -> DenoiserInfo {
        DenoiserInfo {
            family: self.model.family.name().into(),
            prediction: self.prediction,
            description: format!("UNet {}", self.name),
        }
    }

    fn denoise(&self, _host: HostRef, req: DenoiseRequest) -> Denoised {
        let x = f32_tensor(&req.x)?;
        let dims = x.dims().to_vec();
        let (b, h, w) = match (&self.motion, dims.as_slice()) {
            (None, [b, _, h, w]) | (Some(_), [b, _, _, h, w]) => (*b, *h, *w),
            (None, _) => {
                return Err(NodeError::invalid(format!(
                    "the SD UNet takes N×C×H×W latents, got {dims:?} (video latents need motion modules: sd.animatediff)"
                )))
            }
            (Some(_), _) => {
                return Err(NodeError::invalid(format!(
                    "this AnimateDiff model takes video latents N×C×F×H×W, got {dims:?}"
                )))
            }
        };
        let ctx = self.context(req.cond.require_context("the SD UNet")?, b)?;
        let down = match req.cond.get(names::CONTROL_DOWN) {
            Some(v) => Some(tensor_list(v, "ControlNet residuals")?),
            None => None,
        };
        let mid = match req.cond.get(names::CONTROL_MID) {
            Some(Value::Tensor(t)) => Some(f32_tensor(t)?),
            Some(_) => return Err(NodeError::invalid("the mid residual must be a tensor")),
            None => None,
        };
        // SDXL: the pooled embedding followed by the time ids (sd.sdxl_encode's `added`).
        let added = match &req.cond.pooled {
            Some(p) => {
                let p = f32_tensor(p)?;
                match p.dims() {
                    [pb, _] if *pb == b => Some(p),
                    [1, _] => Some(p.repeat((b, 1)).map_err(fail)?),
                    d => {
                        return Err(NodeError::invalid(format!(
                            "the added conditioning {d:?} for a batch of {b}"
                        )))
                    }
                }
            }
            None => None,
        };
        let capture = match req.option(names::CAPTURE_ATTENTION) {
            Some(Value::Record(r)) => Some(r.clone()),
            _ => None,
        };
        let cfg = req.step.is_some_and(|s| s.guided());
        let records: Mutex<Vec<AttentionRecord>> = Default::default();
        let hook = |name: &str, probs: &CTensor| {
            // B×heads×queries×tokens; keep the positive half under CFG (one sample: the first).
            let Ok((pb, heads, q, k)) = probs.dims4() else {
                return;
            };
            let row = if cfg && pb % 2 == 0 { pb / 2 } else { 0 };
            if let Ok(v) = probs
                .get(row)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
            {
                records.lock().unwrap_or_else(|e| e.into_inner()).push((
                    name.to_owned(),
                    heads,
                    q,
                    k,
                    v,
                ));
            }
        };
        let extras = Extras {
            down_residuals: down.as_deref(),
            mid_residual: mid.as_ref(),
            attention: capture.as_ref().map(|_| &hook as _),
            up_layer: None,
            layer: None,
            added: added.as_ref(),
        };
        let unet = &self.model.unet;
        let run = |x: &CTensor, ctx: &CTensor, extras: &Extras| -> Result<CTensor, NodeError> {
            self.run(x, req.timestep, ctx, extras, &req)
        };
        let out = match &self.motion {
            None => run(&x, &ctx, &extras)?,
            Some(adapter) => {
                let m = MotionUNet::new(unet, adapter)
                    .and_then(|m| m.with_windows(self.windows))
                    .map_err(|e| NodeError::invalid(e.to_string()))?;
                let (_, frames) = m
                    .check_input(&x)
                    .map_err(|e| NodeError::invalid(e.to_string()))?;
                let xf = MotionUNet::frames_of(&x).map_err(fail)?;
                let cf = MotionUNet::context_per_frame(&ctx, frames).map_err(fail)?;
                let out = m
                    .with_motion(frames, &extras, |extras| {
                        run(&xf, &cf, extras).map_err(|e| candle_core::Error::Msg(e.to_string()))
                    })
                    .map_err(|e| NodeError::invalid(e.to_string()))?;
                MotionUNet::video_of(&out, b).map_err(fail)?
            }
        };
        if let Some(c) = &capture {
            let records = records.into_inner().unwrap_or_else(|e| e.into_inner());
            self.accumulate(c, (h, w), records);
        }
        Ok(DenoiseOutput::new(
            latentflow_plugin_api::sdk::candle::from_candle(&out)?,
            self.prediction,
        ))
    }

    fn call_extra(&self, _: HostRef, call: Call) -> Option<Reply> {
        let args = call.args;
        Some(match call.method {
            "features" => self.features(args),
            "attention_maps" => self.attention_maps(args),
            "with_lora" => self.with_lora(args),
            "with_motion" => self.with_motion(args),
            _ => return None,
        })
    }
}

impl UNetDenoiser {
    /// One UNet pass over image latents (or a video's frames), with DeepCache when asked for.
    fn run(
        &self,
        x: &CTensor,
        t: f64,
        ctx: &CTensor,
        extras: &Extras,
        req: &DenoiseRequest,
    ) -> Result<CTensor, NodeError> {
        let unet = &self.model.unet;
        Ok(match req.option(names::DEEPCACHE) {
            Some(Value::Record(dc)) => {
                let key = dc.int("key")?;
                let branch = dc.int("branch")?.max(0) as usize;
                let mut caches = self.deep_cache.lock().unwrap_or_else(|e| e.into_inner());
                let mut cache = caches.remove(&key);
                let out = deepcache::forward(
                    unet,
                    x,
                    t,
                    ctx,
                    extras,
                    branch,
                    &mut cache,
                    dc.flag("refresh"),
                )
                .map_err(fail)?;
                if let Some(c) = cache {
                    caches.insert(key, c);
                }
                out
            }
            _ => unet.forward(x, t, ctx, extras).map_err(fail)?,
        })
    }
}
