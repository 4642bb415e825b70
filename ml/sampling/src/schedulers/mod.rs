//! Noise schedulers with the update rules of diffusers 0.42.1, element for element.
//!
//! A [`Scheduler`] is made for a number of inference steps; the sampling loop asks it for the
//! timestep of each step, scales the model input, and calls [`Scheduler::step`] with the model
//! output (and, for stochastic schedulers, the noise to inject, so that noise sources stay
//! under the caller's control and can be recorded).
//!
//! Latents are f32 candle tensors of any rank; the arithmetic is element-wise and keeps
//! diffusers' order of operations.

mod ddim;
mod dpmpp;
mod euler;
mod flow;
mod lms;
pub mod ops;
pub mod table;
mod unipc;

use candle_core::Tensor;

pub use flow::{DynamicShift, Flow};
use ops::lincomb;
pub use table::{BetaSchedule, NoiseTable};

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise ε.
    Epsilon,
    /// The velocity v = √ᾱ ε − √(1−ᾱ) x0.
    V,
    /// The clean sample x0 itself (also how a hook's replaced x̂0 is stepped).
    Sample,
    /// Flow-matching velocity v = ε − x0 (rectified flows: SD3, Flux); stepped by
    /// `flow_euler`, and by DPM-Solver++ and UniPC on a flow grid ([`Config::flow`]).
    Flow,
}

impl Prediction {
    /// diffusers' spelling (`epsilon`, `v_prediction`, `sample`, `flow_prediction`).
    pub fn name(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v_prediction",
            Prediction::Sample => "sample",
            Prediction::Flow => "flow_prediction",
        }
    }
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

impl Spacing {
    /// From diffusers' spelling (`leading`, `trailing`, `linspace`).
    pub fn parse(name: &str) -> Option<Spacing> {
        match name {
            "leading" => Some(Spacing::Leading),
            "trailing" => Some(Spacing::Trailing),
            "linspace" => Some(Spacing::Linspace),
            _ => None,
        }
    }
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
    /// Flow matching's Euler step (`FlowMatchEulerDiscreteScheduler`), on the flow grid of
    /// [`Config::flow`].
    FlowEuler,
}

impl Kind {
    /// The names the graph and the fixtures use.
    pub const NAMES: &'static [&'static str] = &[
        "ddim",
        "ddpm",
        "euler",
        "euler_a",
        "dpmpp_2m",
        "lcm",
        "unipc",
        "lms",
        "flow_euler",
    ];

    /// From its name (see [`Kind::NAMES`]); `eta` is DDIM's η.
    pub fn parse(name: &str, eta: f64) -> Option<Kind> {
        Some(match name {
            "ddim" => Kind::Ddim { eta },
            "ddpm" => Kind::Ddpm,
            "euler" => Kind::Euler,
            "euler_a" => Kind::EulerAncestral,
            "dpmpp_2m" => Kind::DpmPp2M,
            "lcm" => Kind::Lcm,
            "unipc" => Kind::UniPc,
            "lms" => Kind::Lms,
            "flow_euler" => Kind::FlowEuler,
            _ => return None,
        })
    }

    /// Its name (see [`Kind::NAMES`]).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ddim { .. } => "ddim",
            Kind::Ddpm => "ddpm",
            Kind::Euler => "euler",
            Kind::EulerAncestral => "euler_a",
            Kind::DpmPp2M => "dpmpp_2m",
            Kind::UniPc => "unipc",
            Kind::Lcm => "lcm",
            Kind::Lms => "lms",
            Kind::FlowEuler => "flow_euler",
        }
    }

    fn default_spacing(self) -> Spacing {
        match self {
            Kind::Ddim { .. } | Kind::Ddpm | Kind::Lcm => Spacing::Leading,
            Kind::Euler
            | Kind::EulerAncestral
            | Kind::DpmPp2M
            | Kind::UniPc
            | Kind::Lms
            | Kind::FlowEuler => Spacing::Linspace,
        }
    }

    /// Whether `step` needs fresh noise.
    pub fn is_stochastic(self) -> bool {
        match self {
            Kind::Ddim { eta } => eta > 0.0,
            Kind::Ddpm | Kind::EulerAncestral | Kind::Lcm => true,
            Kind::Euler | Kind::DpmPp2M | Kind::UniPc | Kind::Lms | Kind::FlowEuler => false,
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
    /// Flow-matching σ (a flow model): `flow_euler` always uses a flow grid (this one, or the
    /// default unshifted one); DPM-Solver++ and UniPC use it when set (`use_flow_sigmas`).
    pub flow: Option<Flow>,
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
            flow: None,
        }
    }
}

