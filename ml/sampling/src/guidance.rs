//! Classifier-free guidance: the batch layout `[negative; positive]`, the combination of the
//! two halves, and conditionings of different token counts.

use candle_core::Tensor;

use crate::SampleError;

/// `u + g·(c − u)` for a prediction of the doubled batch `[u; c]`.
pub fn combine(pred: &Tensor, scale: f64) -> Result<Tensor, SampleError> {
    let n = pred.dim(0)? / 2;
    let u = pred.narrow(0, 0, n)?;
    let c = pred.narrow(0, n, n)?;
    Ok((&u + (c - &u)?.affine(scale, 0.0)?)?)
}

/// Conditionings with different token counts (prompts of different lengths in 77-token
/// windows) are repeated along the tokens to their least common multiple, as ComfyUI does.
/// Widths must agree.
pub fn match_tokens(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor), SampleError> {
    let (da, db) = (a.dims(), b.dims());
    if da.len() != 3 || db.len() != 3 || da[2] != db[2] {
        if da.len() == db.len() && da[1..] == db[1..] {
            return Ok((a.clone(), b.clone()));
        }
        return Err(SampleError::Invalid(format!(
            "negative conditioning {da:?} and positive {db:?} differ"
        )));
    }
    let (la, lb) = (da[1], db[1]);
    if la == lb || la == 0 || lb == 0 {
        return Ok((a.clone(), b.clone()));
    }
    let gcd = |mut x: usize, mut y: usize| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    let lcm = la / gcd(la, lb) * lb;
    Ok((a.repeat((1, lcm / la, 1))?, b.repeat((1, lcm / lb, 1))?))
}

/// Token features N×L×D with their mask N×L.
pub type Masked = (Tensor, Tensor);

/// Masked conditionings (token features N×L×D with a mask N×L, 1 = token) of different lengths
/// are padded at the end with zeros, mask 0, to the longer one, as the reference pipelines do
/// for T5 and LLM features; their widths must agree. A missing mask means every token counts.
pub fn pad_masked(
    a: (&Tensor, Option<&Tensor>),
    b: (&Tensor, Option<&Tensor>),
) -> Result<(Masked, Masked), SampleError> {
    let (da, db) = (a.0.dims(), b.0.dims());
    if da.len() != 3 || db.len() != 3 || da[2] != db[2] {
        return Err(SampleError::Invalid(format!(
            "negative conditioning {da:?} and positive {db:?} differ (masked conditionings are N×L×D)"
        )));
    }
    let l = da[1].max(db[1]);
    let pad = |(t, m): (&Tensor, Option<&Tensor>)| -> Result<Masked, SampleError> {
        let (n, have, d) = t.dims3()?;
        let mask = match m {
            Some(m) if m.dims() == [n, have] => m.to_dtype(t.dtype())?,
            Some(m) => {
                return Err(SampleError::Invalid(format!(
                    "a mask of shape {:?} for a conditioning of {n}×{have} tokens",
                    m.dims()
                )))
            }
            None => Tensor::ones((n, have), t.dtype(), t.device())?,
        };
        if have == l {
            return Ok((t.clone(), mask));
        }
        let zeros = Tensor::zeros((n, l - have, d), t.dtype(), t.device())?;
        let mzeros = Tensor::zeros((n, l - have), t.dtype(), t.device())?;
        Ok((
            Tensor::cat(&[t, &zeros], 1)?,
            Tensor::cat(&[&mask, &mzeros], 1)?,
        ))
    };
    Ok((pad(a)?, pad(b)?))
}

