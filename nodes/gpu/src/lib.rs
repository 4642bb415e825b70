//! GPU nodes: tensors to and from the host's GPU device service, and the WGSL kernels of
//! `latentflow-wgsl` (element-wise maps, softmax, GroupNorm, matmul, attention) as nodes.
//!
//! Device tensors travel between nodes as values like CPU ones (DLPack device type WebGPU); only
//! `gpu.upload` and `gpu.download` cross between the CPU and the device.

use latentflow_plugin_api::sdk::{Ctx, Inputs, NodeDef, Param, Params, PluginDef};
use latentflow_plugin_api::{Capabilities, Dim, NodeError, PortType, Value};
use latentflow_wgsl::{Binary, Gpu, Unary};

fn gpu(ctx: &Ctx) -> Result<Gpu, NodeError> {
    Ok(Gpu::new(ctx.gpu()?))
}

fn any() -> PortType {
    PortType::tensor(None, Dim::Any)
}

fn f32_param(p: &Params, name: &str) -> Result<f32, NodeError> {
    Ok(p.f64(name)? as f32)
}

fn one(t: latentflow_plugin_api::Tensor) -> Result<Vec<Value>, NodeError> {
    Ok(vec![Value::Tensor(t)])
}

fn unary(ctx: &Ctx, i: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let op = match p.str("op")? {
        "silu" => Unary::Silu,
        "gelu" => Unary::Gelu,
        "gelu_tanh" => Unary::GeluTanh,
        "exp" => Unary::Exp,
        "tanh" => Unary::Tanh,
        "sigmoid" => Unary::Sigmoid,
        "affine" => Unary::Affine {
            scale: f32_param(p, "scale")?,
            shift: f32_param(p, "shift")?,
        },
        other => return Err(NodeError::invalid(format!("unknown op `{other}`"))),
    };
    one(gpu(ctx)?.unary(i.tensor("x")?, op)?)
}

fn binary(ctx: &Ctx, i: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let op = match p.str("op")? {
        "add" => Binary::Add,
        "sub" => Binary::Sub,
        "mul" => Binary::Mul,
        "div" => Binary::Div,
        "mix" => Binary::Mix {
            alpha: f32_param(p, "alpha")?,
            beta: f32_param(p, "beta")?,
        },
        other => return Err(NodeError::invalid(format!("unknown op `{other}`"))),
    };
    one(gpu(ctx)?.binary(i.tensor("a")?, i.tensor("b")?, op)?)
}

fn group_norm(ctx: &Ctx, i: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let affine = match (i.is_connected("weight"), i.is_connected("bias")) {
        (true, true) => Some((i.tensor("weight")?, i.tensor("bias")?)),
        (false, false) => None,
        _ => {
            return Err(NodeError::invalid(
                "connect both weight and bias, or neither",
            ))
        }
    };
    one(gpu(ctx)?.group_norm(
        i.tensor("x")?,
        p.usize("groups")?,
        f32_param(p, "eps")?,
        affine,
        p.bool("silu")?,
    )?)
}

fn attention(ctx: &Ctx, i: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let q = i.tensor("q")?;
    let scale = match f32_param(p, "scale")? {
        s if s > 0.0 => s,
        _ => {
            let d = q.shape().last().copied().unwrap_or(1).max(1);
            1.0 / (d as f32).sqrt()
        }
    };
    one(gpu(ctx)?.attention(q, i.tensor("k")?, i.tensor("v")?, scale)?)
}

