//! The models as object handles that other plugins call through the ABI.

use std::sync::Arc;

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::denoiser::DenoiserImpl;
use latentflow_plugin_api::sdk::prelude::*;

use crate::models::{Denoiser, TextEncoder};
use crate::prompt;
use crate::unet::Hooks;
use crate::vae::Vae;
use crate::SdError;

fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

fn f32_tensor(t: &Tensor) -> Result<CTensor, NodeError> {
    to_candle(t, &Device::Cpu)?
        .to_dtype(CDType::F32)
        .map_err(fail)
}

fn arg<'a>(args: &'a [Value], i: usize, method: &str) -> Result<&'a Value, NodeError> {
    args.get(i)
        .ok_or_else(|| NodeError::invalid(format!("{method}: missing argument {i}")))
}

fn int_arg(args: &[Value], i: usize, method: &str) -> Result<i64, NodeError> {
    arg(args, i, method)?
        .as_int()
        .ok_or_else(|| NodeError::invalid(format!("{method}: argument {i} must be an integer")))
}

/// The UNet as a `Denoiser`.
pub struct UNetDenoiser {
    model: Arc<Denoiser>,
    name: String,
    /// Replaces the prediction type of the model's scheduler config.
    pub prediction_override: Option<String>,
    /// DeepCache features by the caller's cache key.
    deep_cache: std::sync::Mutex<std::collections::HashMap<i64, CTensor>>,
    /// Cross-attention accumulators by the caller's key.
    attention: std::sync::Mutex<std::collections::HashMap<i64, crate::daam::Accumulator>>,
}

impl UNetDenoiser {
    /// Wraps a loaded UNet.
    pub fn new(model: Arc<Denoiser>, name: String) -> Self {
        Self {
            model,
            name,
            prediction_override: None,
            deep_cache: Default::default(),
            attention: Default::default(),
        }
    }
}

/// One layer's probabilities: name, heads, queries, tokens, values.
type AttentionRecord = (String, usize, usize, usize, Vec<f32>);

/// `with_lora(path, multiplier)` arguments, read.
fn lora_args(
    args: &[Value],
    what: &str,
) -> Result<(Vec<crate::lora::Update>, f64, String), NodeError> {
    let path = arg(args, 0, what)?
        .as_str()
        .ok_or_else(|| NodeError::invalid(format!("{what}: the path must be a string")))?;
    let m = args.get(1).and_then(Value::as_float).unwrap_or(1.0);
    let updates = crate::lora::read(std::path::Path::new(path)).map_err(fail)?;
    Ok((updates, m, path.to_owned()))
}

/// The result of `with_lora`: the new object, modules patched, the unmatched module names.
fn lora_result(object: ObjectHandle, applied: &crate::lora::Applied) -> Vec<Value> {
    vec![
        Value::Object(object),
        Value::Int(applied.patched as i64),
        Value::List(
            applied
                .unmatched
                .iter()
                .map(|m| Value::Str(m.as_str().into()))
                .collect(),
        ),
    ]
}

