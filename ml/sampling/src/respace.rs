//! guided-diffusion's schedules: the named beta schedules, and a diffusion respaced to a subset
//! of its timesteps (`space_timesteps`, `SpacedDiffusion`), with the posterior variances that
//! learned-range models interpolate between. ADM models (and the samplers built on them, such as
//! CoPaint's) count steps in the respaced process and give the model the original timestep.
//!
//! Everything is computed in f64, as the reference does with numpy.

use crate::SampleError;

/// A named base schedule of `steps` betas: `linear` (scaled to the step count, as
/// guided-diffusion does) or `cosine` (Nichol & Dhariwal).
pub fn named_betas(name: &str, steps: usize) -> Result<Vec<f64>, SampleError> {
    if steps == 0 {
        return Err(SampleError::Invalid(
            "a schedule needs at least one step".into(),
        ));
    }
    match name {
        "linear" => {
            let scale = 1000.0 / steps as f64;
            let (a, b) = (scale * 0.0001, scale * 0.02);
            Ok(linspace(a, b, steps))
        }
        "cosine" => {
            let f = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            Ok((0..steps)
                .map(|i| {
                    let (t1, t2) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                    (1.0 - f(t2) / f(t1)).min(0.999)
                })
                .collect())
        }
        other => Err(SampleError::Invalid(format!(
            "unknown beta schedule `{other}` (linear or cosine)"
        ))),
    }
}

/// numpy's `linspace(a, b, n)`.
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    (0..n)
        .map(|i| if i == n - 1 { b } else { a + i as f64 * step })
        .collect()
}

/// The timesteps of a `steps`-step process that `section_counts` keeps: comma-separated counts
/// per equal section (`"250"`, `"10,15,20"`), or `"ddimN"` for DDIM's fixed stride.
pub fn space_timesteps(steps: usize, section_counts: &str) -> Result<Vec<usize>, SampleError> {
    let bad =
        |why: String| SampleError::Invalid(format!("timestep respacing `{section_counts}`: {why}"));
    if let Some(n) = section_counts.strip_prefix("ddim") {
        let want: usize = n.parse().map_err(|_| bad("expected ddimN".into()))?;
        for stride in 1..steps {
            if steps.div_ceil(stride) == want {
                return Ok((0..steps).step_by(stride).collect());
            }
        }
        return Err(bad(format!(
            "no integer stride gives {want} of {steps} steps"
        )));
    }
    let counts: Vec<usize> = section_counts
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("expected comma-separated step counts".into()))?;
    if counts.is_empty() || counts.contains(&0) {
        return Err(bad("every section needs at least one step".into()));
    }
    let (size_per, extra) = (steps / counts.len(), steps % counts.len());
    let mut start = 0;
    let mut all = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count {
            return Err(bad(format!(
                "cannot divide a section of {size} steps into {count}"
            )));
        }
        let stride = if count <= 1 {
            1.0
        } else {
            (size - 1) as f64 / (count - 1) as f64
        };
        let mut cur = 0.0f64;
        for _ in 0..count {
            all.push(start + cur.round_ties_even() as usize);
            cur += stride;
        }
        start += size;
    }
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

/// A diffusion process respaced to some of a base process's timesteps.
#[derive(Debug, Clone)]
pub struct SpacedDiffusion {
    /// Original timestep of each respaced index (what the model is given).
    pub timestep_map: Vec<usize>,
    /// Betas of the respaced process.
    pub betas: Vec<f64>,
    /// ᾱ per respaced index.
    pub alphas_cumprod: Vec<f64>,
    /// log of the posterior variance, its first entry replaced by the second (clipped).
    pub posterior_log_variance_clipped: Vec<f64>,
}

impl SpacedDiffusion {
    /// `base_betas` respaced to the timesteps `keep` (ascending).
    pub fn new(base_betas: &[f64], keep: &[usize]) -> Result<Self, SampleError> {
        if keep.is_empty() || keep.iter().any(|&t| t >= base_betas.len()) {
            return Err(SampleError::Invalid(format!(
                "respaced timesteps must lie in 0..{}",
                base_betas.len()
            )));
        }
        let mut ac = 1.0f64;
        let mut last = 1.0f64;
        let (mut map, mut betas, mut acs) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = keep.iter().peekable();
        for (i, b) in base_betas.iter().enumerate() {
            ac *= 1.0 - b;
            if next.peek() == Some(&&i) {
                next.next();
                betas.push(1.0 - ac / last);
                acs.push(ac);
                map.push(i);
                last = ac;
            }
        }
        let n = betas.len();
        let prev = |i: usize| if i == 0 { 1.0 } else { acs[i - 1] };
        let post: Vec<f64> = (0..n)
            .map(|i| betas[i] * (1.0 - prev(i)) / (1.0 - acs[i]))
            .collect();
        let clipped = (0..n)
            .map(|i| if i == 0 && n > 1 { post[1] } else { post[i] }.ln())
            .collect();
        Ok(SpacedDiffusion {
            timestep_map: map,
            betas,
            alphas_cumprod: acs,
            posterior_log_variance_clipped: clipped,
        })
    }

    /// Steps of the respaced process.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Whether it has no steps.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The log-variance of p(x_{i−1} | x_i) for a learned-range output `v` ∈ [−1, 1]:
    /// `frac·log β_i + (1 − frac)·log β̃_i` with `frac = (v + 1)/2`.
    pub fn learned_range_log_variance(&self, i: usize, v: f64) -> f64 {
        let frac = (v + 1.0) / 2.0;
        frac * self.betas[i].ln() + (1.0 - frac) * self.posterior_log_variance_clipped[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_matches_guided_diffusion() {
        // guided-diffusion: space_timesteps(1000, "10") and "ddim10", and sections.
        assert_eq!(
            space_timesteps(1000, "10").unwrap(),
            [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
        );
        assert_eq!(
            space_timesteps(1000, "ddim10").unwrap(),
            (0..1000).step_by(100).collect::<Vec<_>>()
        );
        assert_eq!(space_timesteps(10, "2,3").unwrap(), [0, 4, 5, 7, 9]);
        assert!(space_timesteps(10, "20").is_err());
        assert!(space_timesteps(10, "x").is_err());
        let all = space_timesteps(1000, "250").unwrap();
        assert_eq!(all.len(), 250);
        assert_eq!((all[0], all[1], all[249]), (0, 4, 999));
    }

    #[test]
    fn the_full_spacing_is_the_base_process() {
        let base = named_betas("linear", 50).unwrap();
        let keep: Vec<usize> = (0..50).collect();
        let s = SpacedDiffusion::new(&base, &keep).unwrap();
        for (a, b) in s.betas.iter().zip(&base) {
            assert!((a - b).abs() < 1e-12);
        }
        // frac = 1 gives β, frac = 0 the clipped posterior variance.
        assert!((s.learned_range_log_variance(7, 1.0) - base[7].ln()).abs() < 1e-12);
        let v0 = s.learned_range_log_variance(7, -1.0);
        assert!((v0 - s.posterior_log_variance_clipped[7]).abs() < 1e-12);
    }
}
