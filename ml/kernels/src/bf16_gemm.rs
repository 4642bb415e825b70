//! Matrix products of bf16 matrices with f32 accumulation: the bf16 compute mode's GEMM.
//!
//! `C = A·B` where A is read where it lies (rows of bf16 with `k` contiguous: activations of a
//! linear layer, the weights of a convolution) and B is packed per call into panels of
//! [`NR`] columns whose `k` runs in pairs, the layout `vdpbf16ps` consumes (two bf16 products
//! per f32 lane and instruction). Weights are never held twice: a layer's weights are either
//! the A side, read in place, or packed for the call and dropped (a copy of one layer at a time,
//! cheap next to the product once A has more than a few rows).
//!
//! The kernel is chosen at run time: CPUs with AVX512-BF16 run micro tiles of [`MR`]×[`NR`]
//! f32 accumulators held in registers; other CPUs widen both sides to f32 and run `gemm`'s
//! AVX-512/AVX2/scalar kernels. Both give the same products up to f32 summation order.

use half::bf16;
use rayon::prelude::*;

use crate::disjoint::Disjoint;

/// Rows of A per micro tile.
pub const MR: usize = 8;
/// Columns of B per panel (and per micro tile): two vectors of 16 f32 accumulators.
pub const NR: usize = 32;
/// Pairs of `k` per block: a B micro panel of KC·NR·4 bytes stays in L1/L2.
const KC: usize = 192;
/// Rows of C per work item (a multiple of MR).
const MC: usize = 96;
/// Columns of C per work item (a multiple of NR).
const NC: usize = 1024;

/// The ways a product can run; [`kernel`] picks one per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `vdpbf16ps` on bf16 pairs (AVX512-BF16): fastest where the CPU runs it at full rate
    /// (AMD Zen 4 and later).
    Dot,
    /// Both sides widened to f32 in registers, then AVX-512 FMA: the same bf16 memory traffic
    /// at the f32 FMA rate (Intel cores run `vdpbf16ps` at half the rate of their two FMA ports).
    Fma,
    /// Both sides widened to f32 buffers and multiplied by `gemm` (AVX2/scalar machines).
    Widened,
}

impl Kernel {
    /// The kernels this CPU can run.
    pub fn available() -> Vec<Kernel> {
        let mut out = vec![Kernel::Widened];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                out.push(Kernel::Fma);
                if std::arch::is_x86_feature_detected!("avx512bf16") {
                    out.push(Kernel::Dot);
                }
            }
        }
        out
    }
}

/// The kernel this process uses: `LATENTFLOW_BF16_KERNEL` (`dot`, `fma`, `widened`) when set to
/// one the CPU runs, else the faster of the AVX-512 kernels on a small product timed once (a few
/// milliseconds at the first bf16 product), else the widened path.
pub fn kernel() -> Kernel {
    static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let available = Kernel::available();
        let asked = match std::env::var("LATENTFLOW_BF16_KERNEL").as_deref() {
            Ok("dot") => Some(Kernel::Dot),
            Ok("fma") => Some(Kernel::Fma),
            Ok("widened") => Some(Kernel::Widened),
            _ => None,
        };
        if let Some(k) = asked.filter(|k| available.contains(k)) {
            return k;
        }
        let timed: Vec<Kernel> = available
            .into_iter()
            .filter(|k| *k != Kernel::Widened)
            .collect();
        match timed.as_slice() {
            [] => Kernel::Widened,
            [one] => *one,
            many => *many
                .iter()
                .min_by(|a, b| calibrate(**a).total_cmp(&calibrate(**b)))
                .unwrap_or(&Kernel::Fma),
        }
    })
}

