//! Noise schedulers with the update rules of diffusers 0.42.1, element for element.
//!
//! A [`Scheduler`] is made for a number of inference steps; the sampling loop asks it for the
//! timestep of each step, scales the model input, and calls [`Scheduler::step`] with the model
//! output (and, for stochastic schedulers, the noise to inject, so that noise sources stay
//! under the caller's control and can be recorded).
//!
//! The arithmetic is element-wise, so latents are plain `f32` slices here.

mod ddim;
mod dpmpp;
mod euler;
mod lms;
pub mod table;
mod unipc;

use std::fmt;

pub use table::{BetaSchedule, NoiseTable};

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise ε.
    Epsilon,
    /// The velocity v = √ᾱ ε − √(1−ᾱ) x0.
    V,
}

/// How inference timesteps are spread over the training steps (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// Multiples of T/N from 0, plus `steps_offset`.
    Leading,
    /// Multiples of T/N counted down from T, minus one.
    Trailing,
    /// Evenly spaced over [0, T−1].
    Linspace,
}

/// The scheduler algorithms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// DDIM with stochasticity `eta` (0 = deterministic).
    Ddim {
        /// η.
        eta: f64,
    },
    /// DDPM ancestral sampling (fixed_small variance).
    Ddpm,
    /// Euler on the k-diffusion σ grid.
    Euler,
    /// Euler ancestral.
    EulerAncestral,
    /// DPM-Solver++ (2M, midpoint), multistep.
    DpmPp2M,
    /// UniPC (bh2, order 2) predictor-corrector, multistep.
    UniPc,
    /// Latent consistency model sampling.
    Lcm,
    /// Linear multistep, order 4.
    Lms,
}

impl Kind {
    fn default_spacing(self) -> Spacing {
        match self {
            Kind::Ddim { .. } | Kind::Ddpm | Kind::Lcm => Spacing::Leading,
            Kind::Euler | Kind::EulerAncestral | Kind::DpmPp2M | Kind::UniPc | Kind::Lms => {
                Spacing::Linspace
            }
        }
    }

    /// Whether `step` needs fresh noise.
    pub fn is_stochastic(self) -> bool {
        match self {
            Kind::Ddim { eta } => eta > 0.0,
            Kind::Ddpm | Kind::EulerAncestral | Kind::Lcm => true,
            Kind::Euler | Kind::DpmPp2M | Kind::UniPc | Kind::Lms => false,
        }
    }
}

/// Scheduler settings (diffusers config names in the docs).
#[derive(Debug, Clone)]
pub struct Config {
    /// The algorithm.
    pub kind: Kind,
    /// `prediction_type`.
    pub prediction: Prediction,
    /// `timestep_spacing`; `None` takes the algorithm's diffusers default.
    pub spacing: Option<Spacing>,
    /// `steps_offset` (1 for Stable Diffusion).
    pub steps_offset: i64,
    /// `set_alpha_to_one` (DDIM, LCM); `None` takes the diffusers default.
    pub set_alpha_to_one: Option<bool>,
    /// `use_karras_sigmas` (Euler, DPM-Solver++).
    pub karras: bool,
    /// The training schedule.
    pub table: NoiseTable,
}

impl Config {
    /// Stable Diffusion 1.x settings for `kind`, ε-prediction.
    pub fn sd(kind: Kind) -> Self {
        Config {
            kind,
            prediction: Prediction::Epsilon,
            spacing: None,
            steps_offset: 1,
            set_alpha_to_one: None,
            karras: false,
            table: NoiseTable::sd(),
        }
    }
}

/// A problem with scheduler settings or inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError(pub String);

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScheduleError {}

/// A scheduler prepared for a number of inference steps; it keeps multistep history.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: Config,
    steps: usize,
    timesteps: Vec<f64>,
    /// k-diffusion σ per step plus the final σ (Euler family and DPM-Solver++); empty otherwise.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    index: usize,
    /// Multistep solvers: data predictions of earlier steps, most recent last.
    history: Vec<Vec<f32>>,
    lower_order_nums: usize,
    /// UniPC: the sample the last predictor started from, and that predictor's order.
    last_sample: Option<Vec<f32>>,
    this_order: usize,
}

