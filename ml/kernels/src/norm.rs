//! Group normalisation, alone or followed by SiLU (the pair that opens every ResNet block).
//!
//! On the CPU (f32 or bf16, no gradients) one fused pass per group: the statistics in two
//! reads of the group (a group of an N×C×… tensor is one contiguous run), then normalise,
//! scale, shift and SiLU in one write. candle's version is a chain of whole-tensor operations,
//! each allocating its result. Other cases go to candle.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use half::bf16;
use rayon::prelude::*;

/// `GroupNorm` with the weights and names of `torch.nn.GroupNorm` (`weight`, `bias`).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    groups: usize,
    eps: f64,
    /// γ and β in f32 for the fused pass.
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl GroupNorm {
    /// Loads a norm over `channels` channels in `groups` groups.
    pub fn new(
        groups: usize,
        channels: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("{channels} channels do not split into {groups} groups");
        }
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let f32s = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        let (scale, shift) = (f32s(&weight)?, f32s(&bias)?);
        Ok(Self {
            inner: candle_nn::GroupNorm::new(weight, bias, channels, groups, eps)?,
            groups,
            eps,
            scale,
            shift,
        })
    }

    /// `silu(norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.takes_fused(x) {
            return self.fused(x, true);
        }
        candle_nn::ops::silu(&self.inner.forward(x)?)
    }

    fn takes_fused(&self, x: &Tensor) -> bool {
        matches!(x.device(), Device::Cpu)
            && matches!(x.dtype(), DType::F32 | DType::BF16)
            && !x.track_op()
            && x.rank() >= 2
            && x.dims()[1] == self.scale.len()
    }

    fn fused(&self, x: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let channels = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let run = per_group * spatial;
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("the fused group norm runs on the CPU");
        };
        let total = dims.iter().product::<usize>();
        let start = layout.start_offset();
        let group = |i: usize, src: &[f32], out: &mut [f32]| {
            let g = i % self.groups;
            let channels = g * per_group..(g + 1) * per_group;
            normalize(
                src,
                out,
                &self.scale[channels.clone()],
                &self.shift[channels],
                spatial,
                self.eps,
            );
            if silu {
                crate::vmath::silu(out);
            }
        };
        let out = match x.dtype() {
            DType::F32 => {
                let data = &cpu.as_slice::<f32>()?[start..start + total];
                let mut out = vec![0f32; total];
                if run > 0 {
                    out.par_chunks_mut(run)
                        .zip(data.par_chunks(run))
                        .enumerate()
                        .for_each(|(i, (o, s))| group(i, s, o));
                }
                Tensor::from_vec(out, dims, x.device())?
            }
            _ => {
                let data = &cpu.as_slice::<bf16>()?[start..start + total];
                let mut out = vec![bf16::ZERO; total];
                if run > 0 {
                    out.par_chunks_mut(run)
                        .zip(data.par_chunks(run))
                        .enumerate()
                        .for_each(|(i, (o, s))| {
                            let wide: Vec<f32> = s.iter().map(|v| v.to_f32()).collect();
                            let mut res = vec![0f32; wide.len()];
                            group(i, &wide, &mut res);
                            for (o, v) in o.iter_mut().zip(&res) {
                                *o = bf16::from_f32(*v);
                            }
                        });
                }
                Tensor::from_vec(out, dims, x.device())?
            }
        };
        Ok(out)
    }
}

/// One group: `src` is `scale.len()` channels of `spatial` values; `out` gets
/// `(x − mean)/√(var + eps)·γ + β` per channel (statistics accumulated per lane, summed in f64).
fn normalize(src: &[f32], out: &mut [f32], scale: &[f32], shift: &[f32], spatial: usize, eps: f64) {
    let n = src.len() as f64;
    let mean = lane_sum(src, |v| v) / n;
    let m = mean as f32;
    let var = lane_sum(src, |v| (v - m) * (v - m)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (c, (o, s)) in out.chunks_mut(spatial).zip(src.chunks(spatial)).enumerate() {
        // In f64, rounded once.
        let a = scale[c] as f64 * inv;
        let b = shift[c] as f64;
        for (o, s) in o.iter_mut().zip(s) {
            *o = ((*s as f64 - mean) * a + b) as f32;
        }
    }
}

/// Σ f(x) over `xs` in 16 f32 lanes (vectorised), the lanes summed in f64.
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += f(*v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|v| f(*v) as f64).sum();
    lanes.iter().map(|v| *v as f64).sum::<f64>() + tail
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.takes_fused(x) {
            return self.fused(x, false);
        }
        self.inner.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_pass_equals_candles_group_norm_with_and_without_silu() {
        let dev = Device::Cpu;
        let weights: std::collections::HashMap<String, Tensor> = [
            ("weight", Tensor::randn(0f32, 1.0, 12, &dev).unwrap()),
            ("bias", Tensor::randn(0f32, 1.0, 12, &dev).unwrap()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
        let norm = GroupNorm::new(4, 12, 1e-5, vb).unwrap();
        // Offset and scaled so the mean matters; 3-D and 4-D inputs.
        for shape in [vec![2, 12, 7, 5], vec![3, 12, 19]] {
            let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)
                .and_then(|t| t.affine(3.0, 5.0))
                .unwrap();
            let max = |t: Tensor| {
                t.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let plain = norm.inner.forward(&x).unwrap();
            assert!(max((norm.forward(&x).unwrap() - &plain).unwrap()) < 1e-5);
            let silu = candle_nn::ops::silu(&plain).unwrap();
            assert!(max((norm.forward_silu(&x).unwrap() - &silu).unwrap()) < 1e-5);
            // bf16 in, bf16 out, the same values up to one rounding.
            let xh = x.to_dtype(DType::BF16).unwrap();
            let got = norm.forward_silu(&xh).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let want = candle_nn::ops::silu(
                &norm
                    .inner
                    .forward(&xh.to_dtype(DType::F32).unwrap())
                    .unwrap(),
            )
            .unwrap();
            let d = max((got.to_dtype(DType::F32).unwrap() - &want).unwrap()) / max(want);
            assert!(d < 8e-3, "{d}");
        }
    }
}