/// Seconds for the best of five 192×384×256 products on `kernel`, on this thread.
fn calibrate(kernel: Kernel) -> f64 {
    let (m, k, n) = (MC * 2, 2 * KC, NC);
    let a = vec![bf16::from_f32(0.5); m * k];
    let b = vec![bf16::from_f32(0.25); k * n];
    let (Ok(rows), Ok(packed)) = (Rows::new(&a, m, k, k), PackedB::from_rows(&b, k, n, n)) else {
        return f64::INFINITY;
    };
    (0..5)
        .map(|_| {
            let mut c = vec![0f32; m * n];
            let t = std::time::Instant::now();
            for t in 0..(m.div_ceil(MC) * n.div_ceil(NC)) {
                let nb = n.div_ceil(NC);
                // SAFETY: `kernel` is available (its features were detected); one thread.
                unsafe {
                    run_block(
                        kernel,
                        rows,
                        &packed,
                        c.as_mut_ptr(),
                        (t / nb) * MC,
                        (t % nb) * NC,
                    )
                }
            }
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Whether this CPU has AVX512-BF16 (`vdpbf16ps`).
pub fn has_bf16_dot() -> bool {
    Kernel::available().contains(&Kernel::Dot)
}

/// A wrong shape or a view that reads outside its slice.
#[derive(Debug, thiserror::Error)]
#[error("bf16 matrix product: {0}")]
pub struct ShapeError(String);

/// The A side: `rows` rows of `depth` bf16 values, row `i` starting at `data[i * stride]`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    data: &'a [bf16],
    rows: usize,
    depth: usize,
    stride: usize,
}

impl<'a> Rows<'a> {
    /// A view over `data`, checked to lie inside it.
    pub fn new(
        data: &'a [bf16],
        rows: usize,
        depth: usize,
        stride: usize,
    ) -> Result<Self, ShapeError> {
        let need = if rows == 0 || depth == 0 {
            0
        } else {
            (rows - 1) * stride + depth
        };
        if stride < depth || need > data.len() {
            return Err(ShapeError(format!(
                "{rows}×{depth} rows with stride {stride} need {need} values, the slice has {}",
                data.len()
            )));
        }
        Ok(Self {
            data,
            rows,
            depth,
            stride,
        })
    }

    fn row(&self, i: usize) -> &'a [bf16] {
        &self.data[i * self.stride..i * self.stride + self.depth]
    }
}

/// The B side packed: panels of [`NR`] columns, each `[depth/2][NR][2]` bf16 bits, padded with
/// zeros to a whole panel and an even depth.
pub struct PackedB {
    depth: usize,
    cols: usize,
    data: Vec<u16>,
}

impl PackedB {
    fn pairs(depth: usize) -> usize {
        depth.div_ceil(2)
    }

    fn panel_len(depth: usize) -> usize {
        Self::pairs(depth) * NR * 2
    }

    /// Packs a `depth`×`cols` B by panels: `fill(panel, out)` writes panel `panel` (columns
    /// `panel·NR ..`) into `out` (zeroed, [`Self::panel_len`] long) with [`put`].
    pub fn build(depth: usize, cols: usize, fill: impl Fn(usize, &mut [u16]) + Sync) -> Self {
        let len = Self::panel_len(depth);
        let mut data = vec![0u16; cols.div_ceil(NR) * len];
        if len > 0 {
            data.par_chunks_mut(len)
                .enumerate()
                .for_each(|(p, out)| fill(p, out));
        }
        Self { depth, cols, data }
    }

    /// B(k, n) = `src[k * stride + n]`: rows of B contiguous (a C×pixels activation, attention's
    /// values).
    pub fn from_rows(
        src: &[bf16],
        depth: usize,
        cols: usize,
        stride: usize,
    ) -> Result<Self, ShapeError> {
        Rows::new(src, depth, cols, stride)?;
        Ok(Self::build(depth, cols, |p, out| {
            let (c0, n) = (p * NR, NR.min(cols - p * NR));
            // Rows 2·pair and 2·pair + 1 interleaved (the second absent past an odd depth).
            for (pair, dst) in out.chunks_exact_mut(NR * 2).enumerate() {
                let k = 2 * pair;
                let even = &src[k * stride + c0..k * stride + c0 + n];
                for (d, v) in dst.iter_mut().step_by(2).zip(even) {
                    *d = v.to_bits();
                }
                if k + 1 < depth {
                    let odd = &src[(k + 1) * stride + c0..(k + 1) * stride + c0 + n];
                    for (d, v) in dst.iter_mut().skip(1).step_by(2).zip(odd) {
                        *d = v.to_bits();
                    }
                }
            }
        }))
    }

    /// B(k, n) = `src[n * stride + k]`: columns of B contiguous (a linear layer's out×in
    /// weight, attention's keys).
    pub fn from_columns(
        src: &[bf16],
        depth: usize,
        cols: usize,
        stride: usize,
    ) -> Result<Self, ShapeError> {
        Rows::new(src, cols, depth, stride)?;
        Ok(Self::build(depth, cols, |p, out| {
            let (c0, n) = (p * NR, NR.min(cols - p * NR));
            // Blocks of pairs so the panel's part being written stays in L1 across columns.
            const BLOCK: usize = 128;
            let pairs = depth / 2;
            let mut p0 = 0;
            while p0 < pairs {
                let p1 = (p0 + BLOCK).min(pairs);
                for j in 0..n {
                    let col = &src[(c0 + j) * stride + 2 * p0..(c0 + j) * stride + 2 * p1];
                    let dst = &mut out[p0 * NR * 2..p1 * NR * 2];
                    for (two, at) in col.chunks_exact(2).zip(dst.chunks_exact_mut(NR * 2)) {
                        at[j * 2] = two[0].to_bits();
                        at[j * 2 + 1] = two[1].to_bits();
                    }
                }
                p0 = p1;
            }
            if depth % 2 == 1 {
                for j in 0..n {
                    put(
                        out,
                        depth - 1,
                        j,
                        src[(c0 + j) * stride + depth - 1].to_bits(),
                    );
                }
            }
        }))
    }

    /// The packed values (for tests of packings written elsewhere).
    #[cfg(test)]
    pub(crate) fn data(&self) -> &[u16] {
        &self.data
    }

    /// Rows of B (the shared depth).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Columns of B.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// B as a row-major `depth`×`cols` f32 matrix (the widened path).
    fn widened(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.depth * self.cols];
        let len = Self::panel_len(self.depth);
        for (p, panel) in self.data.chunks(len.max(1)).enumerate() {
            for j in 0..NR.min(self.cols.saturating_sub(p * NR)) {
                for k in 0..self.depth {
                    let v = panel[(k / 2) * NR * 2 + j * 2 + (k % 2)];
                    out[k * self.cols + p * NR + j] = bf16::from_bits(v).to_f32();
                }
            }
        }
        out
    }
}

