//! Text encoders as objects: `T5` (`llm.load_t5`, `llm.t5_encode`) and `Llm`
//! (`llm.load_llm`, `llm.llm_encode`). Each `encode` call returns the features (1×L×D, f32) and
//! their mask (1×L, 1 = token).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType as CDType, Device};
use latentflow_models::llm::{Decoder, DecoderConfig};
use latentflow_models::t5::{T5Config, T5Encoder, TextTokenizer};
use latentflow_models::Checked;
use latentflow_plugin_api::sdk::candle::{compute_device, from_candle};
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::{compute_dtype, dtype_param, fail};

/// The family of T5-feature conditionings (and of denoisers that take them).
pub const T5_FAMILY: &str = "t5";
/// The family of decoder-LLM feature conditionings.
pub const LLM_FAMILY: &str = "llm";

fn opt_path(p: &Params, name: &str) -> Result<Option<PathBuf>, NodeError> {
    let s = p.str(name)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// The T5 config of a folder or, for a single file, of `config` (a file or folder) or the
/// file's own folder.
fn t5_config_path(path: &Path, config: Option<&Path>) -> PathBuf {
    match config {
        Some(c) if c.is_dir() => c.join("config.json"),
        Some(c) => c.to_path_buf(),
        None if path.is_dir() => path.join("config.json"),
        None => path.parent().unwrap_or(Path::new(".")).join("config.json"),
    }
}

/// `tokenizer` if given, else the first of the model's folder (or the file's folder) and its
/// parent's `tokenizer/` that holds a `tokenizer.json`.
fn tokenizer_path(path: &Path, given: Option<PathBuf>) -> PathBuf {
    if let Some(t) = given {
        return t;
    }
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let sibling = dir.parent().map(|p| p.join("tokenizer"));
    [Some(dir.clone()), sibling]
        .into_iter()
        .flatten()
        .find(|d| d.join("tokenizer.json").is_file())
        .unwrap_or(dir)
}

fn exists(path: &Path) -> Result<(), NodeError> {
    if path.exists() {
        Ok(())
    } else {
        Err(NodeError::invalid(format!(
            "{}: no such file or folder",
            path.display()
        )))
    }
}

/// A text encoder with its tokenizer.
enum Model {
    T5(T5Encoder),
    Llm(Box<Decoder>),
}

struct EncoderObject {
    model: Arc<Model>,
    tokenizer: TextTokenizer,
    name: String,
}

impl EncoderObject {
    fn interface(&self) -> &'static str {
        match *self.model {
            Model::T5(_) => "T5",
            Model::Llm(_) => "Llm",
        }
    }

    /// `encode(text, max_length, layer)`: max_length 0 = unpadded.
    fn encode(&self, host: HostRef<'_>, args: &[Value]) -> Reply {
        let text = args
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| NodeError::invalid("encode: the text must be a string"))?;
        let max_length = match args.get(1).and_then(Value::as_int).unwrap_or(0) {
            n if n < 0 => {
                return Err(NodeError::invalid(format!(
                    "max_length {n}: 0 (no padding) or a token count"
                )))
            }
            0 => None,
            n => Some(n as usize),
        };
        let enc = self
            .tokenizer
            .encode(&[text], max_length, &Device::Cpu)
            .map_err(fail)?;
        let l = enc.ids.dim(1).map_err(fail)?;
        let heads = match &*self.model {
            Model::T5(m) => m.config.num_heads,
            Model::Llm(m) => m.config.num_attention_heads,
        };
        // The attention scores of one layer are the largest buffer.
        Ctx::new(host).check_alloc("the text encoder's attention scores", &[heads, l, l], 4)?;
        let features = match &*self.model {
            Model::T5(m) => m.forward(&enc.ids, Some(&enc.mask)),
            Model::Llm(m) => {
                let layer = args.get(2).and_then(Value::as_int).unwrap_or(-1);
                m.hidden_state(&enc.ids, Some(&enc.mask), layer)
            }
        }
        .map_err(fail)?
        .to_dtype(CDType::F32)
        .map_err(fail)?;
        Ok(vec![
            Value::Tensor(from_candle(&features)?),
            Value::Tensor(from_candle(&enc.mask)?),
        ])
    }
}

impl ObjectImpl for EncoderObject {
    fn interface(&self) -> String {
        EncoderObject::interface(self).into()
    }
    fn call(&self, host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        match method {
            "encode" => self.encode(host, &args),
            "tokenize" => {
                let text = args
                    .first()
                    .and_then(Value::as_str)
                    .ok_or_else(|| NodeError::invalid("tokenize: the text must be a string"))?;
                let ids = self.tokenizer.ids(text).map_err(fail)?;
                Ok(vec![Value::List(
                    ids.into_iter().map(|i| Value::Int(i.into())).collect(),
                )])
            }
            other => Err(NodeError::invalid(format!(
                "{} has no method `{other}`",
                self.interface()
            ))),
        }
    }
    fn describe(&self) -> String {
        format!("{}({})", self.interface(), self.name)
    }
}

fn load_t5(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let config = opt_path(p, "config")?;
    let cfg = t5_config_path(&path, config.as_deref());
    let model = T5Encoder::load(&path, Some(&cfg), compute_dtype(p)?, &device).map_err(fail)?;
    let tok = tokenizer_path(&path, opt_path(p, "tokenizer")?);
    let tokenizer = TextTokenizer::from_file(&tok, model.config.pad_token_id).map_err(fail)?;
    let obj = EncoderObject {
        model: Arc::new(Model::T5(model)),
        tokenizer,
        name: path.display().to_string(),
    };
    Ok(vec![Value::Object(ObjectHandle::new(obj))])
}

