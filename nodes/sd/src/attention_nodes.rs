//! Cross-attention capture and DAAM heat maps as nodes: `sd.capture_attention` wraps an SD UNet
//! denoiser so that sampling also accumulates its cross-attention (nothing is recorded
//! otherwise); `sd.attention_heatmap` turns a word of the prompt into a heat map and a mask.

use std::sync::atomic::{AtomicI64, Ordering};

use latentflow_models::sd::daam::{bicubic, word_positions};
use latentflow_plugin_api::sdk::denoiser::{
    names, wrapper_node, Call, DenoiseRequest, Denoised, DenoiserClient, WrapperImpl,
};
use latentflow_plugin_api::sdk::prelude::*;

static KEYS: AtomicI64 = AtomicI64::new(1);

/// Asks the UNet at the end of the chain to record its cross-attention under `key`.
struct Capture {
    key: i64,
    skip_factor: i64,
}

impl WrapperImpl for Capture {
    fn rewrapped(&self) -> Self {
        Capture {
            key: KEYS.fetch_add(1, Ordering::Relaxed),
            ..*self
        }
    }

    fn name(&self) -> String {
        "attention capture".into()
    }

    fn denoise(&self, inner: &DenoiserClient, host: HostRef, mut req: DenoiseRequest) -> Denoised {
        req.set_option(
            names::CAPTURE_ATTENTION,
            Record::new("CaptureAttention")
                .with("key", self.key)
                .with("reset", req.step.is_some_and(|s| s.index == 0))
                .with("skip_factor", self.skip_factor)
                .into(),
        );
        inner.denoise(host, req)
    }

    fn call_own(&self, inner: &ObjectHandle, host: HostRef, call: Call) -> Option<Reply> {
        (call.method == "attention_maps")
            .then(|| inner.call(host, "attention_maps", vec![Value::Int(self.key)]))
    }
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

/// The captured global maps (tokens × h × w) of a capturing denoiser.
fn global_maps(
    ctx: &Ctx,
    model: &ObjectHandle,
) -> Result<(usize, usize, usize, Vec<f32>), NodeError> {
    let maps = match model
        .call(ctx.host(), "attention_maps", Vec::new())?
        .into_iter()
        .next()
    {
        Some(Value::Tensor(t)) => t,
        _ => return Err(NodeError::failed("attention_maps returned no tensor")),
    };
    let shape = maps.shape();
    Ok((shape[0], shape[1], shape[2], maps.to_f32_vec()?))
}

/// One word's heat map at `ih`×`iw`, min-max normalised.
#[allow(clippy::too_many_arguments)]
fn word_map(
    ctx: &Ctx,
    clip: &ObjectHandle,
    prompt: &str,
    word: &str,
    maps: &(usize, usize, usize, Vec<f32>),
    ih: usize,
    iw: usize,
) -> Result<Vec<f32>, NodeError> {
    let (tokens, h, w, data) = maps;
    let positions: Vec<usize> = word_positions(&ids(ctx, clip, prompt)?, &ids(ctx, clip, word)?)
        .into_iter()
        .filter(|&i| i < *tokens)
        .collect();
    if positions.is_empty() {
        return Err(NodeError::invalid(format!(
            "`{word}` is not in the prompt (within its first {} tokens)",
            tokens.saturating_sub(2)
        )));
    }
    let mut map = vec![0f32; h * w];
    for &k in &positions {
        map.iter_mut()
            .zip(&data[k * h * w..(k + 1) * h * w])
            .for_each(|(a, b)| *a += b / positions.len() as f32);
    }
    let mut up = bicubic(&map, *h, *w, ih, iw);
    let (lo, hi) = up
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
            (l.min(*v), h.max(*v))
        });
    let span = (hi - lo).max(1e-12);
    up.iter_mut().for_each(|v| *v = (*v - lo) / span);
    Ok(up)
}

fn image_size(inputs: &Inputs) -> Result<(usize, usize), NodeError> {
    let image = inputs.tensor("image")?.shape();
    Ok((image[1], image[2]))
}

