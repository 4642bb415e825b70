//! 2-D convolution for the CPU: 3×3, stride 1, padding 1 convolutions (most of the UNet's and
//! the VAE's compute) run as one matrix product over an im2col buffer built in row bands, and
//! 1×1 convolutions as a plain matrix product; both are several times faster than candle's
//! generic conv2d on the CPU. Everything else goes to candle.
//!
//! Inputs that record gradients take the 3×3 path as a custom op whose backward gives only the
//! input's gradient, itself a 3×3 convolution (with the kernel transposed and flipped) on the
//! same path: candle's own backward computes the kernel's gradient too, unused when the weights
//! are constants, and runs the transposed convolution as a direct loop.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use half::bf16;
use rayon::prelude::*;

use crate::bf16_gemm::{self, put, PackedB, Rows, NR};

/// Bytes of im2col buffer per band (bounds memory for large images).
const BAND_BYTES: usize = 64 << 20;

/// A convolution layer with the same weights and names as `candle_nn::Conv2d`.
pub struct Conv {
    inner: Conv2d,
    /// O×(C·k²) weight matrix for the fast paths (k = 1 or 3).
    matrix: Option<Tensor>,
    kernel: usize,
    /// The 3×3 path as a differentiable op (for inputs that record gradients).
    input_op: Option<Arc<Box<dyn CustomOp1 + Send + Sync>>>,
}

impl Conv {
    /// Loads `weight` (O×C×k×k) and `bias`.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        cfg: Conv2dConfig,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let inner = candle_nn::conv2d(cin, cout, k, cfg, vb)?;
        let plain = cfg.stride == 1 && cfg.dilation == 1 && cfg.groups == 1;
        let fast = plain && ((k == 3 && cfg.padding == 1) || (k == 1 && cfg.padding == 0));
        let matrix = if fast {
            Some(inner.weight().reshape((cout, cin * k * k))?.contiguous()?)
        } else {
            None
        };
        let input_op = match &matrix {
            Some(w) if k == 3 && !inner.weight().track_op() => {
                let op: Box<dyn CustomOp1 + Send + Sync> =
                    Box::new(Conv3x3::new(w.clone(), inner.weight())?);
                Some(Arc::new(op))
            }
            _ => None,
        };
        Ok(Self {
            inner,
            matrix,
            kernel: k,
            input_op,
        })
    }

    fn pointwise_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, c, h, wd) = x.dims4()?;
        let o = w.dim(0)?;
        let out = w
            .broadcast_left(b)?
            .matmul(&x.reshape((b, c, h * wd))?)?
            .reshape((b, o, h, wd))?;
        add_bias(out, bias)
    }

    /// Half-precision inputs: candle's CPU matrix product has no bf16/f16 kernel, so the layer
    /// runs in f32 with its weights widened for the call (one layer's worth of f32 at a time;
    /// the model keeps holding its weights as stored). The result is in the input's dtype.
    fn widened_forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let f32 = candle_core::DType::F32;
        let dtype = x.dtype();
        let x = x.to_dtype(f32)?;
        let bias = self.inner.bias().map(|b| b.to_dtype(f32)).transpose()?;
        let out = match &self.matrix {
            Some(w) if self.kernel == 1 => {
                self.pointwise_forward(&x, &w.to_dtype(f32)?, bias.as_ref())?
            }
            Some(w) if x.dim(3)? > 1 => {
                add_bias(im2col_conv(&x, &w.to_dtype(f32)?)?, bias.as_ref())?
            }
            _ => Conv2d::new(
                self.inner.weight().to_dtype(f32)?,
                bias,
                *self.inner.config(),
            )
            .forward(&x)?,
        };
        out.to_dtype(dtype)
    }
}

