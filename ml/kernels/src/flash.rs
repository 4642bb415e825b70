//! Fused attention for the CPU, flash-style: for a block of queries, the keys are visited in
//! blocks, each block's scores exponentiated against a running row maximum (online softmax)
//! and multiplied into the output at once, so no score matrix larger than one block ever
//! exists. The exponential is vectorised (AVX-512 where the CPU has it).
//!
//! f32, contiguous B×heads×L×d inputs; the caller has scaled q.

use rayon::prelude::*;

use crate::disjoint::Disjoint;

use crate::vmath::exp_sub_sum;

/// Queries per block.
const BQ: usize = 128;
/// Sequences shorter than this (temporal attention over frames) are better served by one
/// batched product over many heads.
pub const MIN_QUERIES: usize = 32;
/// Keys per block: a BQ×BK score block (256 KiB) and the key/value blocks stay in L2 (sizes
/// tuned on the SD 1.5 shapes of `cargo bench -p latentflow-kernels`).
const BK: usize = 512;

/// `softmax(q·kᵀ)·v` for q `bh`×`lq`×`d`, k `bh`×`lk`×`d`, v `bh`×`lk`×`dv`, all row-major;
/// returns `bh`×`lq`×`dv`.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bh: usize,
    (lq, lk, d, dv): (usize, usize, usize, usize),
) -> Vec<f32> {
    let mut out = vec![0f32; bh * lq * dv];
    if lq == 0 || dv == 0 {
        return out;
    }
    let blocks = lq.div_ceil(BQ);
    // Work items: (head, query block), each writing its own rows of `out`.
    let items: Vec<(usize, usize)> = (0..bh)
        .flat_map(|h| (0..blocks).map(move |b| (h, b)))
        .collect();
    let ptr = Disjoint(out.as_mut_ptr());
    items.par_iter().for_each(|&(h, b)| {
        let q0 = b * BQ;
        let rows = BQ.min(lq - q0);
        let qh = &q[(h * lq + q0) * d..(h * lq + q0 + rows) * d];
        let kh = &k[h * lk * d..(h + 1) * lk * d];
        let vh = &v[h * lk * dv..(h + 1) * lk * dv];
        // SAFETY: each (head, block) item owns rows q0..q0+rows of head h of `out`.
        let o =
            unsafe { std::slice::from_raw_parts_mut(ptr.get().add((h * lq + q0) * dv), rows * dv) };
        block(qh, kh, vh, o, rows, lk, d, dv);
    });
    out
}

/// One block of `rows` queries against all `lk` keys; `o` (rows×dv) receives the result.
#[allow(clippy::too_many_arguments)]
fn block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &mut [f32],
    rows: usize,
    lk: usize,
    d: usize,
    dv: usize,
) {
    let mut scores = vec![0f32; rows * BK];
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let mut k0 = 0;
    while k0 < lk {
        let n = BK.min(lk - k0);
        // scores = q · k[k0..k0+n]ᵀ (rows×n, row stride BK).
        // SAFETY: the buffers are rows×d, n×d (read transposed), rows×BK, as the strides say.
        unsafe {
            gemm::gemm(
                rows,
                n,
                d,
                scores.as_mut_ptr(),
                1,
                BK as isize,
                false,
                q.as_ptr(),
                1,
                d as isize,
                k[k0 * d..].as_ptr(),
                d as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
        for r in 0..rows {
            let s = &mut scores[r * BK..r * BK + n];
            let m = max[r].max(row_max(s));
            // Rescale what this row holds so far to the new maximum.
            let scale = if max[r] == f32::NEG_INFINITY {
                0.0
            } else {
                (max[r] - m).exp()
            };
            sum[r] = sum[r] * scale + exp_sub_sum(s, m);
            max[r] = m;
            if scale != 1.0 {
                o[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= scale);
            }
        }
        // o += p · v[k0..k0+n].
        // SAFETY: rows×n (stride BK), n×dv and rows×dv buffers, as the strides say.
        unsafe {
            gemm::gemm(
                rows,
                dv,
                n,
                o.as_mut_ptr(),
                1,
                dv as isize,
                true,
                scores.as_ptr(),
                1,
                BK as isize,
                v[k0 * dv..].as_ptr(),
                1,
                dv as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
        k0 += n;
    }
    for r in 0..rows {
        let inv = 1.0 / sum[r];
        o[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= inv);
    }
}

fn row_max(s: &[f32]) -> f32 {
    s.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_attention_equals_softmax_then_product() {
        // Several heads, a partial query block, key blocks with a remainder, d ≠ dv.
        let (bh, lq, lk, d, dv) = (3, 70, 600, 8, 5);
        let mut seed = 7u32;
        let mut rand = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 6.0
                })
                .collect()
        };
        let (q, k, v) = (rand(bh * lq * d), rand(bh * lk * d), rand(bh * lk * dv));
        let got = attention(&q, &k, &v, bh, (lq, lk, d, dv));
        for h in 0..bh {
            for i in 0..lq {
                let s: Vec<f64> = (0..lk)
                    .map(|j| {
                        (0..d)
                            .map(|t| (q[(h * lq + i) * d + t] * k[(h * lk + j) * d + t]) as f64)
                            .sum()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..dv {
                    let want: f64 = (0..lk)
                        .map(|j| e[j] * v[(h * lk + j) * dv + c] as f64)
                        .sum::<f64>()
                        / z;
                    let g = got[(h * lq + i) * dv + c] as f64;
                    assert!(
                        (g - want).abs() < 1e-4,
                        "head {h} row {i} col {c}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
