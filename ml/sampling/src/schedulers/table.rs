//! The training noise schedule: betas, ᾱ (alphas_cumprod) and the k-diffusion sigma table,
//! computed in f32 like diffusers so that every later step matches it closely.

/// Beta schedules of the training process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linspace(√start, √end)²` (Stable Diffusion).
    ScaledLinear,
    /// `linspace(start, end)`.
    Linear,
}

/// `torch.linspace(start, end, n, dtype=float32)`: computed from both ends, as torch does.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// The training schedule.
#[derive(Debug, Clone)]
pub struct NoiseTable {
    /// ᾱ_t for t = 0..T, f32 as diffusers keeps it.
    pub alphas_cumprod: Vec<f32>,
}

impl BetaSchedule {
    /// `linear` or `scaled_linear`, as diffusers' `beta_schedule` names them.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "linear" => Some(BetaSchedule::Linear),
            "scaled_linear" => Some(BetaSchedule::ScaledLinear),
            _ => None,
        }
    }
}

impl NoiseTable {
    /// The schedule of a diffusers config (`beta_schedule`, `beta_start`, `beta_end`,
    /// `num_train_timesteps`), its fields checked; the error says which is wrong.
    pub fn from_config(
        schedule: &str,
        beta_start: f64,
        beta_end: f64,
        train_steps: usize,
    ) -> Result<Self, String> {
        let kind = BetaSchedule::parse(schedule)
            .ok_or_else(|| format!("unknown beta_schedule `{schedule}` (linear, scaled_linear)"))?;
        if !(0.0 < beta_start && beta_start <= beta_end && beta_end < 1.0) {
            return Err(format!(
                "betas must satisfy 0 < beta_start ≤ beta_end < 1, got {beta_start} and {beta_end}"
            ));
        }
        if train_steps < 2 {
            return Err(format!(
                "{train_steps} training timesteps: at least 2 are needed"
            ));
        }
        Ok(NoiseTable::new(kind, beta_start, beta_end, train_steps))
    }

    /// The schedule for `train_steps` steps between `beta_start` and `beta_end`.
    pub fn new(schedule: BetaSchedule, beta_start: f64, beta_end: f64, train_steps: usize) -> Self {
        let betas: Vec<f32> = match schedule {
            BetaSchedule::ScaledLinear => linspace_f32(
                (beta_start as f32).sqrt(),
                (beta_end as f32).sqrt(),
                train_steps,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            BetaSchedule::Linear => linspace_f32(beta_start as f32, beta_end as f32, train_steps),
        };
        let mut acc = 1.0f32;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        NoiseTable { alphas_cumprod }
    }

    /// Stable Diffusion 1.x/2.x: scaled_linear 0.00085..0.012 over 1000 steps.
    pub fn sd() -> Self {
        NoiseTable::new(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000)
    }

    /// Number of training steps.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// ᾱ at integer timestep `t`.
    pub fn alpha_bar(&self, t: i64) -> f64 {
        self.alphas_cumprod[t.clamp(0, self.len() as i64 - 1) as usize] as f64
    }

    /// σ_t = √((1 − ᾱ_t)/ᾱ_t) for every t, in f32 as diffusers computes it.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

/// `np.linspace(0, end, n)`, largest first.
pub fn linspace_desc(end: f64, n: usize) -> Vec<f64> {
    (0..n)
        .rev()
        .map(|i| {
            if n == 1 {
                0.0
            } else {
                i as f64 * end / (n - 1) as f64
            }
        })
        .collect()
}

/// diffusers' "leading" spacing: `k·ratio` (rounded) for k = last..=first, plus `offset`.
pub fn leading(ratio: usize, ks: std::ops::RangeInclusive<usize>, offset: i64) -> Vec<f64> {
    ks.rev()
        .map(|k| (k as f64 * ratio as f64).round_ties_even() + offset as f64)
        .collect()
}

/// diffusers' "trailing" spacing: `round(arange(T, 0, −T/n)) − 1`.
pub fn trailing(train: usize, n: usize) -> Vec<f64> {
    let ratio = train as f64 / n as f64;
    let mut out = Vec::with_capacity(n);
    let mut v = train as f64;
    while v > 0.0 {
        out.push(v.round_ties_even() - 1.0);
        v -= ratio;
    }
    out
}

/// `np.interp(x, 0..n, table)`.
pub fn interp(x: f64, table: &[f32]) -> f64 {
    if x <= 0.0 {
        return table[0] as f64;
    }
    let last = table.len() - 1;
    if x >= last as f64 {
        return table[last] as f64;
    }
    let i = x.floor() as usize;
    let w = x - i as f64;
    table[i] as f64 * (1.0 - w) + table[i + 1] as f64 * w
}

/// diffusers' `_sigma_to_t`: the fractional timestep of `sigma`, by linear interpolation in
/// log σ between table entries.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let count = log_sigmas
        .iter()
        .filter(|&&l| log_sigma - l as f64 >= 0.0)
        .count();
    let low = count.saturating_sub(1).min(n - 2);
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Karras et al. (2022) σ ramp with ρ = 7 between `sigma_max` and `sigma_min`.
pub fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    (0..n)
        .map(|i| {
            let ramp = if n == 1 {
                0.0
            } else {
                i as f64 / (n - 1) as f64
            };
            (max_inv + ramp * (min_inv - max_inv)).powf(rho)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_table_endpoints() {
        let t = NoiseTable::sd();
        let s = t.sigmas();
        assert!((s[999] as f64 - 14.6146).abs() < 1e-3, "{}", s[999]);
        assert!((s[0] as f64 - 0.02917).abs() < 1e-4, "{}", s[0]);
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let t = NoiseTable::sd();
        let logs: Vec<f32> = t.sigmas().iter().map(|s| s.ln()).collect();
        for k in [0usize, 1, 10, 500, 998, 999] {
            let got = sigma_to_t(t.sigmas()[k] as f64, &logs);
            assert!((got - k as f64).abs() < 1e-3, "{k}: {got}");
        }
    }
}
