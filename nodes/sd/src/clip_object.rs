//! The tokenizer and text encoder as a `Clip` object: `encode(text, clip_skip, weighting)` →
//! `[conditioning 1×L×D, pooled 1×D]`, `tokenize(text)`, `with_lora(path, strength)`.

use std::sync::Arc;

use latentflow_models::sd::{encode_prompt, lora, Family as SdFamily, TextEncoder};
use latentflow_plugin_api::sdk::candle::from_candle;
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::{arg, fail, lora_args, lora_result};

/// Tokenizer + text encoder as a `Clip` object: `encode(text, clip_skip, weighting)` →
/// `[conditioning 1×L×D, pooled 1×D]`.
pub struct ClipObject {
    text: Arc<TextEncoder>,
    family: String,
    name: String,
}

impl ClipObject {
    /// Wraps a loaded text encoder of `family`.
    pub fn new(text: Arc<TextEncoder>, name: String, family: SdFamily) -> Self {
        Self {
            text,
            name,
            family: family.name().into(),
        }
    }
}

impl ObjectImpl for ClipObject {
    fn interface(&self) -> String {
        "Clip".into()
    }
    fn family(&self) -> String {
        self.family.clone()
    }
    fn call(&self, _host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
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
                    lora::text_encoder_with(&self.text, &updates, m).map_err(fail)?;
                let obj = ClipObject {
                    text: Arc::new(text),
                    name: format!("{} + LoRA {path}", self.name),
                    family: self.family.clone(),
                };
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
