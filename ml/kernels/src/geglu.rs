//! GEGLU, the gate of the SD transformer blocks' feed-forward: the projection's last axis
//! split in halves `a | g`, `a · gelu(g)` with the exact (erf) GELU. On the CPU (f32 or bf16,
//! no gradients) one pass over the projection; candle's narrow, GELU and product otherwise.

use candle_core::{DType, Device, Tensor};
use half::bf16;
use rayon::prelude::*;

/// `a · gelu_erf(g)` for `h = a | g` along the last axis.
pub fn geglu(h: &Tensor) -> candle_core::Result<Tensor> {
    let last = h.rank().saturating_sub(1);
    let width = h.dim(last)?;
    if !width.is_multiple_of(2) {
        candle_core::bail!("GEGLU splits its last axis in halves, it has {width}");
    }
    let half = width / 2;
    let fast = matches!(h.device(), Device::Cpu)
        && matches!(h.dtype(), DType::F32 | DType::BF16)
        && !h.track_op()
        && half > 0;
    if !fast {
        return h.narrow(last, 0, half)? * h.narrow(last, half, half)?.gelu_erf()?;
    }
    let mut dims = h.dims().to_vec();
    dims[last] = half;
    let rows: usize = dims[..last].iter().product();
    let h = h.contiguous()?;
    let (storage, layout) = h.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the fused GEGLU runs on the CPU");
    };
    let start = layout.start_offset();
    // Rows per task: enough work to be worth a thread.
    let per = (1 << 15) / width + 1;
    match h.dtype() {
        DType::F32 => {
            let src = &cpu.as_slice::<f32>()?[start..start + rows * width];
            let mut out = vec![0f32; rows * half];
            out.par_chunks_mut(per * half)
                .zip(src.par_chunks(per * width))
                .for_each(|(o, s)| crate::vmath::geglu(s, half, o));
            Tensor::from_vec(out, dims, &Device::Cpu)
        }
        _ => {
            let src = &cpu.as_slice::<bf16>()?[start..start + rows * width];
            let mut out = vec![bf16::ZERO; rows * half];
            out.par_chunks_mut(per * half)
                .zip(src.par_chunks(per * width))
                .for_each(|(o, s)| {
                    let wide: Vec<f32> = s.iter().map(|v| v.to_f32()).collect();
                    let mut res = vec![0f32; o.len()];
                    crate::vmath::geglu(&wide, half, &mut res);
                    o.iter_mut()
                        .zip(&res)
                        .for_each(|(o, v)| *o = bf16::from_f32(*v));
                });
            Tensor::from_vec(out, dims, &Device::Cpu)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_gate_equals_candles_ops() {
        let dev = Device::Cpu;
        let h = Tensor::randn(0f32, 2.0, (2, 5, 18), &dev).unwrap();
        let want =
            (h.narrow(2, 0, 9).unwrap() * h.narrow(2, 9, 9).unwrap().gelu_erf().unwrap()).unwrap();
        let got = geglu(&h).unwrap();
        assert_eq!(got.dims(), &[2, 5, 9]);
        let d = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        let odd = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        assert!(geglu(&odd).is_err());
    }
}
