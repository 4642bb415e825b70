//! `tpm.tiramisu`: Tiramisu's steered x̂0 as a sampler hook. During the first, noisiest steps
//! (t > steer_frac·T) it replaces the denoiser's x̂0 by a draw from the per-pixel geometric
//! mixture of the denoiser's distribution (x̂0 with the known pixels pasted, the model's
//! variance) and the circuit's (S code grids drawn from its conditionals given soft VQ codes,
//! decoded). The VQ model and the circuit are reached through their handles, so they may come
//! from any plugin; the sampler hands over the model's variance (samplers.copaint: the learned
//! range; samplers.sample: DDPM's posterior variance). With a `vae` it steers a latent-space
//! sampler (Stable Diffusion) through the decoded image.

use std::sync::Mutex;

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use latentflow_models::tiramisu::{steer, LatentCodec, Space, SteerConfig, TpmParts};
use latentflow_models::{ModelError, Result as ModelResult};
use latentflow_pc::Semantics;
use latentflow_plugin_api::sdk::candle::from_candle;
use latentflow_plugin_api::sdk::hooks::{
    hook_handle, HookPoint, HookStep, Replacement, SamplerHookImpl,
};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_sampling::copaint::repeat_draws;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::convert::{f32_tensor, fail};
use crate::objects::semantics;

/// The VQ model and circuit behind handles.
struct Handles<'a, 'h> {
    host: HostRef<'h>,
    vq: &'a ObjectHandle,
    circuit: &'a ObjectHandle,
    patch: usize,
    codes: usize,
    variables: usize,
}

fn model_err(e: NodeError) -> ModelError {
    ModelError::invalid(e.to_string())
}

fn tensor_out(out: Vec<Value>, what: &str) -> ModelResult<CTensor> {
    let t = out
        .into_iter()
        .find_map(|v| match v {
            Value::Tensor(t) => Some(t),
            _ => None,
        })
        .ok_or_else(|| ModelError::invalid(format!("{what} returned no tensor")))?;
    f32_tensor(&t).map_err(model_err)
}

impl TpmParts for Handles<'_, '_> {
    fn patch(&self) -> usize {
        self.patch
    }
    fn codes(&self) -> usize {
        self.codes
    }
    fn variables(&self) -> usize {
        self.variables
    }
    fn code_probs(&self, images: &CTensor) -> ModelResult<Vec<f64>> {
        // Vq.encode takes N×H×W×C in [0, 1].
        let pixels = ((images + 1.0)? / 2.0)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        let out = self
            .vq
            .call(
                self.host.sabi_reborrow(),
                "encode",
                vec![Value::Tensor(from_candle(&pixels).map_err(model_err)?)],
            )
            .map_err(model_err)?;
        let lp = out
            .get(1)
            .and_then(Value::as_tensor)
            .ok_or_else(|| ModelError::invalid("Vq.encode returned no soft codes"))?;
        let lp = f32_tensor(lp).map_err(model_err)?;
        Ok(lp.to_dtype(CDType::F64)?.exp()?.flatten_all()?.to_vec1()?)
    }
    fn conditional(
        &self,
        evidence: &[Vec<f64>],
        semantics: Semantics,
    ) -> ModelResult<Vec<Vec<f64>>> {
        let n = evidence.len();
        let flat: Vec<f32> = evidence.iter().flatten().map(|&x| x as f32).collect();
        let w = CTensor::from_vec(flat, (1, n, self.codes), &Device::Cpu)?;
        let name = match semantics {
            Semantics::Flows => "flows",
            Semantics::Posterior => "posterior",
        };
        let out = self
            .circuit
            .call(
                self.host.sabi_reborrow(),
                "marginals",
                vec![
                    Value::Tensor(from_candle(&w).map_err(model_err)?),
                    Value::from(name.to_string()),
                ],
            )
            .map_err(model_err)?;
        let m: Vec<f64> = tensor_out(out, "Circuit.marginals")?
            .to_dtype(CDType::F64)?
            .flatten_all()?
            .to_vec1()?;
        if m.len() != n * self.codes {
            return Err(ModelError::invalid(
                "Circuit.marginals returned the wrong size",
            ));
        }
        Ok(m.chunks(self.codes).map(<[f64]>::to_vec).collect())
    }
    fn decode(&self, codes: &CTensor) -> ModelResult<CTensor> {
        let c = from_candle(&codes.to_dtype(CDType::F32)?).map_err(model_err)?;
        let out = self
            .vq
            .call(
                self.host.sabi_reborrow(),
                "decode_raw",
                vec![Value::Tensor(c)],
            )
            .map_err(model_err)?;
        tensor_out(out, "Vq.decode_raw")
    }
}