/// `t` repeated along the batch until it has `n` items (a batch of 1 broadcasts).
pub fn batch_to(t: &Tensor, n: usize, what: &str) -> Result<Tensor, SampleError> {
    let have = t.dims().first().copied().unwrap_or(0);
    if have == n {
        return Ok(t.clone());
    }
    if have != 1 {
        return Err(SampleError::Invalid(format!(
            "{what} has batch {have}, the latent {n}"
        )));
    }
    let mut reps = vec![1usize; t.rank()];
    reps[0] = n;
    Ok(t.repeat(reps.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn conditionings_of_different_lengths_repeat_to_their_lcm() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[[1f32], [2.0]]], &dev).unwrap(); // 2 tokens
        let b = Tensor::new(&[[[3f32], [4.0], [5.0]]], &dev).unwrap(); // 3 tokens
        let (a, b) = match_tokens(&a, &b).unwrap();
        assert_eq!(a.dims(), &[1, 6, 1]);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&a), vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        assert_eq!(flat(&b), vec![3.0, 4.0, 5.0, 3.0, 4.0, 5.0]);
        let c = Tensor::zeros((1, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let d = Tensor::zeros((1, 1, 3), candle_core::DType::F32, &dev).unwrap();
        assert!(
            match_tokens(&c, &d).is_err(),
            "different widths are an error"
        );
    }

    #[test]
    fn masked_conditionings_pad_with_zeros() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[[1f32], [2.0]]], &dev).unwrap();
        let b = Tensor::new(&[[[3f32], [4.0], [5.0]]], &dev).unwrap();
        let ((a, ma), (b, mb)) = pad_masked((&a, None), (&b, None)).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&a), vec![1.0, 2.0, 0.0]);
        assert_eq!(flat(&ma), vec![1.0, 1.0, 0.0]);
        assert_eq!(flat(&b), vec![3.0, 4.0, 5.0]);
        assert_eq!(flat(&mb), vec![1.0, 1.0, 1.0]);
        let bad = Tensor::ones((1, 5), candle_core::DType::F32, &dev).unwrap();
        assert!(pad_masked((&a, Some(&bad)), (&b, None)).is_err());
    }

    #[test]
    fn guidance_combines_the_halves() {
        let dev = Device::Cpu;
        let p = Tensor::new(&[[1f32, 2.0], [3.0, 6.0]], &dev).unwrap();
        let g = combine(&p, 2.0).unwrap();
        assert_eq!(g.to_vec2::<f32>().unwrap(), vec![vec![5.0, 10.0]]);
    }
}

/// diffusers' `rescale_noise_cfg` (Lin et al. 2024, §3.4): the guided prediction rescaled to the
/// per-sample standard deviation of the positive one (unbiased, over all but the batch axis),
/// mixed with the unscaled one by `phi` (0: plain guidance, 1: fully rescaled).
pub fn rescale(guided: &Tensor, positive: &Tensor, phi: f64) -> Result<Tensor, SampleError> {
    let std = |t: &Tensor| -> Result<Tensor, SampleError> {
        let n = t.dim(0)?;
        let flat = t.flatten_from(1)?;
        let count = flat.dim(1)?;
        if count < 2 {
            return Err(SampleError::Invalid(
                "guidance rescale needs at least two values per sample".into(),
            ));
        }
        let mean = flat.mean_keepdim(1)?;
        let var = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(1)? / (count - 1) as f64)?;
        let mut shape = vec![1usize; t.rank()];
        shape[0] = n;
        Ok(var.sqrt()?.reshape(shape)?)
    };
    let ratio = (std(positive)? / std(guided)?)?;
    let rescaled = guided.broadcast_mul(&ratio)?;
    Ok(((rescaled * phi)? + (guided * (1.0 - phi))?)?)
}

#[cfg(test)]
mod rescale_tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rescaled_guidance_has_the_positive_spread() {
        let dev = Device::Cpu;
        let pos = Tensor::new(&[[1f32, -1.0, 2.0, 0.0]], &dev).unwrap();
        let guided = (&pos * 3.0).unwrap();
        let full = rescale(&guided, &pos, 1.0).unwrap();
        let d = (full - &pos).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
        let none = rescale(&guided, &pos, 0.0).unwrap();
        assert_eq!(
            none.to_vec2::<f32>().unwrap(),
            guided.to_vec2::<f32>().unwrap()
        );
    }
}
