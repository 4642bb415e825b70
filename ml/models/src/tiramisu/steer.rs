//! One Tiramisu steering step: the denoiser's x̂0 (known pixels pasted) and variance in, a
//! steered x̃0 out. The VQ model and the circuit are reached through [`TpmParts`], so the step
//! runs on models in this process ([`Direct`]) or behind plugin handles alike.
//!
//! In pixel space (ADM, the authors' setting) the mixture is per pixel. In an autoencoder's
//! latent space (Stable Diffusion, [`Space::Latent`]) the circuit's side goes through pixels: x̂0
//! is decoded for the soft codes, the S decoded code grids are encoded back, and the mixture is
//! per latent element between the denoiser's Gaussian and the encoded samples' Gaussian.

use candle_core::{DType, Device, Tensor};
use latentflow_pc::evidence::Observation;
use latentflow_pc::{conditional, Circuit, Evidence, Semantics};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::evidence::{known_fractions, patch_distribution, temperature, tempered};
use super::mixing::{bin_value, circuit_bins, denoiser_bins, draw, geometric_mixture, PC_FLOOR};
use super::schedule::mixing_factor;
use crate::vq::VqModel;
use crate::{ModelError, Result};

/// Tiramisu's parameters, with the authors' CelebA defaults.
#[derive(Debug, Clone, Copy)]
pub struct SteerConfig {
    /// Codes outside the encoder's top k get probability 1e-8 (20).
    pub top_k: usize,
    /// Code grids sampled and decoded per step (8).
    pub samples: usize,
    /// Temperature of fully known patches (0.01).
    pub tau_min: f64,
    /// Temperature of fully unknown patches (0.1).
    pub tau_max: f64,
    /// α at the noisiest step (0.8).
    pub alpha_start: f64,
    /// α at t = 0 (1.0).
    pub alpha_end: f64,
    /// α's decay rate (2).
    pub alpha_k: f64,
    /// Which conditional the circuit answers (pyjuice's flows).
    pub semantics: Semantics,
    /// The bins span [−range, range] (1: pixels; latents need more).
    pub range: f64,
}

impl Default for SteerConfig {
    fn default() -> Self {
        SteerConfig {
            top_k: 20,
            samples: 8,
            tau_min: 0.01,
            tau_max: 0.1,
            alpha_start: 0.8,
            alpha_end: 1.0,
            alpha_k: 2.0,
            semantics: Semantics::Flows,
            range: 1.0,
        }
    }
}

/// What a steering step asks of the VQ model and the circuit.
pub trait TpmParts {
    /// Image pixels per patch side.
    fn patch(&self) -> usize;
    /// Codes per patch (the codebook's size).
    fn codes(&self) -> usize;
    /// Variables of the circuit.
    fn variables(&self) -> usize;
    /// Soft code probabilities of images N×C×H×W in [−1, 1]: N·h·w rows of K, row-major.
    fn code_probs(&self, images: &Tensor) -> Result<Vec<f64>>;
    /// The circuit's conditional marginals (one row of K per variable) given soft evidence (one
    /// weight row per variable), in the semantics of `cfg`.
    fn conditional(&self, evidence: &[Vec<f64>], semantics: Semantics) -> Result<Vec<Vec<f64>>>;
    /// Images S×C×H×W in [−1, 1] (not clamped) of code grids S×h×w.
    fn decode(&self, codes: &Tensor) -> Result<Tensor>;
}

/// A VQ model and a circuit in this process.
pub struct Direct<'a> {
    /// The VQ model.
    pub vq: &'a VqModel,
    /// The circuit over its patches.
    pub pc: &'a Circuit,
}