/// Writes B(k, j) = `bits` into a panel being built by [`PackedB::build`] (`j` < [`NR`]).
#[inline]
pub fn put(panel: &mut [u16], k: usize, j: usize, bits: u16) {
    panel[(k / 2) * NR * 2 + j * 2 + (k % 2)] = bits;
}

/// `A·B` as a row-major `a.rows`×`b.cols` f32 matrix, plus `bias[j]` on column j when given.
pub fn matmul(a: Rows, b: &PackedB, bias: Option<&[f32]>) -> Result<Vec<f32>, ShapeError> {
    matmul_on(a, b, bias, kernel())
}

/// [`matmul`] on a given kernel (one of [`Kernel::available`]; others take the widened path).
pub fn matmul_on(
    a: Rows,
    b: &PackedB,
    bias: Option<&[f32]>,
    kernel: Kernel,
) -> Result<Vec<f32>, ShapeError> {
    if a.depth != b.depth {
        return Err(ShapeError(format!(
            "A has depth {}, B has {}",
            a.depth, b.depth
        )));
    }
    if let Some(bias) = bias {
        if bias.len() != b.cols {
            return Err(ShapeError(format!(
                "{} bias values for {} columns",
                bias.len(),
                b.cols
            )));
        }
    }
    let (m, n) = (a.rows, b.cols);
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return Ok(c);
    }
    if a.depth > 0 {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Dot | Kernel::Fma if Kernel::available().contains(&kernel) => {
                tiled_product(kernel, a, b, &mut c)
            }
            _ => widened_product(a, b, &mut c),
        }
    }
    if let Some(bias) = bias {
        c.par_chunks_mut(n).for_each(|row| {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        });
    }
    Ok(c)
}

/// f32 → bf16, rounding to nearest even.
pub fn narrow(values: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; values.len()];
    out.par_chunks_mut(1 << 16)
        .zip(values.par_chunks(1 << 16))
        .for_each(|(o, v)| {
            for (o, v) in o.iter_mut().zip(v) {
                *o = round(*v);
            }
        });
    out
}

/// f32 → bf16 rounding to nearest even, branch-free so loops over it vectorise; NaN stays NaN.
#[inline]
pub(crate) fn round(v: f32) -> bf16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    bf16::from_bits(if v.is_nan() { 0x7FC0 } else { rounded })
}

fn widened_product(a: Rows, b: &PackedB, c: &mut [f32]) {
    let (m, n, k) = (a.rows, b.cols, a.depth);
    let mut wa = vec![0f32; m * k];
    wa.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
        for (o, v) in row.iter_mut().zip(a.row(i)) {
            *o = v.to_f32();
        }
    });
    let wb = b.widened();
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three buffers are m×k, k×n and m×n, row-major, as the strides say.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            wa.as_ptr(),
            1,
            k as isize,
            wb.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(target_arch = "x86_64")]