/// A problem with scheduler settings or inputs.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Settings or arguments out of range.
    #[error("{0}")]
    Invalid(String),
    /// The tensor arithmetic failed (shapes, dtypes).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, ScheduleError> {
    Err(ScheduleError::Invalid(msg.into()))
}

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
    history: Vec<Tensor>,
    lower_order_nums: usize,
    /// UniPC: the sample the last predictor started from, and that predictor's order.
    last_sample: Option<Tensor>,
    this_order: usize,
}

impl Scheduler {
    /// Prepares `cfg` for `steps` inference steps.
    pub fn new(cfg: Config, steps: usize) -> Result<Self, ScheduleError> {
        if steps == 0 {
            return invalid("the number of steps must be at least 1");
        }
        if steps > cfg.table.len() {
            return invalid(format!(
                "{steps} steps is more than the {} training steps",
                cfg.table.len()
            ));
        }
        let mut cfg = cfg;
        if cfg.kind == Kind::FlowEuler && cfg.flow.is_none() {
            cfg.flow = Some(Flow::default());
        }
        if let Some(f) = &cfg.flow {
            f.check().map_err(ScheduleError::Invalid)?;
            if !matches!(cfg.kind, Kind::FlowEuler | Kind::DpmPp2M | Kind::UniPc) {
                return invalid(format!(
                    "{} has no flow-matching grid: sample a flow model with flow_euler, dpmpp_2m or unipc",
                    cfg.kind.name()
                ));
            }
            if cfg.karras {
                return invalid("Karras σ are not built for flow-matching grids: turn karras off");
            }
            if f.uniform && cfg.kind != Kind::FlowEuler {
                return invalid(
                    "the uniform (Flux pipeline) σ grid is flow_euler's; dpmpp_2m and unipc use their own flow grid",
                );
            }
        }
        let spacing = cfg.spacing.unwrap_or(cfg.kind.default_spacing());
        let train = cfg.table.len();
        let (timesteps, sigmas, init_noise_sigma) = match (cfg.kind, cfg.flow) {
            (Kind::FlowEuler, Some(f)) => flow::euler_grid(&f, train, steps),
            (Kind::DpmPp2M, Some(f)) => flow::dpm_grid(&f, train, steps),
            (Kind::UniPc, Some(f)) => flow::unipc_grid(&f, train, steps),
            _ => match cfg.kind {
                Kind::Ddim { .. } | Kind::Ddpm => {
                    (ddim::timesteps(&cfg, spacing, steps), Vec::new(), 1.0)
                }
                Kind::Lcm => (ddim::lcm_timesteps(&cfg, steps), Vec::new(), 1.0),
                Kind::Euler | Kind::EulerAncestral | Kind::Lms => euler::grid(&cfg, spacing, steps),
                Kind::DpmPp2M | Kind::UniPc | Kind::FlowEuler => dpmpp::grid(&cfg, spacing, steps),
            },
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

    /// The settings it was made with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The flow-matching grid it runs on, if any.
    pub fn flow_grid(&self) -> Option<&Flow> {
        self.cfg.flow.as_ref()
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
            return invalid(format!("cannot start at step {index} of {}", self.steps));
        }
        self.index = index;
        Ok(())
    }

    /// The configured prediction type.
    pub fn prediction(&self) -> Prediction {
        self.cfg.prediction
    }

    /// The clean sample x̂0 that `model_output` (of kind `prediction`) implies for the current
    /// latent `x`, before [`Scheduler::step`] (each scheduler's own parameterisation: ᾱ for
    /// DDIM/DDPM/LCM, the σ grid for Euler/LMS, VP α/σ for the multistep solvers).
    pub fn predict_x0(
        &self,
        model_output: &Tensor,
        prediction: Prediction,
        x: &Tensor,
    ) -> Result<Tensor, ScheduleError> {
        let i = self.index.min(self.steps.saturating_sub(1));
        if self.flow_grid().is_some() {
            let s = self.sigmas[i];
            let (alpha, sigma) = flow::alpha_sigma(s);
            return Ok(match prediction {
                Prediction::Sample => model_output.clone(),
                Prediction::Flow => lincomb(1.0, x, -s, model_output)?,
                Prediction::V => lincomb(alpha, x, -sigma, model_output)?,
                Prediction::Epsilon => lincomb(1.0 / alpha, x, -sigma / alpha, model_output)?,
            });
        }
        let out = match (self.cfg.kind, prediction) {
            (_, Prediction::Sample) => model_output.clone(),
            (_, Prediction::Flow) => return flow_refused(),
            (Kind::Ddim { .. } | Kind::Ddpm | Kind::Lcm, p) => {
                let a = self.cfg.table.alpha_bar(self.timesteps[i] as i64);
                let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
                if p == Prediction::V {
                    lincomb(sa, x, -sb, model_output)?
                } else {
                    lincomb(1.0 / sa, x, -sb / sa, model_output)?
                }
            }
            (Kind::Euler | Kind::EulerAncestral | Kind::Lms, p) => {
                let s = self.sigmas[i];
                if p == Prediction::V {
                    lincomb(
                        1.0 / (s * s + 1.0),
                        x,
                        -s / (s * s + 1.0).sqrt(),
                        model_output,
                    )?
                } else {
                    lincomb(1.0, x, -s, model_output)?
                }
            }
            (Kind::DpmPp2M | Kind::UniPc | Kind::FlowEuler, p) => {
                let s = self.sigmas[i];
                let alpha = 1.0 / (s * s + 1.0).sqrt();
                let sigma = s * alpha;
                if p == Prediction::V {
                    lincomb(alpha, x, -sigma, model_output)?
                } else {
                    lincomb(1.0 / alpha, x, -sigma / alpha, model_output)?
                }
            }
        };
        Ok(out)
    }

    /// The coefficients (a, b) with which [`Scheduler::add_noise`] mixes at step `index`:
    /// noised = a·x0 + b·noise. √ᾱ and √(1−ᾱ) for ᾱ-based schedulers, 1 and σ on the Euler
    /// grid, α and σ_VP for the multistep solvers; at the final index (σ = 0) (1, 0).
    pub fn noise_coefficients(&self, index: usize) -> (f64, f64) {
        if self.flow_grid().is_some() {
            return flow::alpha_sigma(self.sigmas[index]);
        }
        match self.cfg.kind {
            Kind::Ddim { .. } | Kind::Ddpm | Kind::Lcm => {
                let a = self
                    .cfg
                    .table
                    .alpha_bar(self.timesteps[index.min(self.steps - 1)] as i64);
                (a.sqrt(), (1.0 - a).sqrt())
            }
            Kind::Euler | Kind::EulerAncestral | Kind::Lms => (1.0, self.sigmas[index]),
            Kind::DpmPp2M | Kind::UniPc | Kind::FlowEuler => {
                let sigma = self.sigmas[index];
                let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
                (alpha, sigma * alpha)
            }
        }
    }

    /// `x0` noised to the level of step `index` with unit noise `noise` (diffusers'
    /// `add_noise`), with the coefficients of [`Scheduler::noise_coefficients`].
    pub fn add_noise(
        &self,
        x0: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> Result<Tensor, ScheduleError> {
        let (a, b) = self.noise_coefficients(index);
        Ok(lincomb(a, x0, b, noise)?)
    }

    /// Whether the next [`Scheduler::step`] needs noise.
    pub fn needs_noise(&self) -> bool {
        match self.cfg.kind {
            Kind::Lcm => self.index + 1 < self.steps,
            k => k.is_stochastic(),
        }
    }

    /// The model input for the next step (σ-based schedulers divide by √(σ²+1)).
    pub fn scale_model_input(&self, x: &Tensor) -> Result<Tensor, ScheduleError> {
        match self.cfg.kind {
            Kind::Euler | Kind::EulerAncestral | Kind::Lms => {
                let s = self.sigmas[self.index];
                let k = (1.0 / (s * s + 1.0).sqrt()) as f32;
                Ok(x.affine(k as f64, 0.0)?)
            }
            _ => Ok(x.clone()),
        }
    }

    /// Advances one step from `x` given the model output of the configured prediction type;
    /// `noise` (unit normal, the latent's shape) is required when [`Scheduler::needs_noise`]
    /// says so.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        x: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor, ScheduleError> {
        let p = self.cfg.prediction;
        self.step_as(p, model_output, x, noise)
    }

    /// [`Scheduler::step`] with a model output of kind `prediction`.
    pub fn step_as(
        &mut self,
        prediction: Prediction,
        model_output: &Tensor,
        x: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor, ScheduleError> {
        if self.index >= self.steps {
            return invalid(format!("all {} steps are done", self.steps));
        }
        match (self.flow_grid().is_some(), prediction) {
            (false, Prediction::Flow) => return flow_refused(),
            (true, p) if self.cfg.kind == Kind::FlowEuler && p != Prediction::Flow => {
                return invalid(format!(
                    "flow_euler steps a flow-matching velocity, and this model predicts {}: choose another scheduler",
                    p.name()
                ))
            }
            _ => {}
        }
        if model_output.dims() != x.dims() {
            return invalid(format!(
                "model output has shape {:?}, the latent {:?}",
                model_output.dims(),
                x.dims()
            ));
        }
        let noise = if self.needs_noise() {
            match noise {
                Some(n) if n.dims() == x.dims() => Some(n),
                Some(n) => {
                    return invalid(format!(
                        "noise has shape {:?}, the latent {:?}",
                        n.dims(),
                        x.dims()
                    ))
                }
                None => {
                    return invalid(format!(
                        "step {} of {} needs noise",
                        self.index,
                        self.cfg.kind.name()
                    ))
                }
            }
        } else {
            None
        };
        let a = StepArgs {
            pred: prediction,
            out: model_output,
            x,
            noise,
        };
        let out = match self.cfg.kind {
            Kind::Ddim { eta } => ddim::step_ddim(self, eta, &a),
            Kind::Ddpm => ddim::step_ddpm(self, &a),
            Kind::Lcm => ddim::step_lcm(self, &a),
            Kind::Euler => euler::step_euler(self, &a),
            Kind::EulerAncestral => euler::step_ancestral(self, &a),
            Kind::DpmPp2M => dpmpp::step(self, &a),
            Kind::UniPc => unipc::step(self, &a),
            Kind::Lms => lms::step(self, &a),
            Kind::FlowEuler => flow::step_euler(self, &a),
        }?;
        self.index += 1;
        Ok(out)
    }
}

/// The inputs of one update rule.
#[derive(Clone, Copy)]
pub(crate) struct StepArgs<'a> {
    pred: Prediction,
    out: &'a Tensor,
    x: &'a Tensor,
    noise: Option<&'a Tensor>,
}

fn flow_refused<T>() -> Result<T, ScheduleError> {
    invalid(
        "this model predicts a flow-matching velocity; sample it with flow_euler, or dpmpp_2m or unipc on a flow grid",
    )
}