fn load_llm(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let model = Decoder::load(&path, compute_dtype(p)?, &device).map_err(fail)?;
    let tok = tokenizer_path(&path, opt_path(p, "tokenizer")?);
    let tokenizer = TextTokenizer::from_file(&tok, 0).map_err(fail)?;
    let obj = EncoderObject {
        model: Arc::new(Model::Llm(Box::new(model))),
        tokenizer,
        name: path.display().to_string(),
    };
    Ok(vec![Value::Object(ObjectHandle::new(obj))])
}

fn encode(ctx: &Ctx, inputs: &Inputs, p: &Params, input: &str) -> Result<Vec<Value>, NodeError> {
    let mut args = vec![
        Value::Str(p.str("text")?.into()),
        Value::Int(p.int("max_length")?),
    ];
    if p.has("layer") {
        args.push(Value::Int(p.int("layer")?));
    }
    let out = inputs.object(input)?.call(ctx.host(), "encode", args)?;
    if out.len() < 2 {
        return Err(NodeError::failed("encode returned fewer than 2 values"));
    }
    Ok(out.into_iter().take(2).collect())
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    let mask_port = || PortType::tensor(Some(DType::F32), Dim::Fixed(2));
    vec![
        NodeDef::new("llm.load_t5", load_t5).param(Param::device())
            .doc("Loads transformers' T5EncoderModel (flan-t5, t5-v1_1, mT5): a folder with config.json and its weights (model.safetensors or shards with their index), or one .safetensors file with `config`; f32, f16 or bf16 weights, read once (never held twice). The tokenizer is read from tokenizer.json. The config is checked before anything runs.")
            .param(Param::path("path").doc("a transformers T5 folder, or a single .safetensors file"))
            .param(Param::path("config").default("").doc("single files: the config.json (or its folder); empty: the folder of the file or of `path`"))
            .param(Param::path("tokenizer").default("").doc("tokenizer.json or its folder; empty: next to the model, or ../tokenizer"))
            .param(dtype_param())
            .output("t5", PortType::handle("T5"), "the tokenizer and encoder")
            .infer(|p| {
                let path = PathBuf::from(p.str("path")?);
                exists(&path)?;
                let config = opt_path(p, "config")?;
                T5Config::from_file(&t5_config_path(&path, config.as_deref())).map_err(fail)?;
                Ok(vec![PortType::handle("T5")])
            }),
        NodeDef::new("llm.t5_encode", |ctx, inputs, p| encode(ctx, inputs, p, "t5"))
            .doc("Prompt → T5 features (last hidden state, after the final norm) and the token mask. max_length pads (and cuts) to that many tokens, with padding masked inside the encoder as transformers does (ELLA 128, PixArt-α 120, PixArt-Σ 300); 0 is flexible: no padding, the prompt's own length.")
            .input("t5", PortType::handle("T5"), "from llm.load_t5")
            .param(Param::string("text").default("").doc("the prompt"))
            .param(Param::int("max_length").default(128).range(0.0, 4096.0).doc("tokens to pad/cut to; 0: the prompt's own length"))
            .output("features", PortType::conditioning_of(Dim::Any, Family::named(T5_FAMILY)), "1×L×D T5 features")
            .output("mask", mask_port(), "1×L: 1 for tokens, 0 for padding"),
        NodeDef::new("llm.load_llm", load_llm).param(Param::device())
            .doc("Loads a decoder-only LLM as a text encoder: a transformers folder of a Llama, Mistral, Qwen2 or Qwen3 model (config.json, weights sharded or not, tokenizer.json). The language-model head is not loaded.")
            .param(Param::path("path").doc("a transformers folder"))
            .param(Param::path("tokenizer").default("").doc("tokenizer.json or its folder; empty: the model's folder"))
            .param(dtype_param())
            .output("llm", PortType::handle("Llm"), "the tokenizer and decoder")
            .infer(|p| {
                let path = PathBuf::from(p.str("path")?);
                exists(&path)?;
                DecoderConfig::from_file(&path.join("config.json")).map_err(fail)?;
                Ok(vec![PortType::handle("Llm")])
            }),
        NodeDef::new("llm.llm_encode", |ctx, inputs, p| encode(ctx, inputs, p, "llm"))
            .doc("Prompt → hidden states of one layer of a decoder LLM (transformers' hidden_states[layer]: 0 is the embeddings, −1 the final-normed last layer, −2 the layer before, unnormed) and the token mask. Padding is at the end and masked; only the layers needed run.")
            .input("llm", PortType::handle("Llm"), "from llm.load_llm")
            .param(Param::string("text").default("").doc("the prompt (no chat template is applied)"))
            .param(Param::int("layer").default(-2).doc("which hidden state, numbered as transformers does"))
            .param(Param::int("max_length").default(0).range(0.0, 32768.0).doc("tokens to pad/cut to; 0: the prompt's own length"))
            .output("features", PortType::conditioning_of(Dim::Any, Family::named(LLM_FAMILY)), "1×L×D hidden states")
            .output("mask", mask_port(), "1×L: 1 for tokens, 0 for padding"),
    ]
}
