//! One Tiramisu steering step: the denoiser's x̂0 (known pixels pasted) and variance in, a
//! steered x̃0 out. The VQ model and the circuit are reached through [`TpmParts`], so the step
//! runs on models in this process ([`Direct`]) or behind plugin handles alike.

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

/// The steered x̂0 for `x0` (N×C×H×W in [−1, 1], known pixels pasted in), the denoiser's
/// `variance` (same shape), `mask` (N×1×H×W, 1 = known) at timestep `t` of `total`.
#[allow(clippy::too_many_arguments)]
pub fn steer(
    x0: &Tensor,
    variance: &Tensor,
    mask: &Tensor,
    t: f64,
    total: f64,
    parts: &dyn TpmParts,
    cfg: &SteerConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor> {
    let (n, c, h, w) = x0.dims4()?;
    if variance.dims() != x0.dims() || mask.dims() != [n, 1, h, w] {
        return Err(ModelError::shape(
            "Tiramisu variance and mask",
            format!("{n}×{c}×{h}×{w} and {n}×1×{h}×{w}"),
            variance.dims(),
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
    let alpha = mixing_factor(t, total, cfg.alpha_start, cfg.alpha_end, cfg.alpha_k);
    let q_all = parts.code_probs(x0)?;
    if q_all.len() != n * ph * pw * k {
        return Err(ModelError::invalid(format!(
            "Tiramisu: {} soft-code values for {n}×{ph}×{pw} patches of {k} codes",
            q_all.len()
        )));
    }
    let mask_all: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (mean_all, var_all) = (f64s(x0)?, f64s(variance)?);
    let mut out = Vec::with_capacity(n * c * h * w);
    for b in 0..n {
        let f = known_fractions(&mask_all[b * h * w..(b + 1) * h * w], h, w, patch);
        let q = |i: usize| &q_all[(b * ph * pw + i) * k..(b * ph * pw + i + 1) * k];
        let e: Vec<Vec<f64>> = (0..ph * pw)
            .map(|i| tempered(q(i), temperature(f[i], cfg.tau_min, cfg.tau_max)))
            .collect();
        let r = parts.conditional(&e, cfg.semantics)?;
        if r.len() != ph * pw || r.iter().any(|r| r.len() != k) {
            return Err(ModelError::invalid(
                "Tiramisu: the circuit's marginals do not match its patches",
            ));
        }
        let dists: Vec<Vec<f64>> = (0..ph * pw)
            .map(|i| patch_distribution(&r[i], &e[i], q(i), f[i], cfg.top_k))
            .collect();
        // S code grids, each patch drawn independently, decoded together.
        let mut codes = Vec::with_capacity(cfg.samples * ph * pw);
        for _ in 0..cfg.samples {
            for d in &dists {
                codes.push(draw(d, rng.random_range(0.0..1.0)) as u32);
            }
        }
        let grid = Tensor::from_vec(codes, (cfg.samples, ph, pw), &Device::Cpu)?;
        let images = f64s(&parts.decode(&grid)?)?; // S×C×H×W
        if images.len() != cfg.samples * c * h * w {
            return Err(ModelError::invalid(format!(
                "Tiramisu: the VQ decoder gave {} values for {} images of {c}×{h}×{w}",
                images.len(),
                cfg.samples
            )));
        }
        let plane = c * h * w;
        for p in 0..plane {
            let vals: Vec<f64> = (0..cfg.samples).map(|s| images[s * plane + p]).collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = if vals.len() > 1 {
                vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (vals.len() - 1) as f64
            } else {
                0.0
            };
            let i = b * plane + p;
            let prior = denoiser_bins(mean_all[i], var_all[i]);
            let post = circuit_bins(m, v, PC_FLOOR);
            let mix = geometric_mixture(&prior, &post, alpha);
            out.push(bin_value(draw(&mix, rng.random_range(0.0..1.0))) as f32);
        }
    }
    Ok(Tensor::from_vec(out, (n, c, h, w), &Device::Cpu)?)
}