impl Conv {
    /// bf16 weights on the CPU (1×1 and 3×3 layers): the bf16 matrix product of the weights,
    /// read in place as O rows of C·k², with the input packed per band of image rows (the 3×3
    /// im2col written straight into the packed layout), accumulated in f32; bias added in f32.
    fn bf16_forward(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, wd) = x.dims4()?;
        let (k, o) = (self.kernel, w.dim(0)?);
        let depth = c * k * k;
        let plane = h * wd;
        let x = x.contiguous()?;
        let bias = self
            .inner
            .bias()
            .map(|b| b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>())
            .transpose()?;
        let band = (BAND_BYTES / (depth * wd * 2).max(1)).clamp(1, h.max(1));
        let mut out = vec![bf16::ZERO; b * o * plane];
        {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws)) = (&*xs, &*ws)
            else {
                candle_core::bail!("the bf16 convolution runs on the CPU");
            };
            let data = &xs.as_slice::<bf16>()?[xl.start_offset()..];
            let weights = &ws.as_slice::<bf16>()?[wl.start_offset()..];
            let a = Rows::new(weights, o, depth, depth).map_err(candle_core::Error::wrap)?;
            for bi in 0..b {
                let img = &data[bi * c * plane..(bi + 1) * c * plane];
                let dst = &mut out[bi * o * plane..(bi + 1) * o * plane];
                let mut y0 = 0;
                while y0 < h {
                    let n = band.min(h - y0);
                    let packed = if k == 1 {
                        PackedB::from_rows(&img[y0 * wd..], c, n * wd, plane)
                            .map_err(candle_core::Error::wrap)?
                    } else {
                        im2col_packed(img, c, h, wd, y0, n)
                    };
                    let values =
                        bf16_gemm::matmul(a, &packed, None).map_err(candle_core::Error::wrap)?;
                    let span = y0 * wd..(y0 + n) * wd;
                    dst.par_chunks_mut(plane.max(1))
                        .zip(values.par_chunks((n * wd).max(1)))
                        .enumerate()
                        .for_each(|(oi, (d, v))| {
                            let add = bias.as_ref().map_or(0.0, |b| b[oi]);
                            for (d, v) in d[span.clone()].iter_mut().zip(v) {
                                *d = bf16_gemm::round(v + add);
                            }
                        });
                    y0 += n;
                }
            }
        }
        Tensor::from_vec(out, (b, o, h, wd), x.device())
    }
}

/// Rows `y0..y0+n` of one C×H×W bf16 image as the B side of a 3×3 / padding-1 convolution:
/// B(c·9 + ky·3 + kx, r·W + x) = pixel (y0 + r + ky − 1, x + kx − 1) of channel c, or 0 outside,
/// written panel by panel in the packed layout.
#[allow(clippy::needless_range_loop)]
fn im2col_packed(img: &[bf16], c: usize, h: usize, w: usize, y0: usize, n: usize) -> PackedB {
    let cols = n * w;
    PackedB::build(c * 9, cols, |p, panel| {
        let (q0, count) = (p * NR, NR.min(cols - p * NR));
        // Offset in a channel plane of tap t for column j; usize::MAX outside the image.
        let mut taps = [[usize::MAX; NR]; 9];
        for j in 0..count {
            let (r, x) = ((q0 + j) / w, (q0 + j) % w);
            for ky in 0..3 {
                for kx in 0..3 {
                    let (sy, sx) = (y0 + r + ky, x + kx);
                    if (1..=h).contains(&sy) && (1..=w).contains(&sx) {
                        taps[ky * 3 + kx][j] = (sy - 1) * w + (sx - 1);
                    }
                }
            }
        }
        for ch in 0..c {
            let src = &img[ch * h * w..(ch + 1) * h * w];
            for (t, offsets) in taps.iter().enumerate() {
                for (j, &at) in offsets[..count].iter().enumerate() {
                    if at != usize::MAX {
                        put(panel, ch * 9 + t, j, src[at].to_bits());
                    }
                }
            }
        }
    })
}

