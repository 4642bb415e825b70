//! The LatentFlow diffusion-transformer plugin: thin glue over `latentflow-models::dit`.
//!
//! - `dit.load`: a DiT pipeline or transformer folder as a `Denoiser` of family `dit`;
//! - `dit.class_labels`: class ids or names as the conditioning a DiT takes (and the "no
//!   class" conditioning for classifier-free guidance);
//! - `dit.load_pixart`: PixArt-α/Σ as a `Denoiser` of family `t5` (T5 features and their mask);
//! - `dit.load_sd3`, `dit.load_sd3_text`, `dit.sd3_encode`: SD3/SD3.5 as a flow-matching
//!   `Denoiser` of family `sd3`, and its text conditioning;
//! - `dit.load_flux`, `dit.load_flux_text`, `dit.flux_encode`: FLUX.1 likewise (family `flux`).

mod denoiser;
mod flux;
mod labels;
mod pixart;
mod sd3;
mod text_object;

use latentflow_plugin_api::sdk::prelude::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The family name of DiT denoisers and their conditioning.
pub(crate) const FAMILY: &str = "dit";

/// `t` with a batch of `n` (a batch of one repeats); `what` names it in the error.
pub(crate) fn batched(
    t: candle_core::Tensor,
    n: usize,
    what: &str,
) -> Result<candle_core::Tensor, NodeError> {
    match t.dims().first() {
        Some(&b) if b == n => Ok(t),
        Some(1) => {
            let mut reps = vec![1; t.rank()];
            reps[0] = n;
            t.repeat(reps).map_err(fail)
        }
        _ => Err(NodeError::invalid(format!(
            "{what} {:?} for a batch of {n}",
            t.dims()
        ))),
    }
}

/// The `encode(text, max_length)` arguments of a text-encoder object: the text and a token
/// count of at least 1.
pub(crate) fn text_args(args: &[Value]) -> Result<(&str, usize), NodeError> {
    let text = args
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| NodeError::invalid("encode: the text must be a string"))?;
    match args.get(1).and_then(Value::as_int) {
        Some(n) if n > 0 => Ok((text, n as usize)),
        other => Err(NodeError::invalid(format!(
            "max_length {other:?}: T5's token count, at least 1"
        ))),
    }
}

/// Calls `encode(text, max_length)` on the object at input `text` with the node's `text` and
/// `max_length` parameters: the tokens and the pooled embedding.
pub(crate) fn encode_node(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let args = vec![
        Value::Str(p.str("text")?.into()),
        Value::Int(p.int("max_length")?),
    ];
    let out = inputs.object("text")?.call(ctx.host(), "encode", args)?;
    if out.len() < 2 {
        return Err(NodeError::failed("encode returned fewer than 2 values"));
    }
    Ok(out.into_iter().take(2).collect())
}

/// The `dtype` of the text-encoder loaders: T5's (the CLIPs stay f32).
pub(crate) fn t5_dtype_param() -> Param {
    latentflow_plugin_api::sdk::candle::dtype_param().doc(
        "T5's compute dtype: f32 (the reference's numbers) or bf16 (T5-XXL in 9.5 GB instead of 19; weights stored in bf16 are held as they are); the CLIP encoders stay f32",
    )
}

/// Any error as a node failure.
pub(crate) fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    let p = PluginDef::new("dit", env!("CARGO_PKG_VERSION"))
        .node(denoiser::node())
        .node(labels::node())
        .node(pixart::node());
    sd3::nodes()
        .into_iter()
        .chain(flux::nodes())
        .fold(p, PluginDef::node)
}

latentflow_plugin_api::export_plugin!(plugin());