/// Every node of the plugin.
pub fn plugin() -> PluginDef {
    let on_gpu = Capabilities::WGPU;
    let nodes = vec![
        NodeDef::new("gpu.upload", |ctx, i, _| one(gpu(ctx)?.upload(i.tensor("tensor")?)?))
            .doc("Moves a tensor to the GPU device service (as f32).")
            .devices(on_gpu)
            .input("tensor", any(), "a CPU tensor (a device tensor passes through)")
            .output("tensor", any(), "the tensor on the GPU"),
        NodeDef::new("gpu.download", |ctx, i, _| {
            one(gpu(ctx)?.download(i.tensor("tensor")?)?)
        })
        .doc("Brings a GPU tensor back to the CPU.")
        .devices(on_gpu)
        .input("tensor", any(), "a GPU tensor")
        .output("tensor", any(), "the tensor on the CPU"),
        NodeDef::new("gpu.unary", unary)
            .doc("An element-wise map on the GPU: silu, gelu (erf), gelu_tanh, exp, tanh, sigmoid, or affine (scale·x + shift).")
            .devices(on_gpu)
            .input("x", any(), "a GPU tensor")
            .output("y", any(), "the result, on the GPU")
            .param(
                Param::choice(
                    "op",
                    &["silu", "gelu", "gelu_tanh", "exp", "tanh", "sigmoid", "affine"],
                )
                .default("silu"),
            )
            .param(Param::float("scale").default(1.0).doc("affine: the factor"))
            .param(Param::float("shift").default(0.0).doc("affine: the offset")),
        NodeDef::new("gpu.binary", binary)
            .doc("An element-wise a (op) b on the GPU, for tensors of one shape; mix is alpha·a + beta·b.")
            .devices(on_gpu)
            .input("a", any(), "a GPU tensor")
            .input("b", any(), "a GPU tensor of the same shape")
            .output("y", any(), "the result, on the GPU")
            .param(Param::choice("op", &["add", "sub", "mul", "div", "mix"]).default("add"))
            .param(Param::float("alpha").default(1.0).doc("mix: the weight of a"))
            .param(Param::float("beta").default(1.0).doc("mix: the weight of b")),
        NodeDef::new("gpu.softmax", |ctx, i, p| {
            one(gpu(ctx)?.softmax(i.tensor("x")?, f32_param(p, "scale")?)?)
        })
        .doc("softmax(scale·x) over the last dimension, on the GPU.")
        .devices(on_gpu)
        .input("x", any(), "a GPU tensor")
        .output("y", any(), "the probabilities, on the GPU")
        .param(Param::float("scale").default(1.0).doc("multiplies x before the softmax")),
        NodeDef::new("gpu.group_norm", group_norm)
            .doc("GroupNorm of an N×C×… tensor on the GPU, with an optional per-channel affine and SiLU.")
            .devices(on_gpu)
            .input("x", any(), "a GPU tensor, N×C×…")
            .optional_input("weight", any(), "γ, [C], on the GPU")
            .optional_input("bias", any(), "β, [C], on the GPU")
            .output("y", any(), "the result, on the GPU")
            .param(Param::int("groups").default(32).min(1.0).doc("channel groups"))
            .param(Param::float("eps").default(1e-5).doc("added to the variance"))
            .param(Param::bool("silu").default(false).doc("apply SiLU after the norm")),
        NodeDef::new("gpu.matmul", |ctx, i, p| {
            one(gpu(ctx)?.matmul(
                i.tensor("a")?,
                i.tensor("b")?,
                p.bool("transpose_b")?,
                f32_param(p, "alpha")?,
            )?)
        })
        .doc("alpha·a·b for [B,]M×K and [B,]K×N (b given as N×K when transpose_b), on the GPU.")
        .devices(on_gpu)
        .input("a", any(), "a GPU tensor")
        .input("b", any(), "a GPU tensor")
        .output("y", any(), "the product, on the GPU")
        .param(Param::bool("transpose_b").default(false).doc("b is stored N×K"))
        .param(Param::float("alpha").default(1.0).doc("scales the product")),
        NodeDef::new("gpu.attention", attention)
            .doc("softmax(scale·q·kᵀ)·v for q B×Lq×d and k, v B×Lk×d, on the GPU.")
            .devices(on_gpu)
            .input("q", any(), "queries, on the GPU")
            .input("k", any(), "keys, on the GPU")
            .input("v", any(), "values, on the GPU")
            .output("y", any(), "the result, on the GPU")
            .param(
                Param::float("scale")
                    .default(0.0)
                    .doc("multiplies the scores; 0 means 1/√d"),
            ),
    ];
    nodes.into_iter().fold(
        PluginDef::new("gpu", env!("CARGO_PKG_VERSION")),
        PluginDef::node,
    )
}

latentflow_plugin_api::export_plugin!(plugin());
