//! SDXL's text conditioning: `sd.load_sdxl_text` (CLIP-L and OpenCLIP bigG) and
//! `sd.sdxl_encode` (a prompt → the 2048-wide tokens and the added conditioning: bigG's pooled
//! embedding followed by the time ids, which `samplers.sample` passes to an SDXL UNet through
//! `positive_pooled` / `negative_pooled`).

use std::path::PathBuf;

use candle_core::{Device, Tensor as CTensor};
use std::sync::Arc;

use latentflow_models::sd::loader::{self, Source};
use latentflow_models::sd::sdxl_text::SdxlText;
use latentflow_plugin_api::sdk::candle::{compute_device, from_candle};
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::fail;

const SDXL: &str = "sdxl";

/// The text encoders, callable as `encode(text, zero_empty, ids)` → [tokens, added].
struct TextObject {
    text: Arc<SdxlText>,
}

impl ObjectImpl for TextObject {
    fn interface(&self) -> String {
        "SdxlText".into()
    }

    fn call(&self, _host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        if method != "encode" {
            return Err(NodeError::invalid(format!(
                "SdxlText has no method `{method}`"
            )));
        }
        let text = args
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| NodeError::invalid("encode: the text must be a string"))?;
        let zero_empty = matches!(args.get(1), Some(Value::Bool(true)));
        let ids: Vec<f32> = match args.get(2) {
            Some(Value::List(v)) => v
                .iter()
                .map(|x| {
                    x.as_int()
                        .map(|i| i as f32)
                        .or_else(|| x.as_float().map(|f| f as f32))
                })
                .collect::<Option<_>>()
                .ok_or_else(|| NodeError::invalid("encode: the time ids must be numbers"))?,
            _ => return Err(NodeError::invalid("encode: the time ids are missing")),
        };
        let out = self
            .text
            .encode(text, zero_empty, &Device::Cpu)
            .map_err(fail)?;
        let n = ids.len();
        let ids = CTensor::from_vec(ids, (1, n), &Device::Cpu).map_err(fail)?;
        let added = CTensor::cat(&[&out.pooled, &ids], 1).map_err(fail)?;
        Ok(vec![
            Value::Tensor(from_candle(&out.context)?),
            Value::Tensor(from_candle(&added)?),
        ])
    }

    fn describe(&self) -> String {
        format!("SdxlText({})", self.text.source.display())
    }
}

fn load_text(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let device = compute_device(p)?;
    let path = PathBuf::from(p.str("path")?);
    let text = if path.is_file() {
        let config = p.str("config")?;
        let config = (!config.is_empty()).then(|| PathBuf::from(config));
        loader::sdxl_text(&Source::detect(&path, config.as_deref()).map_err(fail)?).map_err(fail)?
    } else {
        Arc::new(SdxlText::load(&path, &device).map_err(fail)?)
    };
    Ok(vec![Value::Object(ObjectHandle::new(TextObject { text }))])
}

