//! Vectorised elementwise math for the kernels: e^x and SiLU on f32 slices, AVX-512 where the
//! CPU has it (chosen at run time), the standard library's `exp` otherwise.

/// `s[i] = exp(s[i] − m)` in place; returns the sum.
pub fn exp_sub_sum(s: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512() {
            // SAFETY: AVX-512F is present (checked).
            return unsafe { exp_sub_sum_avx512(s, m) };
        }
    }
    let mut total = 0.0;
    for x in s.iter_mut() {
        *x = (*x - m).exp();
        total += *x;
    }
    total
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static YES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *YES.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

/// e^x for 16 lanes: x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial, scaled by
/// 2^n (`vscalefps`). Relative error about 2e-7 over the range; −∞ gives 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let x = _mm512_min_ps(x, _mm512_set1_ps(88.7));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // r = x − n·ln2 in two steps (ln2 split into a part exact in f32 and the rest).
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 120.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 24.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 6.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
    _mm512_scalef_ps(p, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_sub_sum_avx512(s: &mut [f32], m: f32) -> f32 {
    use std::arch::x86_64::*;
    let mv = _mm512_set1_ps(m);
    let mut acc = _mm512_setzero_ps();
    let mut chunks = s.chunks_exact_mut(16);
    for c in &mut chunks {
        let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), mv));
        _mm512_storeu_ps(c.as_mut_ptr(), e);
        acc = _mm512_add_ps(acc, e);
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mask: __mmask16 = (1u32 << rest.len()) as u16 - 1;
        let x = _mm512_maskz_loadu_ps(mask, rest.as_ptr());
        let e = exp16(_mm512_sub_ps(x, mv));
        let e = _mm512_maskz_mov_ps(mask, e);
        _mm512_mask_storeu_ps(rest.as_mut_ptr(), mask, e);
        acc = _mm512_add_ps(acc, e);
    }
    _mm512_reduce_add_ps(acc)
}

/// `x[i] = x[i] / (1 + e^(−x[i]))` in place.
pub fn silu(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512() {
            // SAFETY: AVX-512F is present (checked).
            unsafe { silu_avx512(x) };
            return;
        }
    }
    for v in x.iter_mut() {
        *v /= 1.0 + (-*v).exp();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(1.0);
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        let v = _mm512_loadu_ps(c.as_ptr());
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_storeu_ps(c.as_mut_ptr(), _mm512_div_ps(v, _mm512_add_ps(one, e)));
    }
    for v in chunks.into_remainder() {
        *v /= 1.0 + (-*v).exp();
    }
}

/// 1 + erf(x) for 16 lanes, from erfc(|x|) (Numerical Recipes' Chebyshev fit, relative
/// error under 1.2e-7 everywhere), so that GELU keeps its relative precision for negative x
/// where 1 + erf(x) is small.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn one_plus_erf16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let z = _mm512_abs_ps(x);
    let one = _mm512_set1_ps(1.0);
    let t = _mm512_div_ps(one, _mm512_fmadd_ps(z, _mm512_set1_ps(0.5), one));
    // The published digits, rounded to f32 by the compiler.
    #[allow(clippy::excessive_precision)]
    let coefficients: [f32; 10] = [
        0.170_872_77,
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ];
    let mut p = _mm512_set1_ps(coefficients[0]);
    for c in &coefficients[1..] {
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(*c));
    }
    let erfc = _mm512_mul_ps(t, exp16(_mm512_fnmadd_ps(z, z, p)));
    let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
    _mm512_mask_blend_ps(negative, _mm512_sub_ps(_mm512_set1_ps(2.0), erfc), erfc)
}

/// GEGLU, `out[i] = a[i] · gelu(g[i])` with the exact (erf) GELU, `0.5·g·(1 + erf(g/√2))`, over
/// rows of `2·half` values (`a` then `g`, as diffusers' `GEGLU` chunks its projection).
pub fn geglu(rows: &[f32], half: usize, out: &mut [f32]) {
    for (o, r) in out
        .chunks_mut(half.max(1))
        .zip(rows.chunks(2 * half.max(1)))
    {
        let (a, g) = r.split_at(half);
        #[cfg(target_arch = "x86_64")]
        {
            if avx512() {
                // SAFETY: AVX-512F is present (checked).
                unsafe { geglu_avx512(a, g, o) };
                continue;
            }
        }
        for ((o, a), g) in o.iter_mut().zip(a).zip(g) {
            *o = a * gelu_erf(*g);
        }
    }
}

fn gelu_erf(g: f32) -> f32 {
    (0.5 * g as f64 * (1.0 + libm::erf(g as f64 / std::f64::consts::SQRT_2))) as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn geglu_avx512(a: &[f32], g: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len();
    let mut i = 0;
    while i + 16 <= n {
        let gv = _mm512_loadu_ps(g.as_ptr().add(i));
        let e = one_plus_erf16(_mm512_mul_ps(
            gv,
            _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        ));
        let gelu = _mm512_mul_ps(_mm512_mul_ps(gv, _mm512_set1_ps(0.5)), e);
        _mm512_storeu_ps(
            out.as_mut_ptr().add(i),
            _mm512_mul_ps(_mm512_loadu_ps(a.as_ptr().add(i)), gelu),
        );
        i += 16;
    }
    for j in i..n {
        out[j] = a[j] * gelu_erf(g[j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_exponential_is_accurate_over_softmax_inputs() {
        let xs: Vec<f32> = (0..4000)
            .map(|i| -90.0 + i as f32 * 0.0225 + 0.001)
            .collect();
        let mut got = xs.clone();
        let total = exp_sub_sum(&mut got, 0.0);
        let mut want_total = 0f64;
        for (g, x) in got.iter().zip(&xs) {
            let w = (*x as f64).exp();
            want_total += w;
            let rel = ((*g as f64 - w) / w.max(1e-38)).abs();
            assert!(rel < 1e-6 || w < 1e-37, "exp({x}) = {g}, want {w}");
        }
        assert!(((total as f64 - want_total) / want_total).abs() < 1e-5);
        let mut inf = vec![f32::NEG_INFINITY; 3];
        assert_eq!(exp_sub_sum(&mut inf, 0.0), 0.0);
    }

    #[test]
    fn geglu_equals_its_definition() {
        let half = 37;
        let rows: Vec<f32> = (0..3 * 2 * half).map(|i| -7.0 + i as f32 * 0.063).collect();
        let mut out = vec![0f32; 3 * half];
        geglu(&rows, half, &mut out);
        for r in 0..3 {
            for j in 0..half {
                let (a, g) = (
                    rows[r * 2 * half + j] as f64,
                    rows[r * 2 * half + half + j] as f64,
                );
                let want = a * 0.5 * g * (1.0 + libm::erf(g / std::f64::consts::SQRT_2));
                let got = out[r * half + j] as f64;
                assert!(
                    (got - want).abs() <= 2e-6 * want.abs().max(1e-3),
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn silu_equals_its_definition() {
        let mut xs: Vec<f32> = (0..1000).map(|i| -60.0 + i as f32 * 0.123).collect();
        let want: Vec<f64> = xs
            .iter()
            .map(|&x| x as f64 / (1.0 + (-x as f64).exp()))
            .collect();
        silu(&mut xs);
        for (g, w) in xs.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-6 * w.abs().max(1e-6),
                "{g} vs {w}"
            );
        }
    }
}
