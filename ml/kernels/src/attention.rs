//! Scaled dot-product attention: one entry point, [`attention`], for every model.
//!
//! `softmax(q·kᵀ + mask)·v` over tensors of B×heads×L×d. The caller scales `q` (models keep the
//! reference implementation's order of operations, which parity tests pin down). Without a mask
//! or a probability sink, f32 on the CPU with 32 queries or more runs fused ([`crate::flash`]:
//! online softmax over key blocks, vectorised exp); otherwise long sequences are computed in
//! blocks of queries so the whole B·heads×Lq×Lk score matrix never exists at once.

use candle_core::{DType, Tensor};

/// Receives the attention probabilities (B×heads×Lq×Lk) of one call, for analysis such as DAAM.
pub type ProbabilitySink<'a> = &'a (dyn Fn(&Tensor) + Sync);

/// What one attention call needs besides q, k and v.
#[derive(Default, Clone, Copy)]
pub struct Attend<'a> {
    /// Added to the scores before the softmax (broadcast to B×heads×Lq×Lk), e.g. a causal or
    /// padding mask with −∞ where attention is not allowed.
    pub mask: Option<&'a Tensor>,
    /// Receives the probabilities; the computation then materialises them whole.
    pub probabilities: Option<ProbabilitySink<'a>>,
}

/// Scores per block stay under this many floats (16 MiB).
const SCORE_BLOCK: usize = 4 << 20;

/// `softmax(q·kᵀ + mask)·v` for q B×heads×Lq×d, k and v B×heads×Lk×d.
///
/// Half-precision inputs (bf16, f16) are computed in f32 and the result returned in their
/// dtype: scores and their softmax in 8 bits of mantissa lose the small probabilities.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: Attend) -> candle_core::Result<Tensor> {
    let dtype = q.dtype();
    if matches!(dtype, DType::BF16 | DType::F16) {
        let wide = |t: &Tensor| t.to_dtype(DType::F32);
        let mask = opts.mask.map(wide).transpose()?;
        let out = attention(
            &wide(q)?,
            &wide(k)?,
            &wide(v)?,
            Attend {
                mask: mask.as_ref(),
                probabilities: opts.probabilities,
            },
        )?;
        return out.to_dtype(dtype);
    }
    if q.track_op() || k.track_op() || v.track_op() {
        return differentiable(q, k, v, opts);
    }
    if let Some(m) = opts.mask {
        let probs = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?.broadcast_add(m)?)?;
        if let Some(sink) = opts.probabilities {
            sink(&probs);
        }
        return probs.matmul(v);
    }
    if let Some(sink) = opts.probabilities {
        // The sink gets the probabilities; the result comes from the same path as without a
        // sink, so watching attention never changes a single bit of what the model computes.
        sink(&candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?);
    }
    blocked(q, k, v)
}

/// The same product from operations candle can differentiate (its last-axis softmax kernel has
/// no backward pass), for inputs that record their operations.
fn differentiable(q: &Tensor, k: &Tensor, v: &Tensor, opts: Attend) -> candle_core::Result<Tensor> {
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(m) = opts.mask {
        scores = scores.broadcast_add(m)?;
    }
    let probs = candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?;
    if let Some(sink) = opts.probabilities {
        sink(&probs);
    }
    probs.matmul(v)
}

/// softmax(q·kᵀ)·v in one batched product.
fn whole(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?.matmul(v)
}

fn blocked(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let lk = k.dim(2)?;
    let cpu_f32 = matches!(q.device(), candle_core::Device::Cpu) && q.dtype() == DType::F32;
    if cpu_f32 && lq >= crate::flash::MIN_QUERIES {
        return fused(q, k, v);
    }
    if b * h * lq * lk <= SCORE_BLOCK {
        return whole(q, k, v);
    }
    if lq * lk <= SCORE_BLOCK {
        // Many short sequences (temporal attention over the frames at every pixel): whole
        // (batch, head) pairs per block, each block one batched product.
        let (bh, dv) = (b * h, v.dim(3)?);
        let q3 = q.contiguous()?.reshape((bh, lq, d))?;
        let k3 = k.contiguous()?.reshape((bh, lk, d))?;
        let v3 = v.contiguous()?.reshape((bh, lk, dv))?;
        let per = (SCORE_BLOCK / (lq * lk)).max(1);
        let mut parts = Vec::with_capacity(bh.div_ceil(per));
        let mut start = 0;
        while start < bh {
            let n = per.min(bh - start);
            parts.push(whole(
                &q3.narrow(0, start, n)?,
                &k3.narrow(0, start, n)?,
                &v3.narrow(0, start, n)?,
            )?);
            start += n;
        }
        return Tensor::cat(&parts, 0)?.reshape((b, h, lq, dv));
    }
    let kt = k.t()?;
    let rows = (SCORE_BLOCK / lk).max(1);
    let mut per_batch = Vec::with_capacity(b);
    for bi in 0..b {
        let mut heads = Vec::with_capacity(h);
        for hi in 0..h {
            let (qh, kh, vh) = (
                q.get(bi)?.get(hi)?,
                kt.get(bi)?.get(hi)?,
                v.get(bi)?.get(hi)?,
            );
            let mut parts = Vec::with_capacity(lq.div_ceil(rows));
            let mut start = 0;
            while start < lq {
                let n = rows.min(lq - start);
                let s = qh.narrow(0, start, n)?.matmul(&kh)?;
                parts.push(candle_nn::ops::softmax_last_dim(&s)?.matmul(&vh)?);
                start += n;
            }
            heads.push(Tensor::cat(&parts, 0)?);
        }
        per_batch.push(Tensor::stack(&heads, 0)?);
    }
    Tensor::stack(&per_batch, 0)
}