/// `a·x + b·y`, element-wise.
pub(crate) fn lincomb(a: f64, x: &[f32], b: f64, y: &[f32]) -> Vec<f32> {
    let (a, b) = (a as f32, b as f32);
    x.iter().zip(y).map(|(x, y)| a * x + b * y).collect()
}

/// `x + c·z`, element-wise.
pub(crate) fn add_scaled(x: &mut [f32], c: f64, z: &[f32]) {
    let c = c as f32;
    x.iter_mut().zip(z).for_each(|(x, z)| *x += c * z);
}

impl Scheduler {
    /// Prepares `cfg` for `steps` inference steps.
    pub fn new(cfg: Config, steps: usize) -> Result<Self, ScheduleError> {
        if steps == 0 {
            return Err(ScheduleError(
                "the number of steps must be at least 1".into(),
            ));
        }
        if steps > cfg.table.len() {
            return Err(ScheduleError(format!(
                "{steps} steps is more than the {} training steps",
                cfg.table.len()
            )));
        }
        let spacing = cfg.spacing.unwrap_or(cfg.kind.default_spacing());
        let (timesteps, sigmas, init_noise_sigma) = match cfg.kind {
            Kind::Ddim { .. } | Kind::Ddpm => {
                (ddim::timesteps(&cfg, spacing, steps), Vec::new(), 1.0)
            }
            Kind::Lcm => (ddim::lcm_timesteps(&cfg, steps), Vec::new(), 1.0),
            Kind::Euler | Kind::EulerAncestral | Kind::Lms => euler::grid(&cfg, spacing, steps),
            Kind::DpmPp2M | Kind::UniPc => dpmpp::grid(&cfg, spacing, steps),
        };
        Ok(Scheduler {
            cfg,
            steps,
            timesteps,
            sigmas,
            init_noise_sigma,
            index: 0,
            history: Vec::new(),
            lower_order_nums: 0,
            last_sample: None,
            this_order: 0,
        })
    }

