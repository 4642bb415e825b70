//! `tpm.load_circuit`, `tpm.learn_circuit`, `tpm.save_circuit`, `tpm.circuit_marginals`,
//! `tpm.circuit_inpaint`.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use latentflow_models::tiramisu::evidence::{
    known_fractions, patch_distribution, temperature, tempered,
};
use latentflow_models::tiramisu::mixing::draw;
use latentflow_pc::learn::em;
use latentflow_pc::structure::{chow_liu_tree, hclt, mixture};
use latentflow_pc::{format, forward, Circuit, Evidence};
use latentflow_plugin_api::sdk::candle::from_candle;
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_weights::Header;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::convert::{f32_tensor, fail};
use crate::objects::{semantics, CircuitObject};

fn circuit_handle(c: Circuit, name: String) -> Value {
    Value::Object(ObjectHandle::new(CircuitObject {
        circuit: Arc::new(c),
        name,
    }))
}

fn load_circuit(_: &Ctx, _: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let path = PathBuf::from(p.str("path")?);
    let c = format::load(&path).map_err(fail)?;
    Ok(vec![circuit_handle(c, path.display().to_string())])
}

/// `[downscale, codebook size]` of the `vq` input.
fn vq_info(ctx: &Ctx, inputs: &Inputs) -> Result<(usize, usize), NodeError> {
    let out = inputs.object("vq")?.call(ctx.host(), "info", Vec::new())?;
    match (
        out.first().and_then(Value::as_int),
        out.get(1).and_then(Value::as_int),
    ) {
        (Some(d), Some(k)) if d > 0 && k > 0 => Ok((d as usize, k as usize)),
        _ => Err(NodeError::failed("Vq.info returned no sizes")),
    }
}

fn learn_circuit(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (_, k) = vq_info(ctx, inputs)?;
    let codes = f32_tensor(inputs.tensor("codes")?)?;
    let (n, h, w) = codes.dims3().map_err(fail)?;
    let flat: Vec<f32> = codes
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(fail)?;
    let vars = h * w;
    let rows: Vec<Vec<usize>> = (0..n)
        .map(|b| {
            flat[b * vars..(b + 1) * vars]
                .iter()
                .map(|&c| c as usize)
                .collect()
        })
        .collect();
    if rows.iter().flatten().any(|&c| c >= k) {
        return Err(NodeError::invalid(format!(
            "codes beyond the {k}-entry codebook"
        )));
    }
    let cards = vec![k; vars];
    let seed = p.seed("seed")?;
    let hidden = p.usize("hidden")?;
    // The largest parameter block: one input distribution per variable and hidden state.
    ctx.check_alloc("the circuit's input parameters", &[vars, hidden, k], 8)?;
    let start = match p.str("structure")? {
        "mixture" => mixture(&cards, hidden, seed),
        _ => chow_liu_tree(&rows, &cards).and_then(|t| hclt(&t, &cards, hidden, seed)),
    }
    .map_err(fail)?;
    let data: Vec<Evidence> = rows.iter().map(|r| Evidence::values(r)).collect();
    let passes = p.usize("passes")?;
    let (c, _) = em(&start, &data, passes, p.f64("pseudocount")?).map_err(fail)?;
    let ll = forward(&c, &data).map_err(fail)?.log_z();
    let mean = ll.iter().sum::<f64>() / ll.len() as f64;
    ctx.info(&format!(
        "circuit over {vars} patches, {} nodes, {} edges: mean log-likelihood {mean:.3} after {passes} EM passes",
        c.nodes().len(),
        c.num_edges()
    ));
    Ok(vec![
        circuit_handle(c, "learned".into()),
        Value::Float(mean),
    ])
}

fn save_circuit(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let name = p.str("filename")?;
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(NodeError::invalid(format!(
            "filename `{name}`: a plain file name inside the output folder"
        )));
    }
    let dir = ctx.output_dir();
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let path = dir.join(name);
    let out = inputs.object("circuit")?.call(
        ctx.host(),
        "save",
        vec![Value::from(path.display().to_string())],
    )?;
    Ok(out.into_iter().take(1).collect())
}

/// Soft codes (log-probabilities N×h×w×K) as evidence weights at `tau`.
fn soft_weights(lp: &CTensor, tau: f64) -> Result<CTensor, NodeError> {
    (lp / tau)
        .and_then(|t| candle_nn::ops::softmax_last_dim(&t))
        .map_err(fail)
}

/// `Circuit.marginals(weights, semantics)` as an f32 tensor.
fn marginals(
    ctx: &Ctx,
    circuit: &ObjectHandle,
    weights: &CTensor,
    semantics: &str,
) -> Result<CTensor, NodeError> {
    let out = circuit.call(
        ctx.host(),
        "marginals",
        vec![
            Value::Tensor(from_candle(weights)?),
            Value::from(semantics.to_string()),
        ],
    )?;
    let m = out
        .first()
        .and_then(Value::as_tensor)
        .ok_or_else(|| NodeError::failed("Circuit.marginals returned no tensor"))?;
    f32_tensor(m)
}

