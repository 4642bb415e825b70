//! Text nodes: `sd.text_encode` (prompt → conditioning of the CLIP's family) and
//! `sd.load_lora` (a LoRA merged into a UNet and a text encoder).

use latentflow_plugin_api::sdk::prelude::*;

use crate::call;

fn text_encode(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let args = vec![
        Value::Str(p.str("text")?.into()),
        Value::Int(p.int("clip_skip")?),
        Value::Bool(p.bool("weighting")?),
    ];
    call(ctx, inputs, "clip", "encode", args, 2)
}

fn load_lora(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = p.str("path")?.to_owned();
    let mut out = Vec::with_capacity(2);
    let mut patched = 0;
    let mut tried = false;
    for (input, strength) in [
        ("model", p.f64("strength_model")?),
        ("clip", p.f64("strength_clip")?),
    ] {
        let handle = inputs.object(input)?;
        if strength == 0.0 {
            out.push(Value::Object(handle.clone()));
            continue;
        }
        tried = true;
        let res = handle.call(
            ctx.host(),
            "with_lora",
            vec![Value::Str(path.as_str().into()), Value::Float(strength)],
        )?;
        let mut it = res.into_iter();
        match it.next() {
            Some(v @ Value::Object(_)) => out.push(v),
            _ => {
                return Err(NodeError::failed(format!(
                    "{input}.with_lora returned no model"
                )))
            }
        }
        patched += it.next().and_then(|v| v.as_int()).unwrap_or(0);
        if let Some(Value::List(unmatched)) = it.next() {
            if !unmatched.is_empty() {
                let names: Vec<&str> = unmatched.iter().filter_map(Value::as_str).collect();
                ctx.warn(&format!(
                    "{input}: {} LoRA modules match nothing: {}",
                    names.len(),
                    names.join(", ")
                ));
            }
        }
    }
    if tried && patched == 0 {
        return Err(NodeError::invalid(format!(
            "{path}: no module of this LoRA matches the model"
        )));
    }
    Ok(out)
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("sd.text_encode", text_encode)
                .doc("Prompt → conditioning. Weighting syntax of A1111/ComfyUI: (word) ×1.1, [word] ÷1.1, (word:1.5), nested; \\( \\) are literal. Weighted tokens scale their embeddings and the mean is restored (A1111). Prompts longer than 75 tokens are split into 77-token windows whose encodings are concatenated.")
                .input("clip", PortType::handle_of("Clip", Family::var("F")), "tokenizer and text encoder")
                .output("conditioning", PortType::conditioning_of(Dim::Any, Family::var("F")), "1×(77·windows)×D")
                .output("pooled", PortType::tensor(Some(DType::F32), Dim::Fixed(2)), "1×D pooled text embedding (of the first window)")
                .param(Param::string("text").default("").doc("the prompt"))
                .param(Param::int("clip_skip").default(0).range(0.0, 24.0).doc("final layers to skip: 0 = last layer, 1 = penultimate (A1111 \"Clip skip 2\", diffusers clip_skip=1)"))
                .param(Param::bool("weighting").default(true).doc("parse (word:1.2) weighting syntax; off: the text is tokenized literally, as diffusers does")),
        NodeDef::new("sd.load_lora", load_lora)
                .doc("Applies a LoRA file to a UNet and a text encoder: kohya (lora_unet_*/lora_te_*, diffusers or LDM module names, LoCon convolutions) or diffusers/PEFT (lora_A/lora_B) .safetensors. W' = W + strength·(α/r)·B·A, α from the file (absent: α = r). The touched weights are copied; the rest stay shared with the base model. Chain nodes to stack LoRAs. Modules that match nothing are reported.")
                .input("model", PortType::handle_of("Denoiser", Family::var("F")), "an SD UNet denoiser")
                .input("clip", PortType::handle_of("Clip", Family::var("F")), "the text encoder")
                .output("model", PortType::handle_of("Denoiser", Family::var("F")), "the LoRA'd UNet")
                .output("clip", PortType::handle_of("Clip", Family::var("F")), "the LoRA'd text encoder")
                .param(Param::path("path").doc("LoRA .safetensors"))
                .param(Param::float("strength_model").default(1.0).range(-10.0, 10.0))
                .param(Param::float("strength_clip").default(1.0).range(-10.0, 10.0)),
    ]
}
