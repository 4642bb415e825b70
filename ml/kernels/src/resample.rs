//! Nearest-neighbour up-sampling by a whole factor.
//!
//! Inputs that record their operations are expanded by a broadcast instead of candle's
//! `upsample_nearest2d`, whose backward pass (candle 0.11.1) overwrites the input's gradient
//! rather than adding to it, which is wrong whenever the input is used elsewhere too (a ResNet
//! that up-samples both of its paths).

use candle_core::Tensor;

/// `x` B×C×H×W to B×C×(f·H)×(f·W), each pixel repeated f×f times.
pub fn upsample_nearest(x: &Tensor, f: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !x.track_op() {
        return x.upsample_nearest2d(f * h, f * w);
    }
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, f, w, f))?
        .reshape((b, c, f * h, f * w))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::upsample_nearest;

    #[test]
    fn both_paths_agree_and_gradients_accumulate() {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 2, 3))
            .unwrap();
        let plain = upsample_nearest(&x, 2).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let tracked = upsample_nearest(v.as_tensor(), 2).unwrap();
        let d = (&plain - &tracked)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        // x used twice: the gradient of sum(up(x)) + sum(x) is 4 + 1 everywhere.
        let loss = (tracked.sum_all().unwrap() + v.as_tensor().sum_all().unwrap()).unwrap();
        let g = loss.backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        assert!(g.to_vec1::<f32>().unwrap().iter().all(|&v| v == 5.0));
    }
}
