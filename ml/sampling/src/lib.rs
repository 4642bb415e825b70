//! Sampling for diffusion models on candle tensors: the schedulers of diffusers 0.42.1 with
//! their exact update rules, the loop that drives a model with classifier-free guidance, noise
//! streams, per-step hooks (the inpainting blend among them), and statistics of trajectories.
//!
//! The crate knows nothing of plugins: a caller implements [`sampler::Model`] over whatever runs
//! the network.

pub mod copaint;
pub mod dct;
pub mod free_init;
pub mod free_noise;
pub mod guidance;
pub mod hallucination;
pub mod hooks;
pub mod invert;
pub mod noise;
pub mod respace;
pub mod sampler;
pub mod schedulers;
pub mod temporal;

pub use hooks::{HookPoint, InpaintBlend, StepContext, StepHook};
pub use noise::Noise;
pub use sampler::{sample, Model, Run, Sampled, Start, Step};
pub use schedulers::{Config, Kind, Prediction, ScheduleError, Scheduler, Spacing};

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Settings or inputs that do not fit.
    #[error("{0}")]
    Invalid(String),
    /// The schedule refused.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Tensor arithmetic failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The model (or a hook) failed; the original error is kept for the caller.
    #[error("{0}")]
    Model(Box<dyn std::error::Error + Send + Sync>),
}