/// The `n` f32 values of a contiguous CPU tensor's storage.
fn cpu_values<'a>(
    s: &'a candle_core::Storage,
    l: &candle_core::Layout,
    n: usize,
) -> candle_core::Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(c) => c
            .as_slice::<f32>()?
            .get(l.start_offset()..l.start_offset() + n)
            .ok_or_else(|| {
                candle_core::Error::Msg("attention input shorter than its shape".into())
            }),
        _ => candle_core::bail!("fused attention runs on the CPU"),
    }
}

/// Sequences of a block of queries or more on the CPU: [`crate::flash`], no score matrix held.
fn fused(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let (lk, dv) = (k.dim(2)?, v.dim(3)?);
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let out = {
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        crate::flash::attention(
            cpu_values(&qs, ql, b * h * lq * d)?,
            cpu_values(&ks, kl, b * h * lk * d)?,
            cpu_values(&vs, vl, b * h * lk * dv)?,
            b * h,
            (lq, lk, d, dv),
        )
    };
    Tensor::from_vec(out, (b, h, lq, dv), q.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn naive(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let s = q.matmul(&k.t().unwrap()).unwrap();
        candle_nn::ops::softmax(&s, D::Minus1)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    #[test]
    fn many_short_sequences_are_blocked_by_whole_heads() {
        // 2100×2 sequences of 40: more scores than one block, each sequence within one.
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2100, 2, 40, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2100, 2, 40, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2100, 2, 40, 8), &dev).unwrap();
        let got = blocked(&q, &k, &v).unwrap();
        let want = naive(&q, &k, &v);
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn blocked_attention_equals_the_whole_matrix() {
        let dev = Device::Cpu;
        // 1×2×2100×8 queries against 2100 keys: more than one block of scores.
        let q = Tensor::randn(0f32, 1.0, (1, 2, 2100, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 2, 2100, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 2, 2100, 8), &dev).unwrap();
        let a = attention(&q, &k, &v, Attend::default()).unwrap();
        let b = naive(&q, &k, &v);
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn a_sink_sees_the_probabilities_and_changes_no_bit_of_the_result() {
        let dev = Device::Cpu;
        // Long enough for the fused path.
        let q = Tensor::randn(0f32, 1.0, (1, 2, 70, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 2, 77, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 2, 77, 8), &dev).unwrap();
        let seen = std::sync::Mutex::new(None);
        let sink = |p: &Tensor| *seen.lock().unwrap() = Some(p.clone());
        let watched = Attend {
            mask: None,
            probabilities: Some(&sink),
        };
        let with = attention(&q, &k, &v, watched).unwrap();
        let without = attention(&q, &k, &v, Attend::default()).unwrap();
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bits(&with), bits(&without));
        let p = seen.lock().unwrap().clone().unwrap();
        assert_eq!(p.dims(), &[1, 2, 70, 77]);
        let d = (p.matmul(&v).unwrap() - &without)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn a_mask_removes_keys_and_the_sink_sees_probabilities() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 1, 3, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 1, 2, 4), &dev).unwrap();
        let v = Tensor::new(&[[[[1f32, 0.0], [0.0, 1.0]]]], &dev).unwrap();
        let mask = Tensor::new(&[0f32, f32::NEG_INFINITY], &dev).unwrap();
        let seen = std::sync::Mutex::new(None);
        let sink = |p: &Tensor| *seen.lock().unwrap() = Some(p.clone());
        let out = attention(
            &q,
            &k,
            &v,
            Attend {
                mask: Some(&mask),
                probabilities: Some(&sink),
            },
        )
        .unwrap();
        // Only the first key is visible: every output row is v[0].
        let rows = out.flatten_to(2).unwrap().to_vec2::<f32>().unwrap();
        assert!(rows.iter().all(|r| r == &[1.0, 0.0]), "{rows:?}");
        let p = seen.lock().unwrap().clone().unwrap();
        assert_eq!(p.dims(), &[1, 1, 3, 2]);
    }
}
