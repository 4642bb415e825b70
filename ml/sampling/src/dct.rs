//! The orthonormal DCT-II over a video latent's last three axes (frames, height, width), and
//! Cinemo's DCT noise initialisation (DCTInit): the initial noise of an image-to-video run
//! keeps the low spatial frequencies of the noised image latent and takes the rest from the
//! noise.
//!
//! Each axis is a product with its n×n DCT matrix, in f64 (Cinemo computes in f64 too); the
//! latents are small enough that this costs less than one denoiser step.

use candle_core::{DType, Device, Tensor};

use crate::SampleError;

/// The orthonormal DCT-II matrix: row k, column j = s_k·cos(π(2j + 1)k / 2n), s_0 = √(1/n),
/// s_k = √(2/n).
fn dct_matrix(n: usize, device: &Device) -> Result<Tensor, SampleError> {
    let mut m = Vec::with_capacity(n * n);
    for k in 0..n {
        let s = if k == 0 {
            (1.0 / n as f64).sqrt()
        } else {
            (2.0 / n as f64).sqrt()
        };
        for j in 0..n {
            let angle = std::f64::consts::PI * (2 * j + 1) as f64 * k as f64 / (2 * n) as f64;
            m.push(s * angle.cos());
        }
    }
    Ok(Tensor::from_vec(m, (n, n), device)?)
}

/// `x` (…×A×…) multiplied along axis `axis` by `m` (A×A): y[…, k, …] = Σ_j m[k, j]·x[…, j, …].
pub(crate) fn along(x: &Tensor, axis: usize, m: &Tensor) -> Result<Tensor, SampleError> {
    let last = x.rank() - 1;
    // The axis goes last and contiguous (a transposed left side times a broadcast right side
    // is wrong in candle 0.11's CPU matmul), then x·mᵀ.
    let moved = x.transpose(axis, last)?.contiguous()?;
    let y = moved.broadcast_matmul(&m.t()?.contiguous()?)?;
    Ok(y.transpose(axis, last)?.contiguous()?)
}

fn transform(x: &Tensor, inverse: bool) -> Result<Tensor, SampleError> {
    let r = x.rank();
    if r < 3 {
        return Err(SampleError::Invalid(format!(
            "a 3-D DCT needs frames, height and width: got a tensor of shape {:?}",
            x.dims()
        )));
    }
    let dtype = x.dtype();
    let mut y = x.to_dtype(DType::F64)?;
    for axis in r - 3..r {
        let m = dct_matrix(y.dim(axis)?, x.device())?;
        let m = if inverse { m.t()?.contiguous()? } else { m };
        y = along(&y, axis, &m)?;
    }
    Ok(y.to_dtype(dtype)?)
}

/// The orthonormal DCT-II over the last three axes (`torch_dct.dct_3d(x, 'ortho')`, scipy's
/// `dctn(type=2, norm='ortho')`), in f64, returned in `x`'s dtype.
pub fn dct_3d(x: &Tensor) -> Result<Tensor, SampleError> {
    transform(x, false)
}

/// The inverse of [`dct_3d`] (the orthonormal DCT-III).
pub fn idct_3d(x: &Tensor) -> Result<Tensor, SampleError> {
    transform(x, true)
}

/// Cinemo's DCTInit: the image latent (B×C×1×H×W, or B×C×H×W) repeated over the noise's
/// frames (B×C×F×H×W), noised to ᾱ (`alpha_bar`, ᾱ_975 in Cinemo: z_n = √ᾱ·z + √(1−ᾱ)·ε), and
/// mixed with the noise in DCT space: the low spatial frequencies [0, ⌊H·cutoff⌋) ×
/// [0, ⌊W·cutoff⌋), at every temporal frequency, from z_n, the rest from ε. cutoff 1 gives z_n,
/// 0 the noise. Returned in the noise's dtype.
pub fn dct_init(
    image_latent: &Tensor,
    noise: &Tensor,
    alpha_bar: f64,
    cutoff: f64,
) -> Result<Tensor, SampleError> {
    let (b, c, f, h, w) = noise.dims5()?;
    let image = match image_latent.rank() {
        4 => image_latent.unsqueeze(2)?,
        _ => image_latent.clone(),
    };
    if image.dims() != [b, c, 1, h, w] {
        return Err(SampleError::Invalid(format!(
            "DCTInit needs an image latent of {b}×{c}×1×{h}×{w} for the {b}×{c}×{f}×{h}×{w} noise, got {:?}",
            image_latent.dims()
        )));
    }
    if !(0.0..=1.0).contains(&alpha_bar) || !(0.0..=1.0).contains(&cutoff) {
        return Err(SampleError::Invalid(format!(
            "DCTInit needs ᾱ and the cutoff in [0, 1], got {alpha_bar} and {cutoff}"
        )));
    }
    let eps = noise.to_dtype(DType::F64)?;
    let repeated = image.to_dtype(DType::F64)?.broadcast_as((b, c, f, h, w))?;
    let noised = ((repeated * alpha_bar.sqrt())? + (&eps * (1.0 - alpha_bar).sqrt())?)?;
    let (cx, cy) = ((h as f64 * cutoff) as usize, (w as f64 * cutoff) as usize);
    let mut m = vec![0f64; h * w];
    for y in 0..cx {
        for x in 0..cy {
            m[y * w + x] = 1.0;
        }
    }
    let low = Tensor::from_vec(m, (1, 1, 1, h, w), noise.device())?;
    let high = low.affine(-1.0, 1.0)?;
    let mixed = (dct_3d(&noised)?.broadcast_mul(&low)? + dct_3d(&eps)?.broadcast_mul(&high)?)?;
    Ok(idct_3d(&mixed)?.to_dtype(noise.dtype())?)
}
