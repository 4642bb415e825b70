//! VAE nodes: an empty latent of a pixel size, decode and encode.

use latentflow_plugin_api::sdk::prelude::*;

use crate::call;

fn empty_latent(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let args = vec![
        Value::Int(p.int("width")?),
        Value::Int(p.int("height")?),
        Value::Int(p.int("batch")?),
    ];
    call(ctx, inputs, "vae", "empty_latent", args, 1)
}

fn tensor_arg(
    ctx: &Ctx,
    inputs: &Inputs,
    method: &str,
    arg: &str,
    extra: Vec<Value>,
) -> Result<Vec<Value>, NodeError> {
    let mut args = vec![Value::Tensor(inputs.tensor(arg)?.clone())];
    args.extend(extra);
    call(ctx, inputs, "vae", method, args, 1)
}

/// The nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("sd.empty_latent", empty_latent)
                .doc("A zero latent for an image size, with the VAE's latent channels and downscale factor.")
                .input("vae", PortType::handle("Vae"), "the VAE")
                .output("latent", PortType::latent(Dim::Any), "batch×C×(height/f)×(width/f)")
                .param(Param::int("width").default(512).range(8.0, 16384.0))
                .param(Param::int("height").default(512).range(8.0, 16384.0))
                .param(Param::int("batch").default(1).range(1.0, 64.0)),
        NodeDef::new("sd.vae_decode", |ctx, i, p| {
                tensor_arg(ctx, i, "decode", "latent", vec![Value::Int(p.int("tile")?)])
            })
            .doc("Latent → image: divides by the VAE's scaling factor, decodes, maps [-1, 1] to [0, 1]. Large latents can be decoded in overlapping tiles to bound memory.")
            .input("vae", PortType::handle("Vae"), "the VAE")
            .input("latent", PortType::latent(Dim::Any), "N×C×h×w latent")
            .output("image", PortType::Image, "N×H×W×3 image")
            .param(Param::int("tile").default(0).range(0.0, 4096.0).doc("tile size in latent pixels (0: decode whole; tiles overlap by a quarter and are blended)")),
        NodeDef::new("sd.vae_encode", |ctx, i, _| tensor_arg(ctx, i, "encode", "image", vec![]))
                .doc("Image → latent: the posterior mean (deterministic), times the scaling factor.")
                .input("vae", PortType::handle("Vae"), "the VAE")
                .input("image", PortType::Image, "N×H×W×3 image in [0, 1]")
                .output("latent", PortType::latent(Dim::Any), "N×C×h×w latent"),
    ]
}