fn circuit_marginals(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let lp = f32_tensor(inputs.tensor("soft_codes")?)?;
    let (n, h, w, k) = lp.dims4().map_err(fail)?;
    let weights = soft_weights(&lp, p.f64("temperature")?)?
        .reshape((n, h * w, k))
        .map_err(fail)?;
    let m = marginals(
        ctx,
        inputs.object("circuit")?,
        &weights,
        p.str("semantics")?,
    )?
    .reshape((n, h, w, k))
    .map_err(fail)?;
    Ok(vec![Value::Tensor(from_candle(&m)?)])
}

fn circuit_inpaint(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (patch, k) = vq_info(ctx, inputs)?;
    let vq = inputs.object("vq")?;
    let enc = vq.call(ctx.host(), "encode", vec![inputs.get("image")?.clone()])?;
    let (codes, lp) = match (
        enc.first().and_then(Value::as_tensor),
        enc.get(1).and_then(Value::as_tensor),
    ) {
        (Some(c), Some(l)) => (f32_tensor(c)?, f32_tensor(l)?),
        _ => return Err(NodeError::failed("Vq.encode returned no codes")),
    };
    let (n, ph, pw, _) = lp.dims4().map_err(fail)?;
    let (h, w) = (ph * patch, pw * patch);
    let mask = f32_tensor(inputs.tensor("mask")?)?;
    let md = mask.dims().to_vec();
    if md.len() != 3 || md[1] != h || md[2] != w || (md[0] != 1 && md[0] != n) {
        return Err(NodeError::invalid(format!(
            "mask {md:?} for an image of {n}×{h}×{w}"
        )));
    }
    let repaint: Vec<f32> = mask.flatten_all().and_then(|t| t.to_vec1()).map_err(fail)?;
    let q_all: Vec<f64> = lp
        .exp()
        .and_then(|t| t.to_dtype(CDType::F64))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(fail)?;
    let mut code_v: Vec<f32> = codes
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(fail)?;
    let (tau_min, tau_max, top_k) = (p.f64("tau_min")?, p.f64("tau_max")?, p.usize("top_k")?);
    // Checked here, answered by the circuit object.
    semantics(p.str("semantics")?)?;
    let sample = p.str("choose")? == "sample";
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed("seed")?);
    let circuit_handle = inputs.object("circuit")?;
    let vars = ph * pw;
    for b in 0..n {
        let m = if md[0] == 1 {
            &repaint[..h * w]
        } else {
            &repaint[b * h * w..(b + 1) * h * w]
        };
        let known: Vec<f32> = m
            .iter()
            .map(|r| if *r >= 0.5 { 0.0 } else { 1.0 })
            .collect();
        let f = known_fractions(&known, h, w, patch);
        let q = |i: usize| &q_all[(b * vars + i) * k..(b * vars + i + 1) * k];
        let e: Vec<Vec<f64>> = (0..vars)
            .map(|i| {
                if f[i] > 0.0 {
                    tempered(q(i), temperature(f[i], tau_min, tau_max))
                } else {
                    vec![1.0; k]
                }
            })
            .collect();
        let weights: Vec<f32> = e.iter().flatten().map(|&x| x as f32).collect();
        let wt = CTensor::from_vec(weights, (1, vars, k), &Device::Cpu).map_err(fail)?;
        let r: Vec<f64> = marginals(ctx, circuit_handle, &wt, p.str("semantics")?)?
            .to_dtype(CDType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(fail)?;
        for i in 0..vars {
            if f[i] >= 1.0 {
                continue; // fully known: the encoder's own code
            }
            let d = patch_distribution(&r[i * k..(i + 1) * k], &e[i], q(i), f[i], top_k);
            let pick = if sample {
                draw(&d, rng.random_range(0.0..1.0))
            } else {
                d.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(j, _)| j)
                    .unwrap_or(0)
            };
            code_v[b * vars + i] = pick as f32;
        }
    }
    let filled = CTensor::from_vec(code_v, (n, ph, pw), &Device::Cpu).map_err(fail)?;
    let filled = Value::Tensor(from_candle(&filled)?);
    let img = vq.call(ctx.host(), "decode", vec![filled.clone()])?;
    let img = img
        .into_iter()
        .next()
        .ok_or_else(|| NodeError::failed("Vq.decode returned nothing"))?;
    Ok(vec![img, filled])
}

fn circuit_file_check(p: &Params) -> Result<Vec<PortType>, NodeError> {
    let path = PathBuf::from(p.str("path")?);
    let h = Header::read(&path).map_err(fail)?;
    if !h.metadata.contains_key(format::KEY) {
        return Err(NodeError::invalid(format!(
            "{}: not a {} circuit (no `{}` metadata)",
            path.display(),
            format::FORMAT,
            format::KEY
        )));
    }
    Ok(vec![PortType::handle("Circuit")])
}