fn tiled_product(kernel: Kernel, a: Rows, b: &PackedB, c: &mut [f32]) {
    let (m, n) = (a.rows, b.cols);
    let (mb, nb) = (m.div_ceil(MC), n.div_ceil(NC));
    let out = Disjoint(c.as_mut_ptr());
    (0..mb * nb).into_par_iter().for_each(|t| {
        // SAFETY: `kernel` came from `Kernel::available` (its features are present); the item
        // writes only the tiles of its own rows and columns of the m×n buffer behind `out`.
        unsafe { run_block(kernel, a, b, out.get(), (t / nb) * MC, (t % nb) * NC) }
    });
}

/// [`block`] on `kernel`'s tile.
///
/// # Safety
/// The CPU runs `kernel`; `c` is `a.rows`×`b.cols`, and no other thread writes the block.
#[cfg(target_arch = "x86_64")]
unsafe fn run_block(kernel: Kernel, a: Rows, b: &PackedB, c: *mut f32, i0: usize, j0: usize) {
    match kernel {
        Kernel::Dot => dot_block(a, b, c, i0, j0),
        _ => fma_block(a, b, c, i0, j0),
    }
}

/// One work item on `vdpbf16ps`: rows `i0..` × columns `j0..` of C, over the whole depth in
/// blocks of KC pairs. Each MR-row tile of A is copied once per depth block into a buffer of
/// bf16 pairs and used against every B panel of the item; rows past the end repeat the last
/// one and their results are dropped.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_block(a: Rows, b: &PackedB, c: *mut f32, i0: usize, j0: usize) {
    let (m, n) = (a.rows, b.cols);
    let pairs = PackedB::pairs(a.depth);
    let panel_len = PackedB::panel_len(a.depth);
    let (i1, j1) = ((i0 + MC).min(m), (j0 + NC).min(n));
    let mut pairs_buf = [0u32; KC * MR];
    let mut p0 = 0;
    while p0 < pairs {
        let kc = KC.min(pairs - p0);
        let first = p0 == 0;
        let mut i = i0;
        while i < i1 {
            let rows = MR.min(m - i);
            for r in 0..MR {
                let row = a.row(i + r.min(rows - 1));
                let part = &row[2 * p0..(2 * p0 + 2 * kc).min(a.depth)];
                for (q, two) in part.chunks(2).enumerate() {
                    let lo = two[0];
                    let hi = two.get(1).copied().unwrap_or(bf16::ZERO);
                    pairs_buf[q * MR + r] = lo.to_bits() as u32 | (hi.to_bits() as u32) << 16;
                }
            }
            let mut j = j0;
            while j < j1 {
                let panel = b.data[(j / NR) * panel_len + p0 * NR * 2..].as_ptr();
                let cols = NR.min(n - j);
                with_tile(c, n, i, j, rows, cols, first, |c, ldc| {
                    dot_tile(kc, pairs_buf.as_ptr(), panel, c, ldc, first)
                });
                j += NR;
            }
            i += MR;
        }
        p0 += kc;
    }
}

/// Runs `tile(ptr, ldc)` on the MR×NR tile of the m×n C (`n` apart) at (i, j): in place when
/// whole, else through a buffer holding the `rows`×`cols` that exist.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn with_tile(
    c: *mut f32,
    n: usize,
    i: usize,
    j: usize,
    rows: usize,
    cols: usize,
    first: bool,
    tile: impl FnOnce(*mut f32, usize),
) {
    if rows == MR && cols == NR {
        tile(c.add(i * n + j), n);
        return;
    }
    let mut tmp = [0f32; MR * NR];
    if !first {
        for r in 0..rows {
            for q in 0..cols {
                tmp[r * NR + q] = *c.add((i + r) * n + j + q);
            }
        }
    }
    tile(tmp.as_mut_ptr(), NR);
    for r in 0..rows {
        for q in 0..cols {
            *c.add((i + r) * n + j + q) = tmp[r * NR + q];
        }
    }
}

/// Pairs of `k` per depth block of the FMA kernel: its widened B micro panel (2·KC_FMA·NR f32)
/// fits L1 beside the A tile.
const KC_FMA: usize = 128;

