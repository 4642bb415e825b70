//! FreeInit's noise re-initialisation (Wu et al.; diffusers' `FreeInitMixin`): between
//! sampling passes, the re-noised result keeps its low spatio-temporal frequencies and takes
//! the high ones from fresh noise, through a low-pass filter over the FFT-shifted (frames,
//! height, width) spectrum.
//!
//! The 3-D DFT is a product with each axis' DFT matrix (real and imaginary parts), in f64.

use candle_core::{DType, Device, Tensor};

use crate::dct::along;
use crate::SampleError;

/// The shape of FreeInit's low-pass filter, over the centred spectrum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FilterKind {
    /// 1 / (1 + (d² / d_s²)^order).
    Butterworth {
        /// The order n (diffusers: 4).
        order: f64,
    },
    /// exp(−d² / (2 d_s²)).
    Gaussian,
    /// 1 where d² ≤ 2·d_s (diffusers' rule, as written there), else 0.
    Ideal,
    /// The FreeInit authors' box (`box_low_pass_filter`): 1 on a block of ±round(⌊F/2⌋·d_t)
    /// frames and ±round(⌊H/2⌋·d_s) rows and columns (the height's count for both, rounding
    /// half to even, as theirs) around the centre; d_s, d_t ≤ 1.
    Box,
}

impl FilterKind {
    /// `butterworth`, `gaussian` or `ideal` (the names diffusers' `free_init_method` takes), or
    /// `box`.
    pub fn parse(name: &str, order: f64) -> Result<Self, SampleError> {
        match name {
            "butterworth" => Ok(FilterKind::Butterworth { order }),
            "gaussian" => Ok(FilterKind::Gaussian),
            "ideal" => Ok(FilterKind::Ideal),
            "box" => Ok(FilterKind::Box),
            other => Err(SampleError::Invalid(format!(
                "unknown FreeInit filter {other:?}: use butterworth, gaussian, ideal or box"
            ))),
        }
    }
}