/// The semantics parameter's documentation.
const SEMANTICS_DOC: &str = "flows: pyjuice's conditional (the input distributions weighted by their flows, what Tiramisu uses); posterior: the Bayes posterior p(z_i | evidence)";

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    let circuit = || PortType::handle("Circuit");
    vec![
        NodeDef::new("tpm.load_circuit", load_circuit)
            .doc("Loads a probabilistic circuit in the latentflow-pc-v1 format (one .safetensors: the structure as JSON in its metadata, the parameters as tensors; documented in ml/pc/src/format.rs). Every rule (smooth, decomposable, normalised) is checked on load.")
            .param(Param::path("path").doc("a latentflow-pc-v1 .safetensors"))
            .output("circuit", circuit(), "the circuit")
            .infer(circuit_file_check),
        NodeDef::new("tpm.learn_circuit", learn_circuit)
            .doc("Fits a circuit over VQ code grids by EM: a hidden Chow-Liu tree (the maximum mutual-information tree of the patches, `hidden` states per hidden variable) or a mixture of `hidden` factorised components, random start from `seed`, `passes` EM passes. One variable per patch, one value per code.")
            .input("vq", PortType::handle("Vq"), "the VQ model the codes come from (its codebook size)")
            .input("codes", PortType::tensor(Some(DType::F32), Dim::Fixed(3)), "N×h×w codes of N images (tpm.vq_encode)")
            .param(Param::choice("structure", &["hclt", "mixture"]).default("hclt").doc("the structure"))
            .param(Param::int("hidden").default(8).range(1.0, 4096.0).doc("hidden states (HCLT) or components (mixture)"))
            .param(Param::int("passes").default(20).range(0.0, 10000.0).doc("EM passes"))
            .param(Param::float("pseudocount").default(0.01).range(0.0, 1e6).doc("added to every expected count (0: maximum likelihood)"))
            .param(Param::seed("seed").default(0).doc("the random start"))
            .output("circuit", circuit(), "the fitted circuit")
            .output("log_likelihood", PortType::Float, "mean log-likelihood of the codes under it"),
        NodeDef::new("tpm.save_circuit", save_circuit)
            .doc("Writes a circuit in the latentflow-pc-v1 format (f32 parameters) into the output folder, atomically.")
            .input("circuit", circuit(), "the circuit")
            .param(Param::string("filename").default("circuit.safetensors").doc("a plain file name"))
            .output("path", PortType::String, "the file written"),
        NodeDef::new("tpm.circuit_marginals", circuit_marginals)
            .doc(&format!("Conditional code marginals of every patch given soft evidence on every patch (softmax(soft_codes / temperature)). Semantics — {SEMANTICS_DOC}."))
            .input("circuit", circuit(), "a circuit over the code grid")
            .input("soft_codes", PortType::tensor(Some(DType::F32), Dim::Fixed(4)), "N×h×w×K log-probabilities (tpm.vq_encode)")
            .param(Param::float("temperature").default(1.0).range(1e-6, 1e6).doc("the soft evidence's temperature"))
            .param(Param::choice("semantics", &["flows", "posterior"]).default("flows").doc(SEMANTICS_DOC))
            .output("marginals", PortType::tensor(Some(DType::F32), Dim::Fixed(4)), "N×h×w×K"),
        NodeDef::new("tpm.circuit_inpaint", circuit_inpaint)
            .doc(&format!("Inpainting in VQ code space with a circuit, Tiramisu's evidence rules without a diffusion model: patches with known pixels give tempered soft evidence (τ from tau_max, nothing known, to tau_min, all known), patches with none are missing; each patch that is not fully known takes its code from softmax((1 − f)·log r + f·log e) cut to the encoder's top k, r the circuit's conditional; the grid is decoded. Semantics — {SEMANTICS_DOC}."))
            .input("circuit", circuit(), "a circuit over the code grid")
            .input("vq", PortType::handle("Vq"), "the VQ model")
            .input("image", PortType::Image, "N×H×W×3 in [0, 1]")
            .input("mask", PortType::Mask, "1 = repaint (binarised at 0.5), at the image's size")
            .param(Param::float("tau_min").default(0.01).range(1e-6, 100.0).doc("temperature of fully known patches"))
            .param(Param::float("tau_max").default(0.1).range(1e-6, 100.0).doc("temperature of patches with nothing known"))
            .param(Param::int("top_k").default(20).range(0.0, 1e6).doc("codes outside the encoder's top k get 1e-8 (0: no cut)"))
            .param(Param::choice("semantics", &["flows", "posterior"]).default("flows").doc(SEMANTICS_DOC))
            .param(Param::choice("choose", &["argmax", "sample"]).default("argmax").doc("the most likely code of each patch, or a draw"))
            .param(Param::seed("seed").default(0).doc("for `choose: sample`"))
            .output("image", PortType::Image, "the decoded code grid")
            .output("codes", PortType::tensor(Some(DType::F32), Dim::Fixed(3)), "N×h×w codes"),
    ]
}