/// One work item on f32 FMA: per depth block, the item's rows of A are widened once into
/// `[tile][k][MR]` and each B micro panel once into `[k][NR]`, then every A tile runs against
/// it (widening inside the tile loop costs more than the FMAs it feeds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_block(a: Rows, b: &PackedB, c: *mut f32, i0: usize, j0: usize) {
    use std::arch::x86_64::*;
    let (m, n) = (a.rows, b.cols);
    let pairs = PackedB::pairs(a.depth);
    let panel_len = PackedB::panel_len(a.depth);
    let (i1, j1) = ((i0 + MC).min(m), (j0 + NC).min(n));
    let tiles = (i1 - i0).div_ceil(MR);
    let mut wide_a = vec![0f32; tiles * 2 * KC_FMA * MR];
    let mut wide_b = vec![0f32; 2 * KC_FMA * NR];
    let top = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut p0 = 0;
    while p0 < pairs {
        let kc = KC_FMA.min(pairs - p0);
        let first = p0 == 0;
        for t in 0..tiles {
            let i = i0 + t * MR;
            let rows = MR.min(m - i);
            let dst = &mut wide_a[t * 2 * KC_FMA * MR..(t + 1) * 2 * KC_FMA * MR];
            for r in 0..MR {
                let row = a.row(i + r.min(rows - 1));
                let part = &row[2 * p0..(2 * p0 + 2 * kc).min(a.depth)];
                for (q, v) in part.iter().enumerate() {
                    dst[q * MR + r] = v.to_f32();
                }
                // An odd depth's missing last value.
                for q in part.len()..2 * kc {
                    dst[q * MR + r] = 0.0;
                }
            }
        }
        let mut j = j0;
        while j < j1 {
            let panel = b.data[(j / NR) * panel_len + p0 * NR * 2..].as_ptr();
            for p in 0..kc {
                // Lane j of a raw vector holds (k even, k odd) of column j: low and high halves.
                let r0 = _mm512_loadu_si512(panel.add(p * NR * 2).cast());
                let r1 = _mm512_loadu_si512(panel.add(p * NR * 2 + 32).cast());
                let w = wide_b.as_mut_ptr();
                _mm512_storeu_ps(
                    w.add(2 * p * NR),
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(r0)),
                );
                _mm512_storeu_ps(
                    w.add(2 * p * NR + 16),
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(r1)),
                );
                _mm512_storeu_ps(
                    w.add((2 * p + 1) * NR),
                    _mm512_castsi512_ps(_mm512_and_si512(r0, top)),
                );
                _mm512_storeu_ps(
                    w.add((2 * p + 1) * NR + 16),
                    _mm512_castsi512_ps(_mm512_and_si512(r1, top)),
                );
            }
            let cols = NR.min(n - j);
            for t in 0..tiles {
                let i = i0 + t * MR;
                let at = wide_a[t * 2 * KC_FMA * MR..].as_ptr();
                with_tile(c, n, i, j, MR.min(m - i), cols, first, |c, ldc| {
                    fma_tile(2 * kc, at, wide_b.as_ptr(), c, ldc, first)
                });
            }
            j += NR;
        }
        p0 += kc;
    }
}

/// One MR×NR tile of C (`ldc` apart, overwritten when `first`, else added to) += A·B over `kc`
/// pairs: A as `[kc][MR]` bf16 pairs, B's micro panel as `[kc][NR][2]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn dot_tile(kc: usize, a: *const u32, b: *const u16, c: *mut f32, ldc: usize, first: bool) {
    use std::arch::x86_64::*;
    let (mut lo, mut hi) = load_tile(c, ldc, first);
    for p in 0..kc {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR * 2).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR * 2 + 32).cast()));
        for r in 0..MR {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + r) as i32));
            lo[r] = _mm512_dpbf16_ps(lo[r], av, b0);
            hi[r] = _mm512_dpbf16_ps(hi[r], av, b1);
        }
    }
    store_tile(c, ldc, &lo, &hi);
}

/// [`dot_tile`] in f32: `depth` values of k, A as `[depth][MR]`, B as `[depth][NR]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn fma_tile(
    depth: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    first: bool,
) {
    use std::arch::x86_64::*;
    let (mut lo, mut hi) = load_tile(c, ldc, first);
    for q in 0..depth {
        let b0 = _mm512_loadu_ps(b.add(q * NR));
        let b1 = _mm512_loadu_ps(b.add(q * NR + 16));
        for r in 0..MR {
            let av = _mm512_set1_ps(*a.add(q * MR + r));
            lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
            hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
        }
    }
    store_tile(c, ldc, &lo, &hi);
}