impl TpmParts for Direct<'_> {
    fn patch(&self) -> usize {
        self.vq.downscale()
    }
    fn codes(&self) -> usize {
        self.vq.config.num_vq_embeddings
    }
    fn variables(&self) -> usize {
        if self.pc.cards().iter().all(|&k| k == self.codes()) {
            self.pc.num_vars()
        } else {
            0
        }
    }
    fn code_probs(&self, images: &Tensor) -> Result<Vec<f64>> {
        f64s(&self.vq.code_log_probs(&self.vq.encode(images)?)?.exp()?)
    }
    fn conditional(&self, evidence: &[Vec<f64>], semantics: Semantics) -> Result<Vec<Vec<f64>>> {
        let e = Evidence(
            evidence
                .iter()
                .map(|e| Observation::Soft(e.clone()))
                .collect(),
        );
        Ok(conditional(self.pc, &[e], semantics)
            .map_err(|e| ModelError::invalid(format!("Tiramisu circuit: {e}")))?
            .remove(0))
    }
    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        self.vq.decode_codes(codes)
    }
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Where the sampler works.
pub enum Space<'a> {
    /// Pixels in [−1, 1].
    Pixels,
    /// An autoencoder's latents.
    Latent {
        /// The autoencoder.
        codec: &'a dyn LatentCodec,
        /// The known image's latent.
        known: &'a Tensor,
        /// 1 where the latent is known, the latent's shape.
        keep: &'a Tensor,
    },
}

/// An autoencoder between images (N×C×H×W in [−1, 1]) and latents.
pub trait LatentCodec {
    /// Images of latents.
    fn decode(&self, z: &Tensor) -> Result<Tensor>;
    /// Latents of images.
    fn encode(&self, images: &Tensor) -> Result<Tensor>;
}

/// `a` where `keep` is 0, `b` where it is 1 (`keep` broadcast over channels).
fn paste(a: &Tensor, b: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let keep = keep.broadcast_as(a.dims())?;
    Ok(((a * keep.affine(-1.0, 1.0)?)? + (b * keep)?)?)
}

