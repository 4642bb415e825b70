//! Compute kernels shared by every LatentFlow model: convolution, attention and
//! normalisation on candle tensors.
//!
//! Each operation has one entry point that picks its implementation from the shape, dtype and
//! device of its inputs (today: fast CPU paths for the shapes diffusion models use, candle's
//! generic operations otherwise). Models call these and never choose a kernel themselves, so a
//! faster kernel or a new backend lands here and every model gets it.

pub mod attention;
pub mod bf16_gemm;
pub mod conv;
mod disjoint;
pub mod flash;
pub mod geglu;
pub mod linear;
pub mod norm;
pub mod resample;
pub mod vmath;

pub use attention::{attention, Attend};
pub use conv::Conv;
pub use geglu::geglu;
pub use linear::{linear, linear_b, linear_no_bias, Linear};
pub use norm::GroupNorm;
pub use resample::upsample_nearest;