    /// The timestep given to the model at each step.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// σ per step and the final σ, for σ-based schedulers (empty for DDIM, DDPM, LCM).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The standard deviation of the initial noise (multiply unit noise by it).
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps
    }

    /// Whether there are no steps (never: a scheduler has at least one).
    pub fn is_empty(&self) -> bool {
        self.steps == 0
    }

    /// The index of the next step.
    pub fn step_index(&self) -> usize {
        self.index
    }

    /// Starts sampling at step `index` instead of 0 (img2img: skip the noisiest steps).
    pub fn start_at(&mut self, index: usize) -> Result<(), ScheduleError> {
        if index >= self.steps {
            return Err(ScheduleError(format!(
                "cannot start at step {index} of {}",
                self.steps
            )));
        }
        self.index = index;
        Ok(())
    }

    /// The clean sample x̂0 that `model_output` implies for the current latent `x`, before
    /// [`Scheduler::step`] (each scheduler's own parameterisation: ᾱ for DDIM/DDPM/LCM, the
    /// σ grid for Euler/LMS, VP α/σ for the multistep solvers).
    pub fn predict_x0(&self, model_output: &[f32], x: &[f32]) -> Vec<f32> {
        let v = self.cfg.prediction == Prediction::V;
        let i = self.index.min(self.steps.saturating_sub(1));
        match self.cfg.kind {
            Kind::Ddim { .. } | Kind::Ddpm | Kind::Lcm => {
                let a = self.cfg.table.alpha_bar(self.timesteps[i] as i64);
                let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
                if v {
                    lincomb(sa, x, -sb, model_output)
                } else {
                    lincomb(1.0 / sa, x, -sb / sa, model_output)
                }
            }
            Kind::Euler | Kind::EulerAncestral | Kind::Lms => {
                let s = self.sigmas[i];
                if v {
                    lincomb(
                        1.0 / (s * s + 1.0),
                        x,
                        -s / (s * s + 1.0).sqrt(),
                        model_output,
                    )
                } else {
                    lincomb(1.0, x, -s, model_output)
                }
            }
            Kind::DpmPp2M | Kind::UniPc => {
                let s = self.sigmas[i];
                let alpha = 1.0 / (s * s + 1.0).sqrt();
                let sigma = s * alpha;
                if v {
                    lincomb(alpha, x, -sigma, model_output)
                } else {
                    lincomb(1.0 / alpha, x, -sigma / alpha, model_output)
                }
            }
        }
    }

    /// `x0` noised to the level of step `index` with unit noise `noise` (diffusers' `add_noise`):
    /// √ᾱ·x0 + √(1−ᾱ)·z for ᾱ-based schedulers, x0 + σ·z on the Euler grid, α·x0 + σ_VP·z for
    /// the multistep solvers. At the final index (σ = 0) it is `x0`.
    pub fn add_noise(&self, x0: &[f32], noise: &[f32], index: usize) -> Vec<f32> {
        match self.cfg.kind {
            Kind::Ddim { .. } | Kind::Ddpm | Kind::Lcm => {
                let a = self
                    .cfg
                    .table
                    .alpha_bar(self.timesteps[index.min(self.steps - 1)] as i64);
                lincomb(a.sqrt(), x0, (1.0 - a).sqrt(), noise)
            }
            Kind::Euler | Kind::EulerAncestral | Kind::Lms => {
                lincomb(1.0, x0, self.sigmas[index], noise)
            }
            Kind::DpmPp2M | Kind::UniPc => {
                let sigma = self.sigmas[index];
                let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
                lincomb(alpha, x0, sigma * alpha, noise)
            }
        }
    }

    /// Whether the next [`Scheduler::step`] needs noise.
    pub fn needs_noise(&self) -> bool {
        match self.cfg.kind {
            Kind::Lcm => self.index + 1 < self.steps,
            k => k.is_stochastic(),
        }
    }

    /// The model input for the next step (σ-based schedulers divide by √(σ²+1)).
    pub fn scale_model_input(&self, x: &[f32]) -> Vec<f32> {
        match self.cfg.kind {
            Kind::Euler | Kind::EulerAncestral | Kind::Lms => {
                let s = self.sigmas[self.index];
                let k = (1.0 / (s * s + 1.0).sqrt()) as f32;
                x.iter().map(|v| v * k).collect()
            }
            _ => x.to_vec(),
        }
    }

    /// Advances one step from `x` given the model output; `noise` (unit normal, same length) is
    /// required when [`Scheduler::needs_noise`] says so.
    pub fn step(
        &mut self,
        model_output: &[f32],
        x: &[f32],
        noise: Option<&[f32]>,
    ) -> Result<Vec<f32>, ScheduleError> {
        if self.index >= self.steps {
            return Err(ScheduleError(format!("all {} steps are done", self.steps)));
        }
        if model_output.len() != x.len() {
            return Err(ScheduleError(format!(
                "model output has {} elements, the latent {}",
                model_output.len(),
                x.len()
            )));
        }
        let noise = if self.needs_noise() {
            match noise {
                Some(n) if n.len() == x.len() => Some(n),
                Some(n) => {
                    return Err(ScheduleError(format!(
                        "noise has {} elements, the latent {}",
                        n.len(),
                        x.len()
                    )))
                }
                None => {
                    return Err(ScheduleError(format!(
                        "step {} of {:?} needs noise",
                        self.index, self.cfg.kind
                    )))
                }
            }
        } else {
            None
        };
        let out = match self.cfg.kind {
            Kind::Ddim { eta } => ddim::step_ddim(self, eta, model_output, x, noise),
            Kind::Ddpm => ddim::step_ddpm(self, model_output, x, noise),
            Kind::Lcm => ddim::step_lcm(self, model_output, x, noise),
            Kind::Euler => euler::step_euler(self, model_output, x),
            Kind::EulerAncestral => euler::step_ancestral(self, model_output, x, noise),
            Kind::DpmPp2M => dpmpp::step(self, model_output, x),
            Kind::UniPc => unipc::step(self, model_output, x),
            Kind::Lms => lms::step(self, model_output, x),
        };
        self.index += 1;
        Ok(out)
    }
}