fn heatmap(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let maps = global_maps(ctx, inputs.object("model")?)?;
    let (ih, iw) = image_size(inputs)?;
    let up = word_map(
        ctx,
        inputs.object("clip")?,
        p.str("prompt")?,
        p.str("word")?,
        &maps,
        ih,
        iw,
    )?;
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

/// Per pixel: the word with the highest normalised heat, or background below the threshold.
pub fn segment_labels(maps: &[Vec<f32>], threshold: f32) -> Vec<Option<usize>> {
    let n = maps.first().map_or(0, Vec::len);
    (0..n)
        .map(|p| {
            let (best, value) = maps
                .iter()
                .enumerate()
                .map(|(k, m)| (k, m[p]))
                .fold((0, f32::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
            (value >= threshold).then_some(best)
        })
        .collect()
}

fn segment(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let maps = global_maps(ctx, inputs.object("model")?)?;
    let (ih, iw) = image_size(inputs)?;
    let words: Vec<&str> = p
        .str("words")?
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return Err(NodeError::invalid(
            "`words` is empty: list words of the prompt, comma-separated",
        ));
    }
    let clip = inputs.object("clip")?;
    let prompt = p.str("prompt")?;
    let word_maps = words
        .iter()
        .map(|w| word_map(ctx, clip, prompt, w, &maps, ih, iw))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = segment_labels(&word_maps, p.f64("threshold")? as f32);
    let mut masks = vec![0f32; words.len() * ih * iw];
    for (px, l) in labels.iter().enumerate() {
        if let Some(k) = l {
            masks[k * ih * iw + px] = 1.0;
        }
    }
    Ok(vec![Value::Tensor(Tensor::from_vec(
        masks,
        &[words.len(), ih, iw],
    )?)])
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        wrapper_node("sd.capture_attention", "the capturing denoiser", |_, _, p| {
            Ok(Capture {
                key: KEYS.fetch_add(1, Ordering::Relaxed),
                skip_factor: p.int("skip_factor")?,
            })
        })
            .doc("Wraps an SD UNet denoiser (bare or under any other wrappers) so that sampling also sums its cross-attention probabilities per layer and head (positive half of a CFG batch), for sd.attention_heatmap. The plain model records nothing and pays nothing.")
            .param(Param::int("skip_factor").default(8).range(0.0, 64.0).doc("skip maps 1/N of the latent side (DAAM: 8; 0 keeps all)")),
        NodeDef::new("sd.attention_heatmap", heatmap)
            .doc("DAAM word heat map from the captured cross-attention: token maps averaged over layers, heads and steps, the word's tokens averaged, upsampled (bicubic) to the image, min-max normalised; the mask keeps values ≥ threshold (DAAM: 0.4), usable as an inpainting mask. `prompt` must be the prompt the conditioning was made from (without weighting syntax).")
            .input("model", PortType::handle("Denoiser"), "the capturing denoiser, after sampling")
            .input("clip", PortType::handle("Clip"), "the tokenizer")
            .input("image", PortType::Image, "the generated image (its size; also orders this node after sampling)")
            .output("heatmap", PortType::Mask, "1×H×W heat map in [0, 1]")
            .output("mask", PortType::Mask, "1×H×W mask of heatmap ≥ threshold")
            .param(Param::string("prompt").doc("the prompt"))
            .param(Param::string("word").doc("a word of the prompt"))
            .param(Param::float("threshold").default(0.4).range(0.0, 1.0)),
        NodeDef::new("sd.attention_segment", segment)
            .doc("Segments the image by words of the prompt: each pixel goes to the word whose normalised DAAM heat map is highest there, or to none when that is below the threshold. One mask per word, in the order given.")
            .input("model", PortType::handle("Denoiser"), "the capturing denoiser, after sampling")
            .input("clip", PortType::handle("Clip"), "the tokenizer")
            .input("image", PortType::Image, "the generated image")
            .output("masks", PortType::Mask, "words×H×W masks")
            .param(Param::string("prompt").doc("the prompt"))
            .param(Param::string("words").doc("comma-separated words of the prompt"))
            .param(Param::float("threshold").default(0.4).range(0.0, 1.0).doc("below it a pixel is background")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pixel_goes_to_its_hottest_word_or_to_the_background() {
        let maps = vec![vec![0.9, 0.2, 0.5, 0.1], vec![0.1, 0.8, 0.6, 0.3]];
        assert_eq!(
            segment_labels(&maps, 0.4),
            vec![Some(0), Some(1), Some(1), None]
        );
    }
}