/// A `Vae` handle as the latent codec: images N×C×H×W in [−1, 1] ↔ its scaled latents.
struct VaeCodec<'a, 'h> {
    host: HostRef<'h>,
    vae: &'a ObjectHandle,
}

impl LatentCodec for VaeCodec<'_, '_> {
    fn decode(&self, z: &CTensor) -> ModelResult<CTensor> {
        let out = self
            .vae
            .call(
                self.host.sabi_reborrow(),
                "decode",
                vec![Value::Tensor(from_candle(z).map_err(model_err)?)],
            )
            .map_err(model_err)?;
        let img = tensor_out(out, "Vae.decode")?; // N×H×W×C in [0, 1]
        Ok(img.permute((0, 3, 1, 2))?.affine(2.0, -1.0)?.contiguous()?)
    }
    fn encode(&self, images: &CTensor) -> ModelResult<CTensor> {
        let pixels = ((images + 1.0)? / 2.0)?
            .clamp(0f32, 1f32)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        let out = self
            .vae
            .call(
                self.host.sabi_reborrow(),
                "encode",
                vec![Value::Tensor(from_candle(&pixels).map_err(model_err)?)],
            )
            .map_err(model_err)?;
        tensor_out(out, "Vae.encode")
    }
}

struct Tiramisu {
    vq: ObjectHandle,
    /// The autoencoder of a latent-space sampler (Stable Diffusion); none in pixel space.
    vae: Option<ObjectHandle>,
    /// The known image's latent and the latent keep mask, made at the first steered step.
    latent: Mutex<Option<(CTensor, CTensor)>>,
    /// The repaint mask as given (for the latent's keep mask).
    repaint_mask: CTensor,
    circuit: ObjectHandle,
    /// Sizes read from the handles once.
    sizes: (usize, usize, usize),
    /// Known image N×C×H×W in [−1, 1], 1-where-known at the image's shape and N×1×H×W.
    known: CTensor,
    keep1: CTensor,
    steer_frac: f64,
    cfg: SteerConfig,
    rng: Mutex<ChaCha8Rng>,
}

impl Tiramisu {
    fn steered(
        &self,
        host: HostRef,
        step: &HookStep,
        x0: &Tensor,
    ) -> std::result::Result<Option<Tensor>, NodeError> {
        let (t, total) = step
            .position
            .unwrap_or((step.total.saturating_sub(step.index + 1), step.total));
        if (t as f64) <= self.steer_frac * total as f64 {
            return Ok(None);
        }
        let variance = step.variance.as_ref().ok_or_else(|| {
            NodeError::invalid(
                "tpm.tiramisu needs the model's variance of each step: use it with samplers.copaint or samplers.sample",
            )
        })?;
        let x0 = f32_tensor(x0)?;
        let variance = f32_tensor(variance)?;
        let (patch, codes, variables) = self.sizes;
        let parts = Handles {
            host: host.sabi_reborrow(),
            vq: &self.vq,
            circuit: &self.circuit,
            patch,
            codes,
            variables,
        };
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let out = match &self.vae {
            None => {
                let Some(times) = draws_per_image(&x0, &self.known) else {
                    return Err(NodeError::invalid(format!(
                        "tpm.tiramisu was made for images of {:?}; the sampler's x̂0 is {:?} (a latent? connect the VAE to `vae`)",
                        self.known.dims(),
                        x0.dims()
                    )));
                };
                let (known, keep) = (draws(&self.known, times)?, draws(&self.keep1, times)?);
                steer(&x0, &variance, &known, &keep, &Space::Pixels, t as f64, total as f64, &parts, &self.cfg, &mut rng)
            }
            Some(vae) => {
                let codec = VaeCodec { host: host.sabi_reborrow(), vae };
                let mut latent = self.latent.lock().unwrap_or_else(|e| e.into_inner());
                if latent.is_none() {
                    let z = codec.encode(&self.known).map_err(fail)?;
                    let repaint = latentflow_sampling::hooks::latent_mask(&self.repaint_mask, z.dims())
                        .map_err(|e| NodeError::invalid(e.to_string()))?;
                    *latent = Some((z, repaint.affine(-1.0, 1.0).map_err(fail)?));
                }
                let Some((known, keep)) = latent.as_ref() else {
                    return Ok(None);
                };
                let Some(times) = draws_per_image(&x0, known) else {
                    return Err(NodeError::invalid(format!(
                        "the VAE makes latents of {:?} from the image; the sampler's x̂0 is {:?}",
                        known.dims(),
                        x0.dims()
                    )));
                };
                let (known, keep) = (draws(known, times)?, draws(keep, times)?);
                let space = Space::Latent { codec: &codec, known: &known, keep: &keep };
                let (image, keep1) = (draws(&self.known, times)?, draws(&self.keep1, times)?);
                steer(&x0, &variance, &image, &keep1, &space, t as f64, total as f64, &parts, &self.cfg, &mut rng)
            }
        }
        .map_err(fail)?;
        Ok(Some(from_candle(&out)?))
    }
}

