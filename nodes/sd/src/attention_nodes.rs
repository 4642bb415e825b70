//! Cross-attention capture and DAAM heat maps as nodes: `sd.capture_attention` wraps an SD UNet
//! denoiser so that sampling also accumulates its cross-attention (nothing is recorded
//! otherwise); `sd.attention_heatmap` turns a word of the prompt into a heat map and a mask.

use std::sync::atomic::{AtomicI64, Ordering};

use latentflow_plugin_api::sdk::denoiser::{denoiser_handle, DenoiserClient, DenoiserImpl, Step};
use latentflow_plugin_api::sdk::prelude::*;

use crate::daam::{bicubic, word_positions};

static KEYS: AtomicI64 = AtomicI64::new(1);

struct Capture {
    inner: ObjectHandle,
    key: i64,
    skip_factor: i64,
    prediction: String,
}

impl DenoiserImpl for Capture {
    fn family(&self) -> String {
        "sd-attention-capture".into()
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
        self.predict_step(host, x, t, ctx, None)
    }
    fn predict_step(
        &self,
        host: HostRef<'_>,
        x: &Tensor,
        t: f64,
        ctx: Option<&Tensor>,
        step: Option<Step>,
    ) -> Result<Tensor, NodeError> {
        let ctx =
            ctx.ok_or_else(|| NodeError::invalid("attention capture needs a conditioning"))?;
        let out = self.inner.call(
            host,
            "predict_capture",
            vec![
                Value::Tensor(x.clone()),
                Value::Float(t),
                Value::Tensor(ctx.clone()),
                Value::Int(self.key),
                Value::Bool(step.is_some_and(|s| s.index == 0)),
                Value::Bool(step.is_some_and(|s| s.cfg)),
                Value::Int(self.skip_factor),
            ],
        )?;
        match out.into_iter().next() {
            Some(Value::Tensor(t)) => Ok(t),
            _ => Err(NodeError::failed("predict_capture returned no tensor")),
        }
    }
    fn call_extra(
        &self,
        host: HostRef<'_>,
        method: &str,
        _args: Vec<Value>,
    ) -> Option<Result<Vec<Value>, NodeError>> {
        (method == "attention_maps").then(|| {
            self.inner
                .call(host, "attention_maps", vec![Value::Int(self.key)])
        })
    }
    fn describe(&self) -> String {
        format!("Denoiser(attention capture over {})", self.inner.describe())
    }
}

fn capture(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let inner = inputs.object("model")?.clone();
    let prediction = DenoiserClient::new(&inner)?.prediction_type(ctx.host())?;
    Ok(vec![Value::Object(denoiser_handle(Capture {
        inner,
        key: KEYS.fetch_add(1, Ordering::Relaxed),
        skip_factor: p.int("skip_factor")?,
        prediction,
    }))])
}

fn ids(ctx: &Ctx, clip: &ObjectHandle, text: &str) -> Result<Vec<u32>, NodeError> {
    let out = clip.call(ctx.host(), "tokenize", vec![Value::Str(text.into())])?;
    match out.into_iter().next() {
        Some(Value::List(items)) => Ok(items
            .iter()
            .filter_map(Value::as_int)
            .map(|i| i as u32)
            .collect()),
        _ => Err(NodeError::failed("Clip.tokenize returned no list")),
    }
}

fn heatmap(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let model = inputs.object("model")?;
    let maps = match model
        .call(ctx.host(), "attention_maps", Vec::new())?
        .into_iter()
        .next()
    {
        Some(Value::Tensor(t)) => t,
        _ => return Err(NodeError::failed("attention_maps returned no tensor")),
    };
    let shape = maps.shape();
    let (tokens, h, w) = (shape[0], shape[1], shape[2]);
    let data = maps.to_f32_vec()?;
    let clip = inputs.object("clip")?;
    let word = p.str("word")?;
    let positions: Vec<usize> =
        word_positions(&ids(ctx, clip, p.str("prompt")?)?, &ids(ctx, clip, word)?)
            .into_iter()
            .filter(|&i| i < tokens)
            .collect();
    if positions.is_empty() {
        return Err(NodeError::invalid(format!(
            "`{word}` is not in the prompt (within its first {} tokens)",
            tokens.saturating_sub(2)
        )));
    }
    let mut word_map = vec![0f32; h * w];
    for &k in &positions {
        word_map
            .iter_mut()
            .zip(&data[k * h * w..(k + 1) * h * w])
            .for_each(|(a, b)| *a += b / positions.len() as f32);
    }
    let image = inputs.tensor("image")?.shape();
    let (ih, iw) = (image[1], image[2]);
    let mut up = bicubic(&word_map, h, w, ih, iw);
    let (lo, hi) = up
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
            (l.min(*v), h.max(*v))
        });
    let span = (hi - lo).max(1e-12);
    up.iter_mut().for_each(|v| *v = (*v - lo) / span);
    let tau = p.f64("threshold")? as f32;
    let mask: Vec<f32> = up
        .iter()
        .map(|v| if *v >= tau { 1.0 } else { 0.0 })
        .collect();
    Ok(vec![
        Value::Tensor(Tensor::from_vec(up, &[1, ih, iw])?),
        Value::Tensor(Tensor::from_vec(mask, &[1, ih, iw])?),
    ])
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("sd.capture_attention", capture)
            .doc("Wraps an SD UNet denoiser so that sampling also sums its cross-attention probabilities per layer and head (positive half of a CFG batch), for sd.attention_heatmap. The plain model records nothing and pays nothing.")
            .input("model", PortType::handle("Denoiser", ""), "an SD UNet denoiser")
            .output("model", PortType::handle("Denoiser", ""), "the capturing denoiser")
            .param(Param::int("skip_factor").default(8).range(0.0, 64.0).doc("skip maps 1/N of the latent side (DAAM: 8; 0 keeps all)")),
        NodeDef::new("sd.attention_heatmap", heatmap)
            .doc("DAAM word heat map from the captured cross-attention: token maps averaged over layers, heads and steps, the word's tokens averaged, upsampled (bicubic) to the image, min-max normalised; the mask keeps values ≥ threshold (DAAM: 0.4), usable as an inpainting mask. `prompt` must be the prompt the conditioning was made from (without weighting syntax).")
            .input("model", PortType::handle("Denoiser", ""), "the capturing denoiser, after sampling")
            .input("clip", PortType::handle("Clip", ""), "the tokenizer")
            .input("image", PortType::Image, "the generated image (its size; also orders this node after sampling)")
            .output("heatmap", PortType::Mask, "1×H×W heat map in [0, 1]")
            .output("mask", PortType::Mask, "1×H×W mask of heatmap ≥ threshold")
            .param(Param::string("prompt").doc("the prompt"))
            .param(Param::string("word").doc("a word of the prompt"))
            .param(Param::float("threshold").default(0.4).range(0.0, 1.0)),
    ]
}
