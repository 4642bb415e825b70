//! The element-wise arithmetic of the update rules, on f32 tensors, in the order of operations
//! diffusers uses (so that results match it to the last bits where it matters).

use candle_core::{Result, Tensor};

/// `a·x + b·y`.
pub fn lincomb(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    x.affine(a, 0.0)? + y.affine(b, 0.0)?
}

/// `x + c·z`.
pub fn add_scaled(x: &Tensor, c: f64, z: &Tensor) -> Result<Tensor> {
    x + z.affine(c, 0.0)?
}

/// `x·c`.
pub fn scale(x: &Tensor, c: f64) -> Result<Tensor> {
    x.affine(c, 0.0)
}
