//! A temporal low-pass filter over a video latent's frames: y = Re IFFT_f(H(f)·FFT_f(x)) for each
//! channel and pixel, with H a Butterworth or Gaussian response in normalised temporal frequency
//! (0 at the frames' mean, 1 at the fastest alternation the frames can hold).
//!
//! H is real and even, so the filter is a real circular convolution along the frames: one F×F
//! matrix, applied in f64.

use candle_core::{DType, Tensor};

use crate::dct::along;
use crate::SampleError;

/// The response of the temporal filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TemporalFilter {
    /// 1 / (1 + (f / cutoff)^(2·order)).
    Butterworth {
        /// The order n.
        order: f64,
    },
    /// exp(−f² / (2·cutoff²)).
    Gaussian,
}

impl TemporalFilter {
    /// `butterworth` (with `order`) or `gaussian`.
    pub fn parse(name: &str, order: f64) -> Result<Self, SampleError> {
        match name {
            "butterworth" => Ok(TemporalFilter::Butterworth { order }),
            "gaussian" => Ok(TemporalFilter::Gaussian),
            other => Err(SampleError::Invalid(format!(
                "unknown temporal filter {other:?}: use butterworth or gaussian"
            ))),
        }
    }
}

/// H at each FFT bin k of `frames` frames (unshifted order), f_k = 2·min(k, F−k)/F.
pub fn response(frames: usize, kind: TemporalFilter, cutoff: f64) -> Result<Vec<f64>, SampleError> {
    if !(cutoff.is_finite() && cutoff > 0.0) {
        return Err(SampleError::Invalid(format!(
            "the temporal cutoff must be a positive frequency (1 = the frame rate's Nyquist), got {cutoff}"
        )));
    }
    if let TemporalFilter::Butterworth { order } = kind {
        if !(order.is_finite() && order > 0.0) {
            return Err(SampleError::Invalid(format!(
                "the Butterworth order must be positive, got {order}"
            )));
        }
    }
    Ok((0..frames)
        .map(|k| {
            let f = 2.0 * k.min(frames - k) as f64 / frames as f64;
            match kind {
                TemporalFilter::Butterworth { order } => {
                    1.0 / (1.0 + (f / cutoff).powf(2.0 * order))
                }
                TemporalFilter::Gaussian => (-f * f / (2.0 * cutoff * cutoff)).exp(),
            }
        })
        .collect())
}

/// `x` low-passed along axis `axis` (the frames), returned in `x`'s dtype.
pub fn low_pass(
    x: &Tensor,
    axis: usize,
    kind: TemporalFilter,
    cutoff: f64,
) -> Result<Tensor, SampleError> {
    let f = x.dim(axis)?;
    let h = response(f, kind, cutoff)?;
    // M[k, j] = (1/F) Σ_m H(m) cos(2π m (k − j) / F).
    let mut m = vec![0f64; f * f];
    for k in 0..f {
        for j in 0..f {
            let d = (k + f - j) % f;
            m[k * f + j] = h
                .iter()
                .enumerate()
                .map(|(b, &hb)| {
                    let a = 2.0 * std::f64::consts::PI * ((b * d) % f) as f64 / f as f64;
                    hb * a.cos()
                })
                .sum::<f64>()
                / f as f64;
        }
    }
    let m = Tensor::from_vec(m, (f, f), x.device())?;
    Ok(along(&x.to_dtype(DType::F64)?, axis, &m)?.to_dtype(x.dtype())?)
}
