//! The LatentFlow Stable Diffusion plugin (candle). So far: the AutoencoderKL (VAE), loaded from
//! a diffusers `vae/` folder, with encode and decode nodes.

pub mod vae;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use candle_core::{DType as CDType, Device};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::prelude::*;
use vae::Vae;

fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

/// Loaded VAEs by folder: a model referenced by several nodes is loaded once.
fn load_shared(dir: &Path) -> Result<Arc<Vae>, NodeError> {
    static CACHE: Mutex<Option<HashMap<PathBuf, Weak<Vae>>>> = Mutex::new(None);
    let key = dir
        .canonicalize()
        .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    if let Some(v) = cache.get(&key).and_then(Weak::upgrade) {
        return Ok(v);
    }
    let v = Arc::new(Vae::load(&key).map_err(fail)?);
    cache.insert(key, Arc::downgrade(&v));
    Ok(v)
}

/// The VAE as an object: `decode(latent)` → image, `encode(image)` → latent, with the
/// pipeline conventions (scaling factor, [-1, 1] ↔ [0, 1], NCHW ↔ NHWC).
struct VaeObject(Arc<Vae>);

impl VaeObject {
    fn decode(&self, latent: &Tensor) -> Result<Tensor, NodeError> {
        let z = to_candle(latent, &Device::Cpu)?
            .to_dtype(CDType::F32)
            .map_err(fail)?;
        let z = (z / self.0.config.scaling_factor).map_err(fail)?;
        let img = self.0.decode_raw(&z).map_err(fail)?;
        let img = ((img / 2.0).and_then(|t| t + 0.5))
            .and_then(|t| t.clamp(0f32, 1f32))
            .and_then(|t| t.permute((0, 2, 3, 1)))
            .and_then(|t| t.contiguous())
            .map_err(fail)?;
        from_candle(&img)
    }

    fn encode(&self, image: &Tensor) -> Result<Tensor, NodeError> {
        let x = to_candle(image, &Device::Cpu)?
            .to_dtype(CDType::F32)
            .map_err(fail)?;
        let x = x
            .permute((0, 3, 1, 2))
            .and_then(|t| t.affine(2.0, -1.0))
            .and_then(|t| t.contiguous())
            .map_err(fail)?;
        let mean = self.0.encode_mean_raw(&x).map_err(fail)?;
        from_candle(&(mean * self.0.config.scaling_factor).map_err(fail)?)
    }
}

impl ObjectImpl for VaeObject {
    fn interface(&self) -> String {
        "Vae".into()
    }
    fn family(&self) -> String {
        String::new()
    }
    fn call(
        &self,
        _host: HostRef<'_>,
        method: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, NodeError> {
        let t = args
            .first()
            .and_then(Value::as_tensor)
            .ok_or_else(|| NodeError::invalid(format!("Vae.{method} takes a tensor")))?;
        match method {
            "decode" => Ok(vec![Value::Tensor(self.decode(t)?)]),
            "encode" => Ok(vec![Value::Tensor(self.encode(t)?)]),
            other => Err(NodeError::invalid(format!("Vae has no method `{other}`"))),
        }
    }
    fn describe(&self) -> String {
        format!("Vae({})", self.0.source.display())
    }
}

fn call_vae(ctx: &Ctx, inputs: &Inputs, method: &str, arg: &str) -> Result<Vec<Value>, NodeError> {
    let vae = inputs.object("vae")?;
    let out = vae.call(
        ctx.host(),
        method,
        vec![Value::Tensor(inputs.tensor(arg)?.clone())],
    )?;
    Ok(out.into_iter().take(1).collect())
}

/// The plugin's nodes.
pub fn plugin() -> PluginDef {
    PluginDef::new("sd", env!("CARGO_PKG_VERSION"))
        .node(
            NodeDef::new("sd.load_vae", |_, _, p| {
                let dir = PathBuf::from(p.str("path")?);
                // A diffusers pipeline folder holds the VAE in vae/.
                let dir = if dir.join("vae/config.json").exists() { dir.join("vae") } else { dir };
                Ok(vec![Value::Object(ObjectHandle::new(VaeObject(load_shared(&dir)?)))])
            })
            .doc("Loads an AutoencoderKL from a diffusers vae/ folder (or a pipeline folder containing one). Every architecture parameter comes from config.json; weights are memory-mapped; f32, f16 and bf16 load.")
            .output("vae", PortType::handle("Vae", ""), "the VAE")
            .param(Param::path("path").doc("vae/ folder or diffusers pipeline folder")),
        )
        .node(
            NodeDef::new("sd.vae_decode", |ctx, i, _| call_vae(ctx, i, "decode", "latent"))
                .doc("Latent → image: divides by the VAE's scaling factor, decodes, maps [-1, 1] to [0, 1].")
                .input("vae", PortType::handle("Vae", ""), "the VAE")
                .input("latent", PortType::latent(Dim::Any), "N×C×h×w latent")
                .output("image", PortType::Image, "N×H×W×3 image"),
        )
        .node(
            NodeDef::new("sd.vae_encode", |ctx, i, _| call_vae(ctx, i, "encode", "image"))
                .doc("Image → latent: the posterior mean (deterministic), times the scaling factor.")
                .input("vae", PortType::handle("Vae", ""), "the VAE")
                .input("image", PortType::Image, "N×H×W×3 image in [0, 1]")
                .output("latent", PortType::latent(Dim::Any), "N×C×h×w latent"),
        )
}

latentflow_plugin_api::export_plugin!(plugin());