/// The steered x̂0 for the sampler's `x0` (N×C×H×W, pixels in [−1, 1] or latents, see
/// `space`) with the denoiser's `variance` (same shape), given the `image` being inpainted
/// (N×C′×H×W pixels in [−1, 1]) and `keep` (N×1×H×W, 1 = known) at timestep `t` of `total`.
#[allow(clippy::too_many_arguments)]
pub fn steer(
    x0: &Tensor,
    variance: &Tensor,
    image: &Tensor,
    keep: &Tensor,
    space: &Space,
    t: f64,
    total: f64,
    parts: &dyn TpmParts,
    cfg: &SteerConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor> {
    let (n, ci, h, w) = image.dims4()?;
    if keep.dims() != [n, 1, h, w] || variance.dims() != x0.dims() || x0.dim(0)? != n {
        return Err(ModelError::shape(
            "Tiramisu x̂0, variance and mask",
            format!(
                "x̂0 and variance of one shape, mask {n}×1×{h}×{w} for the {n}×{ci}×{h}×{w} image"
            ),
            keep.dims(),
        ));
    }
    if !cfg.range.is_finite() || cfg.range <= 0.0 {
        return Err(ModelError::invalid(
            "Tiramisu: the bins' range must be positive",
        ));
    }
    let patch = parts.patch();
    let k = parts.codes();
    let (ph, pw) = (h / patch, w / patch);
    if ph * patch != h || pw * patch != w {
        return Err(ModelError::invalid(format!(
            "Tiramisu: the image {w}×{h} is not a whole number of {patch}-pixel VQ patches"
        )));
    }
    if parts.variables() != ph * pw {
        return Err(ModelError::invalid(format!(
            "Tiramisu: the circuit is over {} variables of {k} values; the VQ model gives {ph}×{pw} patches of {k} codes",
            parts.variables()
        )));
    }
    // The denoiser's mean in the sampler's space, and the pixels the VQ encoder sees.
    let (mean, pixels) = match space {
        Space::Pixels => {
            if x0.dims() != image.dims() {
                return Err(ModelError::shape(
                    "Tiramisu x̂0",
                    format!("{:?}", image.dims()),
                    x0.dims(),
                ));
            }
            let m = paste(x0, image, keep)?;
            (m.clone(), m)
        }
        Space::Latent {
            codec,
            known,
            keep: keep_latent,
        } => {
            if known.dims() != x0.dims() || keep_latent.dims() != x0.dims() {
                return Err(ModelError::shape(
                    "Tiramisu known latent",
                    format!("{:?}", x0.dims()),
                    known.dims(),
                ));
            }
            let decoded = codec.decode(x0)?;
            if decoded.dims() != image.dims() {
                return Err(ModelError::shape(
                    "Tiramisu decoded x̂0",
                    format!("{:?}", image.dims()),
                    decoded.dims(),
                ));
            }
            (
                paste(x0, known, keep_latent)?,
                paste(&decoded, image, keep)?,
            )
        }
    };
    let plane: usize = x0.dims()[1..].iter().product();
    let alpha = mixing_factor(t, total, cfg.alpha_start, cfg.alpha_end, cfg.alpha_k);
    let q_all = parts.code_probs(&pixels)?;
    if q_all.len() != n * ph * pw * k {
        return Err(ModelError::invalid(format!(
            "Tiramisu: {} soft-code values for {n}×{ph}×{pw} patches of {k} codes",
            q_all.len()
        )));
    }
    let mask_all: Vec<f32> = keep.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (mean_all, var_all) = (f64s(&mean)?, f64s(variance)?);
    let (r, r2) = (cfg.range, cfg.range * cfg.range);
    let mut out = Vec::with_capacity(n * plane);
    for b in 0..n {
        let f = known_fractions(&mask_all[b * h * w..(b + 1) * h * w], h, w, patch);
        let q = |i: usize| &q_all[(b * ph * pw + i) * k..(b * ph * pw + i + 1) * k];
        let e: Vec<Vec<f64>> = (0..ph * pw)
            .map(|i| tempered(q(i), temperature(f[i], cfg.tau_min, cfg.tau_max)))
            .collect();
        let marg = parts.conditional(&e, cfg.semantics)?;
        if marg.len() != ph * pw || marg.iter().any(|r| r.len() != k) {
            return Err(ModelError::invalid(
                "Tiramisu: the circuit's marginals do not match its patches",
            ));
        }
        let dists: Vec<Vec<f64>> = (0..ph * pw)
            .map(|i| patch_distribution(&marg[i], &e[i], q(i), f[i], cfg.top_k))
            .collect();
        // S code grids, each patch drawn independently, decoded together (and encoded back in
        // latent space).
        let mut codes = Vec::with_capacity(cfg.samples * ph * pw);
        for _ in 0..cfg.samples {
            for d in &dists {
                codes.push(draw(d, rng.random_range(0.0..1.0)) as u32);
            }
        }
        let grid = Tensor::from_vec(codes, (cfg.samples, ph, pw), &Device::Cpu)?;
        let decoded = parts.decode(&grid)?;
        if decoded.dims() != [cfg.samples, ci, h, w] {
            return Err(ModelError::shape(
                "Tiramisu decoded samples",
                format!("{}×{ci}×{h}×{w}", cfg.samples),
                decoded.dims(),
            ));
        }
        let samples = match space {
            Space::Pixels => decoded,
            Space::Latent { codec, .. } => codec.encode(&decoded)?,
        };
        let samples = f64s(&samples)?;
        if samples.len() != cfg.samples * plane {
            return Err(ModelError::invalid(
                "Tiramisu: the encoded samples do not match x̂0",
            ));
        }
        for p in 0..plane {
            let vals: Vec<f64> = (0..cfg.samples).map(|s| samples[s * plane + p]).collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = if vals.len() > 1 {
                vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (vals.len() - 1) as f64
            } else {
                0.0
            };
            let i = b * plane + p;
            // Bins span [−range, range]: values scale by 1/range, variances by 1/range².
            let prior = denoiser_bins(mean_all[i] / r, var_all[i] / r2);
            let post = circuit_bins(m / r, v / r2, PC_FLOOR);
            let mix = geometric_mixture(&prior, &post, alpha);
            out.push((bin_value(draw(&mix, rng.random_range(0.0..1.0))) * r) as f32);
        }
    }
    Ok(Tensor::from_vec(out, x0.dims(), &Device::Cpu)?)
}
