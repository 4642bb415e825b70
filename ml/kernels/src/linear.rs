//! Linear layers with the weights, names and results of `candle_nn::Linear`: f32 (and any
//! other case) runs candle's product; bf16 weights on the CPU run [`crate::bf16_gemm`] on the
//! bf16 activations with f32 accumulation, instead of candle's product, which widens both
//! sides to f32 buffers on every call.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use half::bf16;

use crate::bf16_gemm::{self, PackedB, Rows};

/// `y = x·Wᵀ + b` for W out×in.
#[derive(Clone, Debug)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// A layer over `weight` (out×in) and an optional `bias` (out).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            inner: candle_nn::Linear::new(weight, bias),
        }
    }

    /// The out×in weight.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// Whether [`Module::forward`] takes the bf16 product for `x`.
    fn takes_bf16(&self, x: &Tensor) -> bool {
        let w = self.weight();
        x.dtype() == DType::BF16
            && w.dtype() == DType::BF16
            && matches!(x.device(), Device::Cpu)
            && !x.track_op()
            && !w.track_op()
            && w.rank() == 2
    }

    fn bf16_forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.weight().contiguous()?;
        let (out, depth) = w.dims2()?;
        let dims = x.dims().to_vec();
        let Some((&last, lead)) = dims.split_last() else {
            candle_core::bail!("a linear layer takes at least one dimension");
        };
        if last != depth {
            candle_core::bail!("linear layer of {depth} inputs given {last}");
        }
        let rows: usize = lead.iter().product();
        let x = x.contiguous()?;
        let bias = self
            .bias()
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?;
        let values = {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws)) = (&*xs, &*ws)
            else {
                candle_core::bail!("the bf16 linear layer runs on the CPU");
            };
            let xd = &xs.as_slice::<bf16>()?[xl.start_offset()..];
            let wd = &ws.as_slice::<bf16>()?[wl.start_offset()..];
            let a = Rows::new(xd, rows, depth, depth).map_err(candle_core::Error::wrap)?;
            let b =
                PackedB::from_columns(wd, depth, out, depth).map_err(candle_core::Error::wrap)?;
            bf16_gemm::matmul(a, &b, bias.as_deref()).map_err(candle_core::Error::wrap)?
        };
        let mut shape = lead.to_vec();
        shape.push(out);
        Tensor::from_vec(bf16_gemm::narrow(&values), shape, &Device::Cpu)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.takes_bf16(x) {
            self.bf16_forward(x)
        } else {
            self.inner.forward(x)
        }
    }
}

/// `weight` (out×in) and `bias` under `vb`, as `candle_nn::linear`.
pub fn linear(inputs: usize, outputs: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    linear_b(inputs, outputs, true, vb)
}

/// `weight` only, as `candle_nn::linear_no_bias`.
pub fn linear_no_bias(
    inputs: usize,
    outputs: usize,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    linear_b(inputs, outputs, false, vb)
}

/// With or without a bias, as `candle_nn::linear_b`.
pub fn linear_b(
    inputs: usize,
    outputs: usize,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    let inner = candle_nn::linear_b(inputs, outputs, bias, vb)?;
    Ok(Linear { inner })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_layers_equal_candles_product_on_the_same_values() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (37, 45), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 37, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 13, 45), &dev).unwrap();
        let to16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let half = Linear::new(to16(&w), Some(to16(&b)));
        let xh = to16(&x);
        assert!(half.takes_bf16(&xh));
        let got = half.forward(&xh).unwrap();
        assert_eq!(got.dims(), &[2, 13, 37]);
        assert_eq!(got.dtype(), DType::BF16);
        // candle's product of the same bf16 values, widened.
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let want = candle_nn::Linear::new(wide(&to16(&w)), Some(wide(&to16(&b))))
            .forward(&wide(&xh))
            .unwrap();
        let d = (wide(&got) - &want).unwrap().abs().unwrap();
        let rel = d.max_all().unwrap().to_scalar::<f32>().unwrap()
            / want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        // One bf16 rounding of the result.
        assert!(rel < 8e-3, "{rel}");
        // f32 stays on candle's path.
        let full = Linear::new(w, Some(b));
        assert!(!full.takes_bf16(&x));
    }
}