impl SamplerHookImpl for Tiramisu {
    fn wants_x0(&self) -> bool {
        true
    }

    fn see(&self, host: HostRef, at: HookPoint, step: &HookStep, t: &Tensor) -> Replacement {
        match at {
            HookPoint::X0 => self.steered(host, step, t),
            HookPoint::Latent => Ok(None),
        }
    }

    fn describe(&self) -> String {
        format!(
            "SamplerHook(Tiramisu, steering while t > {}·T)",
            self.steer_frac
        )
    }
}

fn sizes(ctx: &Ctx, inputs: &Inputs) -> Result<(usize, usize, usize), NodeError> {
    let vq = inputs.object("vq")?.call(ctx.host(), "info", Vec::new())?;
    let pc = inputs
        .object("circuit")?
        .call(ctx.host(), "info", Vec::new())?;
    let int = |v: Option<&Value>| {
        v.and_then(Value::as_int)
            .filter(|&i| i > 0)
            .map(|i| i as usize)
    };
    match (
        int(vq.first()),
        int(vq.get(1)),
        int(pc.first()),
        int(pc.get(1)),
    ) {
        (Some(patch), Some(k), Some(vars), Some(kc)) if kc == k => Ok((patch, k, vars)),
        (Some(_), Some(k), Some(_), Some(kc)) => Err(NodeError::invalid(format!(
            "the circuit's variables take {kc} values; the VQ model has {k} codes"
        ))),
        _ => Err(NodeError::failed(
            "Vq.info or Circuit.info returned no sizes",
        )),
    }
}

fn tiramisu(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (patch, codes, variables) = sizes(ctx, inputs)?;
    let image = f32_tensor(inputs.tensor("image")?)?;
    let (n, h, w, _) = image.dims4().map_err(fail)?;
    if h % patch != 0 || w % patch != 0 || (h / patch) * (w / patch) != variables {
        return Err(NodeError::invalid(format!(
            "a {w}×{h} image makes {}×{} patches of {patch} pixels; the circuit is over {variables} variables",
            w / patch.max(1),
            h / patch.max(1)
        )));
    }
    let known = image
        .permute((0, 3, 1, 2))
        .and_then(|t| t.affine(2.0, -1.0))
        .and_then(|t| t.contiguous())
        .map_err(fail)?;
    let mask = f32_tensor(inputs.tensor("mask")?)?;
    let repaint = latentflow_sampling::hooks::latent_mask(&mask, &[n, 1, h, w])
        .map_err(|e| NodeError::invalid(e.to_string()))?;
    let keep1 = repaint.affine(-1.0, 1.0).map_err(fail)?;
    let cfg = SteerConfig {
        top_k: p.usize("top_k")?,
        samples: p.usize("samples")?,
        tau_min: p.f64("tau_min")?,
        tau_max: p.f64("tau_max")?,
        alpha_start: p.f64("alpha_start")?,
        alpha_end: p.f64("alpha_end")?,
        alpha_k: p.f64("alpha_k")?,
        semantics: semantics(p.str("semantics")?)?,
        range: p.f64("range")?,
    };
    let vae = if inputs.is_connected("vae") {
        Some(inputs.object("vae")?.clone())
    } else {
        None
    };
    let hook = Tiramisu {
        vq: inputs.object("vq")?.clone(),
        vae,
        latent: Mutex::new(None),
        repaint_mask: mask,
        circuit: inputs.object("circuit")?.clone(),
        sizes: (patch, codes, variables),
        known,
        keep1,
        steer_frac: p.f64("steer_frac")?,
        cfg,
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(p.seed("seed")?)),
    };
    Ok(vec![Value::Object(hook_handle(hook))])
}

