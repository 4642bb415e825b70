//! DeepCache (Ma et al., 2024, as the `DeepCache` package's `DeepCacheSDHelper` runs it), built
//! on the UNet's stages. A refresh step runs the whole network and keeps the main-path input of
//! the up layer where the cached branch re-enters; the steps in between run only the shallow
//! part: the down path up to the branch, then the up path from that layer on, fed with the
//! cached deep feature.

use candle_core::Tensor;

use super::unet::{Cond, Extras, Layer, Stop, UNet};
use crate::{ModelError, Result};

/// Where branch `branch` re-enters the up path: (up block, layer). Branches are numbered as the
/// DeepCache package numbers them: block `branch / 3`, layer `branch % 3`.
pub fn entry(unet: &UNet, branch: usize) -> Result<(usize, usize)> {
    let (block, layer) = (branch / 3, branch % 3);
    let down = unet.down();
    let n = down.len();
    if block >= n || layer > down[block].layers.len() {
        return Err(ModelError::invalid(format!(
            "cache_branch_id {branch}: this UNet has {n} blocks of up to {} layers",
            down.iter().map(|d| d.layers.len()).max().unwrap_or(0)
        )));
    }
    let u = n - 1 - block;
    let layers = unet.up()[u].layers.len();
    Ok((u, layers.saturating_sub(1 + layer)))
}

/// ResNet and transformer modules a retrieval step runs for `branch`, and how many the full
/// network has (the skip rule of the DeepCache package).
pub fn modules(unet: &UNet, branch: usize) -> Result<(usize, usize)> {
    let (entry_u, entry_j) = entry(unet, branch)?;
    let (block, layer) = (branch / 3, branch % 3);
    let count = |l: &Layer| 1 + usize::from(l.attention.is_some());
    let mut total = 0;
    let mut run = 0;
    for (k, d) in unet.down().iter().enumerate() {
        for (j, l) in d.layers.iter().enumerate() {
            total += count(l);
            if k < block || (k == block && j < layer) {
                run += count(l);
            }
        }
    }
    if let Some(m) = unet.mid() {
        total += 1 + 2 * m.layers.len();
    }
    for (u, b) in unet.up().iter().enumerate() {
        for (j, l) in b.layers.iter().enumerate() {
            total += count(l);
            if u > entry_u || (u == entry_u && j >= entry_j) {
                run += count(l);
            }
        }
    }
    Ok((run, total))
}

/// One DeepCache step. On a refresh step (`cache` empty, for another batch size, or `refresh`)
/// the whole network runs and `cache` receives the deep feature; otherwise only the shallow
/// part runs. ControlNet residuals in `extras` are added to the skips each step computes (the
/// mid block's belongs to the cached part).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    unet: &UNet,
    x: &Tensor,
    t: f64,
    ctx: &Tensor,
    extras: &Extras,
    branch: usize,
    cache: &mut Option<Tensor>,
    refresh: bool,
) -> Result<Tensor> {
    unet.check_input(x)?;
    let at = entry(unet, branch)?;
    let b = x.dim(0)?;
    let temb = unet.time_embedding(t, b, extras.added, x.device())?;
    let h = unet.conv_in(x)?;
    let c = Cond::new(&temb, ctx, extras);
    let cached = cache
        .as_ref()
        .filter(|c| !refresh && c.dim(0).ok() == Some(b));
    let out = match cached {
        None => {
            let (h, mut skips) = unet.down_path(&h, &c, None)?;
            let h = unet.mid_block(&h, &c)?;
            let (h, tapped) = unet.up_path(&h, &mut skips, &c, (0, 0), Some(at))?;
            *cache = tapped;
            h
        }
        Some(feature) => {
            let stop = Stop {
                block: branch / 3,
                layer: branch % 3,
            };
            let (_, mut skips) = unet.down_path(&h, &c, Some(stop))?;
            unet.up_path(feature, &mut skips, &c, at, None)?.0
        }
    };
    Ok(unet.head(&out)?)
}

/// DeepCache's non-uniform refresh steps (`sample_from_quad_center` of the DeepCache
/// pipelines): n = ⌈steps / interval⌉ full steps, denser around step `center`. The reference
/// evaluates x^p on a linspace that starts at the complex (−center)^(1/p) and truncates the
/// real parts; this reproduces that arithmetic. Starting from `pow`, the exponent drops by 0.02
/// until the set has n steps; `None` when no exponent above 1 works.
pub fn quad_center_schedule(
    steps: usize,
    interval: usize,
    center: f64,
    pow: f64,
) -> Option<Vec<usize>> {
    let n = steps.div_ceil(interval.max(1));
    let mut p = pow;
    while p > 1.0 {
        // Endpoints: (−c)^(1/p) is complex (principal value); (steps − c)^(1/p) is real.
        let (r0, t0) = (center.powf(1.0 / p), std::f64::consts::PI / p);
        let start = (r0 * t0.cos(), r0 * t0.sin());
        let end_base = steps as f64 - center;
        let end = if end_base >= 0.0 {
            (end_base.powf(1.0 / p), 0.0)
        } else {
            let r = (-end_base).powf(1.0 / p);
            (r * t0.cos(), r * t0.sin())
        };
        let count = n + 1;
        let step = (
            (end.0 - start.0) / (count - 1) as f64,
            (end.1 - start.1) / (count - 1) as f64,
        );
        let mut values: Vec<i64> = (0..count)
            .map(|k| {
                let z = if k == count - 1 {
                    end
                } else {
                    (start.0 + k as f64 * step.0, start.1 + k as f64 * step.1)
                };
                // z^p = exp(p·log z), then numpy's int32 cast of the real part.
                let (re, im) = z;
                let (r, theta) = ((re * re + im * im).sqrt(), im.atan2(re));
                let w = r.powf(p) * (p * theta).cos();
                w.trunc() as i64
            })
            .collect();
        values.sort_unstable();
        values.dedup();
        let mut out = vec![0usize];
        if values.len() > 2 {
            out.extend(
                values[1..values.len() - 1]
                    .iter()
                    .map(|v| (*v as f64 + center) as usize),
            );
        }
        if out.len() == n {
            out.sort_unstable();
            return Some(out);
        }
        p -= 0.02;
    }
    None
}
