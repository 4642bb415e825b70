//! DAAM (Tang et al., 2023): per-word heat maps from the UNet's cross-attention, aggregated as
//! `daam` does: per (layer, head) the conditional probabilities are summed over steps; each
//! token's map is upsampled bicubically to the latent size and clamped at 0; the maps are
//! averaged over layers and heads. Layers whose maps are 1/8 of the latent side are skipped.

use std::collections::BTreeMap;

/// Bicubic resize of one `h`×`w` map to `oh`×`ow`, as torch's `interpolate(mode="bicubic",
/// align_corners=False)` (A = −0.75, border pixels repeated).
pub fn bicubic(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let taps = |out: usize, inn: usize| -> Vec<([usize; 4], [f32; 4])> {
        let scale = inn as f32 / out as f32;
        (0..out)
            .map(|d| {
                let real = scale * (d as f32 + 0.5) - 0.5;
                let base = real.floor();
                let t = real - base;
                let idx = |k: isize| (base as isize + k).clamp(0, inn as isize - 1) as usize;
                (
                    [idx(-1), idx(0), idx(1), idx(2)],
                    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)],
                )
            })
            .collect()
    };
    let (ty, tx) = (taps(oh, h), taps(ow, w));
    let mut out = vec![0f32; oh * ow];
    for (oy, (iy, wy)) in ty.iter().enumerate() {
        for (ox, (ix, wx)) in tx.iter().enumerate() {
            let mut acc = 0f32;
            for (a, &yy) in iy.iter().enumerate() {
                let mut row = 0f32;
                for (b, &xx) in ix.iter().enumerate() {
                    row += src[yy * w + xx] * wx[b];
                }
                acc += row * wy[a];
            }
            out[oy * ow + ox] = acc;
        }
    }
    out
}

/// Cross-attention summed over steps, per layer.
#[derive(Default)]
pub struct Accumulator {
    /// Latent height and width.
    pub latent: (usize, usize),
    /// Per layer: map side (h, w), heads, tokens, and heads × hw × tokens sums.
    layers: BTreeMap<String, (usize, usize, usize, usize, Vec<f32>)>,
    /// Skip maps whose side is the latent's divided by this (DAAM: 8).
    pub skip_factor: usize,
}

impl Accumulator {
    /// A fresh accumulator for a latent of `h`×`w`.
    pub fn new(h: usize, w: usize, skip_factor: usize) -> Self {
        Self {
            latent: (h, w),
            layers: BTreeMap::new(),
            skip_factor,
        }
    }

    /// Adds one step's probabilities of layer `name`: heads × (hw) × tokens, row-major.
    pub fn add(&mut self, name: &str, heads: usize, hw: usize, tokens: usize, probs: &[f32]) {
        let (lh, lw) = self.latent;
        // The map's downscale factor from its size, as DAAM does.
        let f = ((lh * lw) as f64 / hw.max(1) as f64).sqrt().round() as usize;
        if f == 0 || lh % f != 0 || lw % f != 0 || (lh / f) * (lw / f) != hw {
            return;
        }
        if self.skip_factor > 0 && f == self.skip_factor {
            return;
        }
        let entry = self.layers.entry(name.to_owned()).or_insert_with(|| {
            (
                lh / f,
                lw / f,
                heads,
                tokens,
                vec![0f32; heads * hw * tokens],
            )
        });
        if entry.4.len() != probs.len() {
            return;
        }
        entry.4.iter_mut().zip(probs).for_each(|(s, p)| *s += p);
    }

    /// Number of layers recorded.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Global maps: tokens × latent h × latent w.
    pub fn global_maps(&self) -> (usize, Vec<f32>) {
        let (lh, lw) = self.latent;
        let tokens = self.layers.values().map(|l| l.3).max().unwrap_or(0);
        let mut out = vec![0f32; tokens * lh * lw];
        let mut count = 0usize;
        for (h, w, heads, toks, sums) in self.layers.values() {
            let hw = h * w;
            for head in 0..*heads {
                for k in 0..*toks {
                    let map: Vec<f32> = (0..hw).map(|p| sums[(head * hw + p) * toks + k]).collect();
                    let up = bicubic(&map, *h, *w, lh, lw);
                    for (o, v) in out[k * lh * lw..(k + 1) * lh * lw].iter_mut().zip(up) {
                        *o += v.max(0.0);
                    }
                }
                count += 1;
            }
        }
        if count > 0 {
            out.iter_mut().for_each(|v| *v /= count as f32);
        }
        (tokens, out)
    }
}

/// Positions of `word` (its token ids) in `prompt` (token ids without BOS), each shifted by one
/// for the start token, over every occurrence.
pub fn word_positions(prompt: &[u32], word: &[u32]) -> Vec<usize> {
    if word.is_empty() || word.len() > prompt.len() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for start in 0..=prompt.len() - word.len() {
        if prompt[start..start + word.len()] == *word {
            out.extend((start..start + word.len()).map(|i| i + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_layer_one_head_without_upsampling_sums_to_one_per_pixel() {
        let (hw, tokens) = (4 * 6, 5);
        let probs: Vec<f32> = (0..hw)
            .flat_map(|p| {
                let row: Vec<f32> = (0..tokens)
                    .map(|k| ((p * 7 + k * 3) % 5 + 1) as f32)
                    .collect();
                let s: f32 = row.iter().sum();
                row.into_iter().map(move |v| v / s)
            })
            .collect();
        let mut acc = Accumulator::new(4, 6, 8);
        acc.add("l", 1, hw, tokens, &probs);
        let (t, maps) = acc.global_maps();
        assert_eq!(t, tokens);
        for p in 0..hw {
            let s: f32 = (0..tokens).map(|k| maps[k * hw + p]).sum();
            assert!((s - 1.0).abs() < 1e-5, "{s}");
        }
    }

    #[test]
    fn words_map_to_their_positions_after_the_start_token() {
        assert_eq!(
            word_positions(&[320, 2368, 539, 320, 2368], &[2368]),
            vec![2, 5]
        );
        assert_eq!(word_positions(&[1, 2, 3], &[2, 3]), vec![2, 3]);
        assert!(word_positions(&[1, 2], &[9]).is_empty());
    }
}