fn encode(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (w, h) = (p.int("width")?, p.int("height")?);
    let or = |v: i64, d: i64| if v > 0 { v } else { d };
    let (tw, th) = (
        or(p.int("target_width")?, w),
        or(p.int("target_height")?, h),
    );
    // diffusers: original size (h, w), crop top-left (top, left), then the target size (h, w),
    // or, for the refiner, the aesthetic score.
    let (top, left) = (p.int("crop_top")?, p.int("crop_left")?);
    let score = p.f64("aesthetic_score")?;
    let ids: Vec<Value> = if score > 0.0 {
        [h, w, top, left]
            .iter()
            .map(|&i| Value::Float(i as f64))
            .chain([Value::Float(score)])
            .collect()
    } else {
        [h, w, top, left, th, tw]
            .iter()
            .map(|&i| Value::Int(i))
            .collect()
    };
    let args = vec![
        Value::Str(p.str("text")?.into()),
        Value::Bool(p.bool("zero_empty")?),
        Value::List(ids),
    ];
    let out = inputs.object("text")?.call(ctx.host(), "encode", args)?;
    if out.len() < 2 {
        return Err(NodeError::failed("encode returned fewer than 2 values"));
    }
    Ok(out.into_iter().take(2).collect())
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("sd.load_sdxl_text", load_text).param(Param::device())
            .doc("Loads an SDXL model's text encoders: CLIP-L (text_encoder/, tokenizer/; the refiner has none) and OpenCLIP bigG with projection (text_encoder_2/, tokenizer_2/), from a pipeline folder or a single-file checkpoint (conditioner.embedders.{0,1}.*, bigG in OpenCLIP's layout).")
            .param(Param::path("path").doc("SDXL pipeline folder or single-file .safetensors checkpoint"))
            .param(Param::path("config").default("").doc("single files: a diffusers SDXL folder whose text_encoder/, text_encoder_2/, tokenizer/ and tokenizer_2/ give the configs; empty: SDXL base 1.0's or refiner 1.0's (the built-in CLIP vocabulary)"))
            .output("text", PortType::handle("SdxlText"), "the text encoders")
            .infer(|p| {
                let path = PathBuf::from(p.str("path")?);
                if path.is_file() {
                    let family = latentflow_models::sd::Family::detect(&path).map_err(fail)?;
                    if family != latentflow_models::sd::Family::Sdxl {
                        return Err(NodeError::invalid(format!(
                            "{}: an {} checkpoint, not SDXL (its text encoder loads with sd.load_checkpoint or sd.load_clip)",
                            path.display(),
                            family.display_name()
                        )));
                    }
                    return Ok(vec![PortType::handle("SdxlText")]);
                }
                for sub in ["text_encoder_2", "tokenizer_2"] {
                    if !path.join(sub).is_dir() {
                        return Err(NodeError::invalid(format!(
                            "{}: no {sub}/ (an SDXL pipeline folder has text_encoder_2/ and tokenizer_2/, and but for the refiner text_encoder/ and tokenizer/)",
                            path.display()
                        )));
                    }
                }
                Ok(vec![PortType::handle("SdxlText")])
            }),
        NodeDef::new("sd.sdxl_encode", encode)
            .doc("Prompt → SDXL's conditioning, as StableDiffusionXLPipeline.encode_prompt builds it: CLIP-L's and bigG's penultimate states side by side (77 tokens, 2048 wide), and the added conditioning: bigG's projected pooled embedding followed by the time ids (original height and width, crop top and left, target height and width). With zero_empty, an empty prompt gives zeros, as the pipeline does for a missing negative prompt (force_zeros_for_empty_prompt).")
            .input("text", PortType::handle("SdxlText"), "from sd.load_sdxl_text")
            .param(Param::string("text").default("").doc("the prompt"))
            .param(Param::bool("zero_empty").default(true).doc("an empty prompt is all zeros (SDXL's force_zeros_for_empty_prompt)"))
            .param(Param::int("width").default(1024).range(1.0, 65536.0).doc("the original image width of the time ids"))
            .param(Param::int("height").default(1024).range(1.0, 65536.0).doc("the original image height of the time ids"))
            .param(Param::int("crop_top").default(0).range(0.0, 65536.0).doc("crop top of the time ids"))
            .param(Param::int("crop_left").default(0).range(0.0, 65536.0).doc("crop left of the time ids"))
            .param(Param::int("target_width").default(0).range(0.0, 65536.0).doc("target width of the time ids; 0: width"))
            .param(Param::int("target_height").default(0).range(0.0, 65536.0).doc("target height of the time ids; 0: height"))
            .param(Param::float("aesthetic_score").default(0.0).range(0.0, 100.0).doc("the refiner (requires_aesthetics_score): its time ids end with this score instead of the target size (diffusers: 6 for the prompt, 2.5 for the negative); 0: the base model's ids"))
            .output("conditioning", PortType::conditioning_of(Dim::Any, Family::named(SDXL)), "1×77×2048 text tokens")
            .output("added", PortType::tensor(Some(DType::F32), Dim::Fixed(2)), "1×(P+6), the refiner's 1×(P+5): the pooled embedding and the time ids (to the sampler's positive_pooled / negative_pooled)"),
    ]
}