fn add_bias(out: Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(bias) => out.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?),
        None => Ok(out),
    }
}

/// The 3×3, padding-1 convolution of `x` (N×C×H×W, f32, CPU) with the O×(C·9) matrix `w`,
/// without bias, outside candle's graph.
fn im2col_conv(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let o = w.dim(0)?;
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let data = match &*storage {
        candle_core::Storage::Cpu(cpu) => &cpu.as_slice::<f32>()?[layout.start_offset()..],
        _ => candle_core::bail!("im2col conv needs a CPU tensor"),
    };
    let band = (BAND_BYTES / (c * 9 * wd * 4).max(1)).clamp(1, h);
    let mut outs = Vec::with_capacity(b);
    for bi in 0..b {
        let img = &data[bi * c * h * wd..(bi + 1) * c * h * wd];
        let mut bands = Vec::with_capacity(h.div_ceil(band));
        let mut y0 = 0;
        while y0 < h {
            let n = band.min(h - y0);
            let cols = im2col_band(img, c, h, wd, y0, n);
            let cols = Tensor::from_vec(cols, (c * 9, n * wd), x.device())?;
            bands.push(w.matmul(&cols)?.reshape((o, n, wd))?);
            y0 += n;
        }
        outs.push(if bands.len() == 1 {
            bands.remove(0)
        } else {
            Tensor::cat(&bands, 1)?
        });
    }
    Tensor::stack(&outs, 0)
}

/// The 3×3 path as a candle op with constant weights: forward through [`im2col_conv`], and a
/// backward that gives the input's gradient only, the gradient convolved with the kernel
/// transposed (C×O) and flipped in both spatial axes, on the same path.
struct Conv3x3 {
    /// O×(C·9), shared with the layer.
    forward: Tensor,
    /// O×C×3×3, shared with the layer.
    weight: Tensor,
    /// C×(O·9): entry (c, o·9 + ky·3 + kx) = weight (o, c, 2 − ky, 2 − kx); made at the first
    /// backward pass, so models that never give gradients do not hold a second copy.
    backward: std::sync::OnceLock<Tensor>,
}

impl Conv3x3 {
    fn new(matrix: Tensor, weight: &Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            forward: matrix,
            weight: weight.clone(),
            backward: std::sync::OnceLock::new(),
        })
    }

    fn backward_matrix(&self) -> candle_core::Result<&Tensor> {
        if let Some(m) = self.backward.get() {
            return Ok(m);
        }
        let w = &self.weight;
        let (o, c, _, _) = w.dims4()?;
        let flip = Tensor::from_vec((0..3u32).rev().collect::<Vec<_>>(), 3, w.device())?;
        let m = w
            .index_select(&flip, 2)?
            .index_select(&flip, 3)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((c, o * 9))?;
        Ok(self.backward.get_or_init(|| m))
    }
}

impl CustomOp1 for Conv3x3 {
    fn name(&self) -> &'static str {
        "latentflow-conv3x3"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let data = storage.as_slice::<f32>()?;
        let x = match layout.contiguous_offsets() {
            Some((start, end)) => {
                Tensor::from_slice(&data[start..end], (b, c, h, w), &candle_core::Device::Cpu)?
            }
            None => candle_core::bail!("latentflow-conv3x3 takes a contiguous input"),
        };
        let out = im2col_conv(&x, &self.forward)?;
        let shape = out.shape().clone();
        let values = out.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(values), shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        im2col_conv(&grad.detach(), self.backward_matrix()?).map(Some)
    }
}