/// The node.
pub fn node() -> NodeDef {
    let d = SteerConfig::default();
    NodeDef::new("tpm.tiramisu", tiramisu)
        .doc("Tiramisu (Liu et al., image inpainting via tractable steering of diffusion models) as a sampler hook: while t > steer_frac·T, x̂0 becomes a draw from the per-pixel weighted geometric mean, over 256 bins, of the denoiser's truncated Gaussian (x̂0 with the known pixels pasted, the model's variance) and the circuit's Gaussian (S code grids drawn from the circuit's conditionals given tempered soft VQ codes, decoded), α following its schedule. Give it to samplers.copaint's hooks with the same image and mask. Defaults: the authors' CelebA-HQ config.")
        .input("vq", PortType::handle("Vq"), "the VQ model whose codes the circuit models")
        .input("circuit", PortType::handle("Circuit"), "a circuit over the VQ model's patches")
        .input("image", PortType::Image, "the image being inpainted (its known region)")
        .input("mask", PortType::Mask, "1 = repaint")
        .optional_input("vae", PortType::handle("Vae"), "for latent-space samplers (Stable Diffusion with samplers.sample): x̂0 is decoded for the soft codes, the circuit's samples are encoded back, and the mixture is per latent element")
        .output("hook", PortType::handle("SamplerHook"), "the steering hook")
        .param(Param::float("steer_frac").default(0.9).range(0.0, 1.0).doc("steer while t > steer_frac·T (celeba 0.9: the first 10% of the steps)"))
        .param(Param::int("top_k").default(d.top_k as i64).range(0.0, 1e6).doc("codes outside the encoder's top k get 1e-8 (0: no cut)"))
        .param(Param::int("samples").default(d.samples as i64).range(1.0, 1024.0).doc("code grids drawn and decoded per step"))
        .param(Param::float("tau_min").default(d.tau_min).range(1e-6, 100.0).doc("temperature of fully known patches"))
        .param(Param::float("tau_max").default(d.tau_max).range(1e-6, 100.0).doc("temperature of fully unknown patches"))
        .param(Param::float("alpha_start").default(d.alpha_start).range(0.0, 1.0).doc("α (the denoiser's weight) at the noisiest step"))
        .param(Param::float("alpha_end").default(d.alpha_end).range(0.0, 1.0).doc("α at t = 0"))
        .param(Param::float("alpha_k").default(d.alpha_k).range(0.0, 100.0).doc("α's decay rate"))
        .param(Param::choice("semantics", &["flows", "posterior"]).default("flows").doc("flows: pyjuice's conditional, what Tiramisu uses; posterior: the Bayes posterior"))
        .param(Param::float("range").default(d.range).range(1e-6, 1e6).doc("the 256 bins span [−range, range]: 1 for pixels; Stable Diffusion's scaled latents need about 4"))
        .param(Param::seed("seed").default(0).doc("seed of the code and bin draws, or `random`"))
}

/// How many draws of each known image the sampler's batch `x0` holds (samplers.copaint's
/// `samples`): `None` unless x0 is that many copies' worth of `known`'s shape.
fn draws_per_image(x0: &CTensor, known: &CTensor) -> Option<usize> {
    let (n, b) = (x0.dims().first()?, known.dims().first()?);
    let same_image = x0.dims()[1..] == known.dims()[1..];
    (same_image && *b > 0 && n % b == 0).then(|| n / b)
}

/// [`repeat_draws`] with the plugin's error.
fn draws(t: &CTensor, times: usize) -> std::result::Result<CTensor, NodeError> {
    repeat_draws(t, times).map_err(|e| NodeError::invalid(e.to_string()))
}