/// The F×H×W low-pass filter (f32, as diffusers makes it) with spatial and temporal stop
/// frequencies `d_s`, `d_t` (normalised, diffusers' default 0.25 each), over the FFT-shifted
/// spectrum: d² = ((d_s/d_t)(2f/F − 1))² + (2h/H − 1)² + (2w/W − 1)². A stop frequency of 0
/// gives the zero filter.
pub fn low_pass(
    frames: usize,
    height: usize,
    width: usize,
    kind: FilterKind,
    d_s: f64,
    d_t: f64,
    device: &Device,
) -> Result<Tensor, SampleError> {
    if !(d_s >= 0.0 && d_t >= 0.0 && d_s.is_finite() && d_t.is_finite()) {
        return Err(SampleError::Invalid(format!(
            "FreeInit's stop frequencies must be finite and not negative, got {d_s} and {d_t}"
        )));
    }
    let mut m = vec![0f32; frames * height * width];
    if kind == FilterKind::Box {
        if d_s > 1.0 || d_t > 1.0 {
            return Err(SampleError::Invalid(format!(
                "the box filter's stop frequencies must be at most 1, got {d_s} and {d_t}"
            )));
        }
        if d_s > 0.0 && d_t > 0.0 {
            let half = |n: usize, d: f64| ((n / 2) as f64 * d).round_ties_even() as usize;
            let (tf, ts) = (half(frames, d_t), half(height, d_s));
            let span = |n: usize, t: usize| (n / 2).saturating_sub(t)..(n / 2 + t).min(n);
            for f in span(frames, tf) {
                for h in span(height, ts) {
                    for w in span(width, ts) {
                        m[(f * height + h) * width + w] = 1.0;
                    }
                }
            }
        }
        return Ok(Tensor::from_vec(m, (frames, height, width), device)?);
    }
    if d_s > 0.0 && d_t > 0.0 {
        let centred = |i: usize, n: usize| 2.0 * i as f64 / n as f64 - 1.0;
        for f in 0..frames {
            for h in 0..height {
                for w in 0..width {
                    let d2 = ((d_s / d_t) * centred(f, frames)).powi(2)
                        + centred(h, height).powi(2)
                        + centred(w, width).powi(2);
                    let v = match kind {
                        FilterKind::Butterworth { order } => {
                            1.0 / (1.0 + (d2 / (d_s * d_s)).powf(order))
                        }
                        FilterKind::Gaussian => (-d2 / (2.0 * d_s * d_s)).exp(),
                        FilterKind::Ideal => f64::from(u8::from(d2 <= d_s * 2.0)),
                        FilterKind::Box => 0.0,
                    };
                    m[(f * height + h) * width + w] = v as f32;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (frames, height, width), device)?)
}

/// The DFT matrices' real and imaginary parts cos(2πjk/n), sin(2πjk/n).
fn dft(n: usize, device: &Device) -> Result<(Tensor, Tensor), SampleError> {
    let (mut c, mut s) = (Vec::with_capacity(n * n), Vec::with_capacity(n * n));
    for k in 0..n {
        for j in 0..n {
            // j·k mod n keeps the angle small, so large sizes lose no precision.
            let a = 2.0 * std::f64::consts::PI * ((j * k) % n) as f64 / n as f64;
            c.push(a.cos());
            s.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(c, (n, n), device)?,
        Tensor::from_vec(s, (n, n), device)?,
    ))
}

/// `filter` moved from the centred spectrum to the unshifted one (ifftshift over its axes).
fn unshift(filter: &Tensor) -> Result<Tensor, SampleError> {
    let mut t = filter.clone();
    for axis in 0..t.rank() {
        let n = t.dim(axis)?;
        let k = n / 2;
        if k > 0 {
            t = Tensor::cat(&[t.narrow(axis, k, n - k)?, t.narrow(axis, 0, k)?], axis)?;
        }
    }
    Ok(t)
}

/// `_apply_freq_filter`: Re IFFT₃(ishift(H ⊙ shift(FFT₃ x) + (1 − H) ⊙ shift(FFT₃ noise)))
/// over the last three axes of `x` and `noise` (one shape, …×F×H×W), with the F×H×W
/// `filter` H on the centred spectrum. In f64, returned in `x`'s dtype.
pub fn mix(x: &Tensor, noise: &Tensor, filter: &Tensor) -> Result<Tensor, SampleError> {
    let r = x.rank();
    if r < 3 || x.dims() != noise.dims() || filter.dims() != &x.dims()[r - 3..] {
        return Err(SampleError::Invalid(format!(
            "FreeInit mixes two latents of one shape (…×F×H×W) through an F×H×W filter: got {:?}, {:?} and {:?}",
            x.dims(),
            noise.dims(),
            filter.dims()
        )));
    }
    let eps = noise.to_dtype(DType::F64)?;
    // Linear in the spectrum: the mix is noise + Re IFFT(H ⊙ FFT(x − noise)).
    let mut re = (x.to_dtype(DType::F64)? - &eps)?;
    let mut im = re.zeros_like()?;
    let mut mats = Vec::with_capacity(3);
    for axis in r - 3..r {
        let (c, s) = dft(re.dim(axis)?, x.device())?;
        // (re + i·im)·(c − i·s)
        let (nr, ni) = (
            (along(&re, axis, &c)? + along(&im, axis, &s)?)?,
            (along(&im, axis, &c)? - along(&re, axis, &s)?)?,
        );
        (re, im) = (nr, ni);
        mats.push((axis, c, s));
    }
    let h = unshift(&filter.to_dtype(DType::F64)?)?;
    re = re.broadcast_mul(&h)?;
    im = im.broadcast_mul(&h)?;
    for (axis, c, s) in mats {
        let n = re.dim(axis)? as f64;
        // (re + i·im)·(c + i·s) / n
        let (nr, ni) = (
            ((along(&re, axis, &c)? - along(&im, axis, &s)?)? / n)?,
            ((along(&im, axis, &c)? + along(&re, axis, &s)?)? / n)?,
        );
        (re, im) = (nr, ni);
    }
    Ok((eps + re)?.to_dtype(x.dtype())?)
}

/// FreeInit's settings, as diffusers' `enable_free_init` takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreeInit {
    /// Sampling passes (1: FreeInit off; diffusers' default 3).
    pub iterations: usize,
    /// The low-pass filter.
    pub kind: FilterKind,
    /// Spatial stop frequency.
    pub d_s: f64,
    /// Temporal stop frequency.
    pub d_t: f64,
    /// Coarse-to-fine: pass k of n takes ⌊steps·(k+1)/n⌋ steps (at least 1).
    pub fast: bool,
}

impl FreeInit {
    /// The steps of pass `k` for a run of `steps`.
    pub fn steps(&self, k: usize, steps: usize) -> usize {
        if self.fast {
            ((steps as f64 / self.iterations as f64 * (k + 1) as f64) as usize).max(1)
        } else {
            steps
        }
    }

    /// The next pass's x_T: the last pass's result `z0` re-noised to ᾱ (`alpha_bar`, at the
    /// last training timestep) with the first pass's x_T `initial` (already scaled by the
    /// scheduler's initial σ, as diffusers keeps it), its low frequencies kept and the high
    /// ones from `fresh` noise.
    pub fn reinit(
        &self,
        z0: &Tensor,
        initial: &Tensor,
        fresh: &Tensor,
        alpha_bar: f64,
    ) -> Result<Tensor, SampleError> {
        let (f, h, w) = match z0.dims() {
            [_, _, f, h, w] => (*f, *h, *w),
            other => {
                return Err(SampleError::Invalid(format!(
                    "FreeInit needs video latents N×C×F×H×W, got {other:?}"
                )))
            }
        };
        let filter = low_pass(f, h, w, self.kind, self.d_s, self.d_t, z0.device())?;
        // add_noise as diffusers does it: the square roots of ᾱ taken in f32.
        let a = (alpha_bar as f32).sqrt() as f64;
        let s = (1.0f32 - alpha_bar as f32).sqrt() as f64;
        let zt = ((z0 * a)? + (initial * s)?)?;
        mix(&zt, fresh, &filter)
    }
}