impl UNetDenoiser {
    /// `features(x, t, context, attention)` → list of multi-scale UNet features, finest first
    /// (with `attention`, cross-attention maps appended to the coarser levels).
    fn features(&self, args: &[Value]) -> Result<Vec<Value>, NodeError> {
        let m = "features";
        let x = f32_tensor(
            arg(args, 0, m)?
                .as_tensor()
                .ok_or_else(|| NodeError::invalid("features: x must be a tensor"))?,
        )?;
        let t = arg(args, 1, m)?.as_float().unwrap_or(1.0);
        let ctx =
            f32_tensor(arg(args, 2, m)?.as_tensor().ok_or_else(|| {
                NodeError::invalid("features: the conditioning must be a tensor")
            })?)?;
        let (b, cb) = (x.dim(0).map_err(fail)?, ctx.dim(0).map_err(fail)?);
        let ctx = if cb == 1 && b > 1 {
            ctx.repeat((b, 1, 1)).map_err(fail)?
        } else {
            ctx
        };
        let attention = matches!(args.get(3), Some(Value::Bool(true)));
        let feats = self
            .model
            .unet
            .features_with(&x, t, &ctx, attention)
            .map_err(fail)?;
        let feats = feats
            .iter()
            .map(from_candle)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![Value::List(
            feats.into_iter().map(Value::Tensor).collect(),
        )])
    }

    /// `with_lora(path, multiplier)` → `[LoRA'd denoiser, modules patched, unmatched names]`.
    fn with_lora(&self, args: &[Value]) -> Result<Vec<Value>, NodeError> {
        let (updates, m, path) = lora_args(args, "with_lora")?;
        let (model, applied) = crate::lora::unet_with(&self.model, &updates, m).map_err(fail)?;
        let mut obj = UNetDenoiser::new(Arc::new(model), format!("{} + LoRA {path}", self.name));
        obj.prediction_override = self.prediction_override.clone();
        Ok(lora_result(
            latentflow_plugin_api::sdk::denoiser::denoiser_handle(obj),
            &applied,
        ))
    }

    /// `predict_capture(x, t, context, key, reset, cfg, skip_factor)`: a prediction that also
    /// adds every cross-attention's probabilities (the positive half of a CFG batch) to the
    /// accumulator `key` (started afresh when `reset`).
    fn predict_capture(&self, args: &[Value]) -> Result<Vec<Value>, NodeError> {
        let m = "predict_capture";
        let tensor =
            |i: usize| -> Result<CTensor, NodeError> {
                f32_tensor(arg(args, i, m)?.as_tensor().ok_or_else(|| {
                    NodeError::invalid(format!("{m}: argument {i} must be a tensor"))
                })?)
            };
        let x = tensor(0)?;
        let t = arg(args, 1, m)?
            .as_float()
            .ok_or_else(|| NodeError::invalid(format!("{m}: t must be a number")))?;
        let ctx = tensor(2)?;
        let key = int_arg(args, 3, m)?;
        let reset = matches!(args.get(4), Some(Value::Bool(true)));
        let cfg = matches!(args.get(5), Some(Value::Bool(true)));
        let skip = args.get(6).and_then(Value::as_int).unwrap_or(8).max(0) as usize;
        let (_, _, h, w) = x.dims4().map_err(fail)?;
        let records: std::sync::Mutex<Vec<AttentionRecord>> = Default::default();
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
        let hooks = Hooks {
            down_residuals: None,
            mid_residual: None,
            attention: Some(&hook),
        };
        let out = self.model.unet.forward(&x, t, &ctx, &hooks).map_err(fail)?;
        let mut stores = self.attention.lock().unwrap_or_else(|e| e.into_inner());
        let acc = stores
            .entry(key)
            .or_insert_with(|| crate::daam::Accumulator::new(h, w, skip));
        if reset || acc.latent != (h, w) {
            *acc = crate::daam::Accumulator::new(h, w, skip);
        }
        // DAAM uses the down and up blocks' cross-attention, not the mid block's.
        for (name, heads, q, k, v) in records.into_inner().unwrap_or_else(|e| e.into_inner()) {
            if !name.starts_with("mid_block") {
                acc.add(&name, heads, q, k, &v);
            }
        }
        Ok(vec![Value::Tensor(from_candle(&out)?)])
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

    /// `predict_with_residuals(x, t, context, [down residuals], mid residual)` (ControlNet).
    fn predict_with_residuals(&self, args: &[Value]) -> Result<Vec<Value>, NodeError> {
        let m = "predict_with_residuals";
        let tensor = |i: usize, what: &str| -> Result<CTensor, NodeError> {
            f32_tensor(
                arg(args, i, m)?
                    .as_tensor()
                    .ok_or_else(|| NodeError::invalid(format!("{m}: {what} must be a tensor")))?,
            )
        };
        let x = tensor(0, "x")?;
        let t = arg(args, 1, m)?
            .as_float()
            .ok_or_else(|| NodeError::invalid(format!("{m}: t must be a number")))?;
        let ctx = tensor(2, "the conditioning")?;
        let down = match arg(args, 3, m)? {
            Value::List(items) => items
                .iter()
                .map(|v| {
                    v.as_tensor()
                        .ok_or_else(|| {
                            NodeError::invalid(format!("{m}: residuals must be tensors"))
                        })
                        .and_then(f32_tensor)
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(NodeError::invalid(format!(
                    "{m}: argument 3 must be a list"
                )))
            }
        };
        let mid = tensor(4, "the mid residual")?;
        let hooks = Hooks {
            down_residuals: Some(&down),
            mid_residual: Some(&mid),
            attention: None,
        };
        let out = self.model.unet.forward(&x, t, &ctx, &hooks).map_err(fail)?;
        Ok(vec![Value::Tensor(from_candle(&out)?)])
    }
}

impl DenoiserImpl for UNetDenoiser {
    fn family(&self) -> String {
        "sd".into()
    }

    fn prediction_type(&self) -> String {
        self.prediction_override
            .clone()
            .unwrap_or_else(|| self.model.prediction_type.clone())
    }

    fn predict(
        &self,
        _host: HostRef<'_>,
        x: &Tensor,
        timestep: f64,
        context: Option<&Tensor>,
    ) -> Result<Tensor, NodeError> {
        let x = f32_tensor(x)?;
        let ctx =
            context.ok_or_else(|| NodeError::invalid("the SD UNet needs a text conditioning"))?;
        let ctx = f32_tensor(ctx)?;
        let (b, cb) = (x.dim(0).map_err(fail)?, ctx.dim(0).map_err(fail)?);
        let ctx = if cb == b {
            ctx
        } else if cb == 1 {
            ctx.repeat((b, 1, 1)).map_err(fail)?
        } else {
            return Err(NodeError::invalid(format!(
                "conditioning batch {cb} for a latent batch {b}"
            )));
        };
        let out = self
            .model
            .unet
            .forward(&x, timestep, &ctx, &Hooks::default())
            .map_err(fail)?;
        from_candle(&out)
    }

    fn describe(&self) -> String {
        format!("Denoiser(UNet {})", self.name)
    }

    /// `predict_deepcache(x, t, context, cache_branch_id, refresh, key)`: one DeepCache step
    /// (see [`crate::unet::UNet::forward_deepcache`]); the deep feature is kept under `key`.
    fn call_extra(
        &self,
        _host: HostRef<'_>,
        method: &str,
        args: Vec<Value>,
    ) -> Option<Result<Vec<Value>, NodeError>> {
        if method == "predict_with_residuals" {
            return Some(self.predict_with_residuals(&args));
        }
        if method == "predict_capture" {
            return Some(self.predict_capture(&args));
        }
        if method == "with_lora" {
            return Some(self.with_lora(&args));
        }
        if method == "features" {
            return Some(self.features(&args));
        }
        if method == "attention_maps" {
            return Some(self.attention_maps(&args));
        }
        if method != "predict_deepcache" {
            return None;
        }
        Some((|| {
            let x = f32_tensor(
                arg(&args, 0, method)?
                    .as_tensor()
                    .ok_or_else(|| NodeError::invalid("predict_deepcache: x must be a tensor"))?,
            )?;
            let t = arg(&args, 1, method)?
                .as_float()
                .ok_or_else(|| NodeError::invalid("predict_deepcache: t must be a number"))?;
            let ctx = f32_tensor(
                arg(&args, 2, method)?
                    .as_tensor()
                    .ok_or_else(|| NodeError::invalid("the SD UNet needs a text conditioning"))?,
            )?;
            let branch = int_arg(&args, 3, method)?.max(0) as usize;
            let refresh = matches!(args.get(4), Some(Value::Bool(true)));
            let key = int_arg(&args, 5, method)?;
            let mut caches = self.deep_cache.lock().unwrap_or_else(|e| e.into_inner());
            let mut cache = caches.remove(&key);
            // Optional ControlNet residuals after the step arguments (6–8).
            let down = match args.get(9) {
                Some(Value::List(items)) => Some(
                    items
                        .iter()
                        .map(|v| {
                            v.as_tensor()
                                .ok_or_else(|| NodeError::invalid("residuals must be tensors"))
                                .and_then(f32_tensor)
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                _ => None,
            };
            let mid = match args.get(10).and_then(Value::as_tensor) {
                Some(t) => Some(f32_tensor(t)?),
                None => None,
            };
            let residuals = match (&down, &mid) {
                (Some(d), Some(m)) => Some((d.as_slice(), m)),
                _ => None,
            };
            let out = self
                .model
                .unet
                .forward_deepcache_with(&x, t, &ctx, branch, &mut cache, refresh, residuals)
                .map_err(fail)?;
            if let Some(c) = cache {
                caches.insert(key, c);
            }
            Ok(vec![Value::Tensor(from_candle(&out)?)])
        })())
    }
}

/// Tokenizer + text encoder as a `Clip` object: `encode(text, clip_skip, weighting)` →
/// `[conditioning 1×L×D, pooled 1×D]`.
pub struct ClipObject {
    text: Arc<TextEncoder>,
    name: String,
}

impl ClipObject {
    /// Wraps a loaded text encoder.
    pub fn new(text: Arc<TextEncoder>, name: String) -> Self {
        Self { text, name }
    }
}

/// Encodes a prompt: weighting, 77-token windows, clip skip. Returns (conditioning, pooled).
pub fn encode_prompt(
    text: &TextEncoder,
    prompt_text: &str,
    clip_skip: usize,
    weighting: bool,
) -> Result<(CTensor, CTensor), SdError> {
    let tok = &text.tokenizer;
    let spans = if weighting {
        prompt::parse(prompt_text)
    } else {
        vec![prompt::Span {
            text: prompt_text.to_owned(),
            weight: 1.0,
        }]
    };
    let mut tokens = Vec::new();
    for s in &spans {
        tokens.extend(tok.encode(&s.text)?.into_iter().map(|id| (id, s.weight)));
    }
    let len = text.model.config.max_position_embeddings;
    let layers = text.model.config.num_hidden_layers;
    if clip_skip >= layers {
        return Err(SdError::new(format!(
            "clip_skip {clip_skip}: the text encoder has {layers} layers"
        )));
    }
    let windows = prompt::windows(&tokens, len, tok.bos, tok.eos, tok.pad);
    let mut encoded = Vec::with_capacity(windows.len());
    let mut pooled = None;
    for (ids, weights) in &windows {
        let ids = CTensor::from_slice(ids, (1, len), &Device::Cpu)?;
        let out = text.model.forward(&ids, Some(layers - clip_skip))?;
        let mut z = out.last;
        if weights.iter().any(|w| *w != 1.0) {
            // A1111: scale each token's embedding, then restore the original mean.
            let before = z.mean_all()?.to_scalar::<f32>()?;
            let w = CTensor::from_slice(weights, (1, len, 1), &Device::Cpu)?;
            z = z.broadcast_mul(&w)?;
            let after = z.mean_all()?.to_scalar::<f32>()?;
            if after != 0.0 {
                z = (z * f64::from(before / after))?;
            }
        }
        encoded.push(z);
        pooled.get_or_insert(out.pooled);
    }
    let cond = CTensor::cat(&encoded, 1)?;
    let pooled = pooled.ok_or_else(|| SdError::new("no token windows"))?;
    Ok((cond, pooled))
}

impl ObjectImpl for ClipObject {
    fn interface(&self) -> String {
        "Clip".into()
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
        match method {
            "encode" => {
                let text = arg(&args, 0, method)?.as_str().ok_or_else(|| {
                    NodeError::invalid("Clip.encode: the prompt must be a string")
                })?;
                let skip = args.get(1).and_then(Value::as_int).unwrap_or(0).max(0) as usize;
                let weighting = !matches!(args.get(2), Some(Value::Bool(false)));
                let (cond, pooled) =
                    encode_prompt(&self.text, text, skip, weighting).map_err(fail)?;
                Ok(vec![
                    Value::Tensor(from_candle(&cond)?),
                    Value::Tensor(from_candle(&pooled)?),
                ])
            }
            "with_lora" => {
                let (updates, m, path) = lora_args(&args, "Clip.with_lora")?;
                let (text, applied) =
                    crate::lora::text_encoder_with(&self.text, &updates, m).map_err(fail)?;
                let obj = ClipObject::new(Arc::new(text), format!("{} + LoRA {path}", self.name));
                Ok(lora_result(ObjectHandle::new(obj), &applied))
            }
            "tokenize" => {
                let text = arg(&args, 0, method)?.as_str().ok_or_else(|| {
                    NodeError::invalid("Clip.tokenize: the text must be a string")
                })?;
                let ids: Vec<i64> = self
                    .text
                    .tokenizer
                    .encode(text)
                    .map_err(fail)?
                    .into_iter()
                    .map(i64::from)
                    .collect();
                Ok(vec![Value::List(ids.into_iter().map(Value::Int).collect())])
            }
            other => Err(NodeError::invalid(format!("Clip has no method `{other}`"))),
        }
    }
    fn describe(&self) -> String {
        format!("Clip({})", self.name)
    }
}

/// The VAE as an object: `decode(latent, tile)` → image, `encode(image)` → latent,
/// `empty_latent(width, height, batch)`, with the pipeline conventions (scaling factor,
/// [-1, 1] ↔ [0, 1], NCHW ↔ NHWC).
pub struct VaeObject {
    vae: Arc<Vae>,
    name: String,
}

impl VaeObject {
    /// Wraps a loaded VAE.
    pub fn new(vae: Arc<Vae>, name: String) -> Self {
        Self { vae, name }
    }

    fn decode(&self, latent: &Tensor, tile: usize) -> Result<Tensor, NodeError> {
        let z = (f32_tensor(latent)? / self.vae.config.scaling_factor).map_err(fail)?;
        let img = self.vae.decode_tiled(&z, tile).map_err(fail)?;
        let img = ((img / 2.0).and_then(|t| t + 0.5))
            .and_then(|t| t.clamp(0f32, 1f32))
            .and_then(|t| t.permute((0, 2, 3, 1)))
            .and_then(|t| t.contiguous())
            .map_err(fail)?;
        from_candle(&img)
    }

    fn encode(&self, image: &Tensor) -> Result<Tensor, NodeError> {
        let x = f32_tensor(image)?
            .permute((0, 3, 1, 2))
            .and_then(|t| t.affine(2.0, -1.0))
            .and_then(|t| t.contiguous())
            .map_err(fail)?;
        let mean = self.vae.encode_mean_raw(&x).map_err(fail)?;
        from_candle(&(mean * self.vae.config.scaling_factor).map_err(fail)?)
    }

    fn empty_latent(&self, width: i64, height: i64, batch: i64) -> Result<Tensor, NodeError> {
        let f = self.vae.downscale() as i64;
        if width <= 0 || height <= 0 || width % f != 0 || height % f != 0 {
            return Err(NodeError::invalid(format!(
                "width {width} and height {height} must be positive multiples of {f} (the VAE's downscale factor)"
            )));
        }
        let c = self.vae.config.latent_channels;
        let shape = [
            batch.max(1) as usize,
            c,
            (height / f) as usize,
            (width / f) as usize,
        ];
        Ok(Tensor::from_vec(
            vec![0f32; shape.iter().product()],
            &shape,
        )?)
    }
}

impl ObjectImpl for VaeObject {
    fn interface(&self) -> String {
        "Vae".into()
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
        let tensor = |i| {
            arg(&args, i, method)?
                .as_tensor()
                .ok_or_else(|| NodeError::invalid(format!("Vae.{method} takes a tensor")))
        };
        match method {
            "decode" => {
                let tile = args.get(1).and_then(Value::as_int).unwrap_or(0).max(0) as usize;
                Ok(vec![Value::Tensor(self.decode(tensor(0)?, tile)?)])
            }
            "encode" => Ok(vec![Value::Tensor(self.encode(tensor(0)?)?)]),
            "empty_latent" => Ok(vec![Value::Tensor(self.empty_latent(
                int_arg(&args, 0, method)?,
                int_arg(&args, 1, method)?,
                int_arg(&args, 2, method)?,
            )?)]),
            other => Err(NodeError::invalid(format!("Vae has no method `{other}`"))),
        }
    }
    fn describe(&self) -> String {
        format!("Vae({})", self.name)
    }
}