#[cfg(target_arch = "x86_64")]
type Tile = [std::arch::x86_64::__m512; MR];

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_tile(c: *const f32, ldc: usize, first: bool) -> (Tile, Tile) {
    use std::arch::x86_64::*;
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    if !first {
        for r in 0..MR {
            lo[r] = _mm512_loadu_ps(c.add(r * ldc));
            hi[r] = _mm512_loadu_ps(c.add(r * ldc + 16));
        }
    }
    (lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_tile(c: *mut f32, ldc: usize, lo: &Tile, hi: &Tile) {
    use std::arch::x86_64::*;
    for r in 0..MR {
        _mm512_storeu_ps(c.add(r * ldc), lo[r]);
        _mm512_storeu_ps(c.add(r * ldc + 16), hi[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<bf16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                bf16::from_f32((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0)
            })
            .collect()
    }

    /// Σ_k A(i,k)·B(k,j) in f64 over the bf16 values.
    fn reference(a: &[bf16], b: &[bf16], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|q| a[i * k + q].to_f64() * b[q * n + j].to_f64())
                    .sum();
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    fn max_error(got: &[f32], want: &[f32]) -> f32 {
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn products_of_every_shape_equal_the_reference_on_both_kernels() {
        // Odd depths, partial tiles, more than one work item and more than one depth block.
        for (m, k, n) in [
            (1, 1, 1),
            (13, 37, 45),
            (8, 2, 32),
            (100, 401, 70),
            (9, 520, 290),
        ] {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let want = reference(&a, &b, m, k, n);
            let rows = Rows::new(&a, m, k, k).unwrap();
            let packed = PackedB::from_rows(&b, k, n, n).unwrap();
            for kernel in Kernel::available() {
                let got = matmul_on(rows, &packed, None, kernel).unwrap();
                let e = max_error(&got, &want);
                assert!(e < 1e-4 * (k as f32).sqrt(), "{m}×{k}×{n} {kernel:?}: {e}");
            }
        }
    }

    #[test]
    fn both_packings_and_the_bias_agree() {
        let (m, k, n) = (11, 33, 40);
        let a = values(m * k, 3);
        let b = values(k * n, 4);
        // The same B stored transposed (n×k), as a linear layer's weight is.
        let mut bt = vec![bf16::ZERO; n * k];
        for q in 0..k {
            for j in 0..n {
                bt[j * k + q] = b[q * n + j];
            }
        }
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5).collect();
        let rows = Rows::new(&a, m, k, k).unwrap();
        let by_rows = PackedB::from_rows(&b, k, n, n).unwrap();
        let by_cols = PackedB::from_columns(&bt, k, n, k).unwrap();
        assert_eq!(by_rows.data, by_cols.data);
        let got = matmul(rows, &by_cols, Some(&bias)).unwrap();
        let mut want = reference(&a, &b, m, k, n);
        for (i, v) in want.iter_mut().enumerate() {
            *v += bias[i % n];
        }
        assert!(max_error(&got, &want) < 1e-3);
    }

    #[test]
    fn rounding_matches_half_to_nearest_even() {
        let mut s = 1u32;
        for _ in 0..100_000 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = f32::from_bits(s);
            if v.is_nan() {
                assert!(round(v).is_nan());
            } else {
                assert_eq!(round(v).to_bits(), bf16::from_f32(v).to_bits(), "{v:e}");
            }
        }
        for v in [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            1.0 + 1.0 / 256.0,
        ] {
            assert_eq!(round(v).to_bits(), bf16::from_f32(v).to_bits(), "{v:e}");
        }
    }

    #[test]
    fn views_outside_their_slice_and_mismatched_depths_are_errors() {
        let a = values(10, 5);
        assert!(Rows::new(&a, 3, 4, 4).is_err());
        assert!(Rows::new(&a, 2, 4, 3).is_err());
        assert!(PackedB::from_rows(&a, 3, 4, 4).is_err());
        let rows = Rows::new(&a, 2, 5, 5).unwrap();
        let b = PackedB::from_rows(&a, 2, 5, 5).unwrap();
        assert!(matmul(rows, &b, None).is_err());
        assert!(matmul(Rows::new(&a, 2, 2, 5).unwrap(), &b, Some(&[0.0])).is_err());
    }
}