/// Rows `y0..y0+n` of the 3×3 / padding-1 im2col matrix of one C×H×W image: (C·9)×(n·W),
/// row `c·9 + ky·3 + kx` holding input pixel (y + ky − 1, x + kx − 1) or 0 outside.
fn im2col_band(img: &[f32], c: usize, h: usize, w: usize, y0: usize, n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let plane = n * w;
    let mut cols = vec![0f32; c * 9 * plane];
    cols.par_chunks_mut(9 * plane)
        .enumerate()
        .for_each(|(ch, dst)| {
            let src = &img[ch * h * w..(ch + 1) * h * w];
            for ky in 0..3 {
                for kx in 0..3 {
                    let tap = &mut dst[(ky * 3 + kx) * plane..(ky * 3 + kx + 1) * plane];
                    for r in 0..n {
                        let sy = (y0 + r + ky) as isize - 1;
                        if sy < 0 || sy >= h as isize {
                            continue;
                        }
                        let row = &src[sy as usize * w..(sy as usize + 1) * w];
                        let out = &mut tap[r * w..(r + 1) * w];
                        match kx {
                            0 => out[1..].copy_from_slice(&row[..w - 1]),
                            1 => out.copy_from_slice(row),
                            _ => out[..w - 1].copy_from_slice(&row[1..]),
                        }
                    }
                }
            }
        });
    cols
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        use candle_core::DType::{BF16, F16, F32};
        let bias = self.inner.bias();
        match (&self.matrix, x.device(), x.dtype()) {
            (Some(w), candle_core::Device::Cpu, F32) if self.kernel == 1 => {
                self.pointwise_forward(x, w, bias)
            }
            // The im2col buffer is built outside candle's graph: inputs that record their
            // operations for gradients take it as a custom op with its own backward.
            (Some(w), candle_core::Device::Cpu, F32) if x.dim(3)? > 1 => {
                match (&self.input_op, x.track_op()) {
                    (_, false) => add_bias(im2col_conv(x, w)?, bias),
                    (Some(op), true) => add_bias(x.contiguous()?.apply_op1_arc(op.clone())?, bias),
                    (None, true) => self.inner.forward(x),
                }
            }
            (Some(w), candle_core::Device::Cpu, BF16) if w.dtype() == BF16 && !x.track_op() => {
                self.bf16_forward(x, w)
            }
            (_, candle_core::Device::Cpu, BF16 | F16) => self.widened_forward(x),
            _ => self.inner.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn the_fast_path_equals_candle_conv2d() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let x = Tensor::randn(0f32, 1.0, (2, 5, 9, 13), &dev).unwrap();
        for (k, padding) in [(3, 1), (1, 0)] {
            let cfg = Conv2dConfig {
                padding,
                ..Default::default()
            };
            let conv = Conv::new(5, 7, k, cfg, vb.pp(format!("k{k}"))).unwrap();
            assert!(conv.matrix.is_some());
            let fast = conv.forward(&x).unwrap();
            let slow = conv.inner.forward(&x).unwrap();
            let d = (fast - slow).unwrap().abs().unwrap().max_all().unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "k={k}: {d}");
        }
    }

    #[test]
    fn bf16_layers_run_in_f32_and_keep_their_dtype() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 9, 13), &dev).unwrap();
        // 3×3, 1×1 and a strided 3×3 (candle's path), each against its f32 twin.
        for (k, padding, stride) in [(3, 1, 1), (1, 0, 1), (3, 1, 2)] {
            let weights: std::collections::HashMap<String, Tensor> = [
                (
                    "weight",
                    Tensor::randn(0f32, 1.0, (7, 5, k, k), &dev).unwrap(),
                ),
                ("bias", Tensor::randn(0f32, 1.0, 7, &dev).unwrap()),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
            let cfg = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let vb16 = VarBuilder::from_tensors(weights.clone(), DType::BF16, &dev);
            let vb32 = VarBuilder::from_tensors(weights, DType::F32, &dev);
            let half = Conv::new(5, 7, k, cfg, vb16).unwrap();
            let full = Conv::new(5, 7, k, cfg, vb32).unwrap();
            let y = half.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap();
            assert_eq!(y.dtype(), DType::BF16);
            let want = full.forward(&x).unwrap();
            let d = (y.to_dtype(DType::F32).unwrap() - &want).unwrap();
            let norm = |t: &Tensor| {
                t.sqr()
                    .and_then(|t| t.sum_all())
                    .and_then(|t| t.to_scalar::<f32>())
                    .unwrap()
                    .sqrt()
            };
            let rel = norm(&d) / norm(&want);
            assert!(rel < 1e-2, "k={k} stride={stride}: {rel}");
        }
    }

    #[test]
    fn the_bf16_product_equals_the_widened_layer_on_the_same_values() {
        let dev = Device::Cpu;
        // Two bands of rows at 3×3 (a small band budget is not needed: 1 row per band would
        // be the same code), odd sizes, 1×1 and 3×3.
        let x = Tensor::randn(0f32, 1.0, (2, 7, 11, 6), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        for k in [1, 3] {
            let weights: std::collections::HashMap<String, Tensor> = [
                (
                    "weight",
                    Tensor::randn(0f32, 1.0, (9, 7, k, k), &dev).unwrap(),
                ),
                ("bias", Tensor::randn(0f32, 1.0, 9, &dev).unwrap()),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
            let cfg = Conv2dConfig {
                padding: k / 2,
                ..Default::default()
            };
            let vb = VarBuilder::from_tensors(weights, DType::BF16, &dev);
            let conv = Conv::new(7, 9, k, cfg, vb).unwrap();
            let got = conv.forward(&x).unwrap().to_dtype(DType::F32).unwrap();
            let want = conv
                .widened_forward(&x)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let max = |t: &Tensor| {
                t.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let rel = max(&(&got - &want).unwrap()) / max(&want);
            // Both round the same f32 sums once to bf16.
            assert!(rel < 8e-3, "k={k}: {rel}");
            for (y0, n) in [(0, 11), (0, 4), (4, 7)] {
                if k == 3 {
                    // Every band of the packed im2col equals candle's im2col of those rows.
                    let img = x
                        .get(1)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<bf16>()
                        .unwrap();
                    let packed = im2col_packed(&img, 7, 11, 6, y0, n);
                    let wide: Vec<f32> = img.iter().map(|v| v.to_f32()).collect();
                    let cols = im2col_band(&wide, 7, 11, 6, y0, n);
                    for kk in 0..63 {
                        for q in 0..n * 6 {
                            let at =
                                (q / NR) * 32 * NR * 2 + (kk / 2) * NR * 2 + (q % NR) * 2 + kk % 2;
                            let v = bf16::from_bits(packed.data()[at]).to_f32();
                            assert_eq!(v, cols[kk * n * 6 + q], "k {kk} col {q}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_fast_path_gives_candles_input_gradient() {
        let dev = Device::Cpu;
        let weights: std::collections::HashMap<String, Tensor> = [
            (
                "weight",
                Tensor::randn(0f32, 1.0, (7, 5, 3, 3), &dev).unwrap(),
            ),
            ("bias", Tensor::randn(0f32, 1.0, 7, &dev).unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv::new(5, 7, 3, cfg, vb).unwrap();
        assert!(conv.input_op.is_some());
        let x = candle_core::Var::randn(0f32, 1.0, (2, 5, 9, 13), &dev).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (2, 7, 9, 13), &dev).unwrap();
        let grad = |y: Tensor| {
            let loss = (y * &probe).unwrap().sum_all().unwrap();
            loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
        };
        let fast_y = conv.forward(x.as_tensor()).unwrap();
        let slow_y = conv.inner.forward(x.as_tensor()).unwrap();
        let max = |t: Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(max((&fast_y - &slow_y).unwrap()) < 1e-4);
        let (fast, slow) = (grad(fast_y), grad(slow_y));
        let d = max((&fast - &slow).unwrap()) / max(slow);
        assert!(d < 1e-5, "input gradient: relative error {d}");
    }
}
