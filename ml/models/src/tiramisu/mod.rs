//! Tiramisu (Liu et al., "Image Inpainting via Tractable Steering of Diffusion Models"): during
//! the first, noisiest steps of an inpainting sampler, the denoiser's x̂0 is replaced by a sample
//! from a per-pixel geometric mixture of the denoiser's distribution and a probabilistic
//! circuit's, the circuit conditioned on soft VQ codes of the current x̂0.
//!
//! - [`schedule`]: when steering is active and the mixing weight α at each step;
//! - [`mixing`]: the two distributions over 256 bins and their weighted geometric mean;
//! - [`evidence`]: soft evidence per patch (temperature from the known fraction), the circuit's
//!   marginals blended with it, top-k;
//! - [`steer`]: one steering step end to end.
//!
//! Numbers and defaults follow the authors' code (`external/CoPaint/guided_diffusion/pc_based.py`,
//! `exps/generate_images/configs/celeba.yaml`).

pub mod evidence;
pub mod mixing;
pub mod schedule;
pub mod steer;

pub use steer::{steer, Direct, LatentCodec, Space, SteerConfig, TpmParts};
