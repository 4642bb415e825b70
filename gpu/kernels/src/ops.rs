//! The operations: each checks its inputs' shapes, then launches its kernel.

use latentflow_plugin_api::gpu::GpuGroups;
use latentflow_plugin_api::{NodeError, Tensor};

use crate::buffer::{Gpu, WORKGROUP};

const ELEMENTWISE: &str = include_str!("wgsl/elementwise.wgsl");
const SOFTMAX: &str = concat!(
    include_str!("wgsl/reduce.wgsl"),
    include_str!("wgsl/softmax.wgsl")
);
const GROUP_NORM: &str = concat!(
    include_str!("wgsl/reduce.wgsl"),
    include_str!("wgsl/group_norm.wgsl")
);
const MATMUL: &str = include_str!("wgsl/matmul.wgsl");

/// One-input element-wise maps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    /// x·σ(x).
    Silu,
    /// x·Φ(x), with the exact (erf) Φ.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// eˣ.
    Exp,
    /// tanh x.
    Tanh,
    /// σ(x).
    Sigmoid,
    /// scale·x + shift.
    Affine {
        /// The factor.
        scale: f32,
        /// The offset.
        shift: f32,
    },
}

/// Two-input element-wise maps over tensors of one shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Binary {
    /// a + b.
    Add,
    /// a − b.
    Sub,
    /// a·b.
    Mul,
    /// a / b.
    Div,
    /// α·a + β·b.
    Mix {
        /// The weight of a.
        alpha: f32,
        /// The weight of b.
        beta: f32,
    },
}

fn u32_of(what: &str, v: usize) -> Result<u32, NodeError> {
    u32::try_from(v).map_err(|_| {
        NodeError::too_large(format!(
            "{what} {v} is over the GPU kernels' 32-bit indices"
        ))
    })
}

/// The kernels index elements with u32.
fn elements(t: &Tensor, what: &str) -> Result<u32, NodeError> {
    u32_of(&format!("{what}'s element count"), t.numel())
}

impl Gpu {
    /// An element-wise map of `x`.
    pub fn unary(&self, x: &Tensor, op: Unary) -> Result<Tensor, NodeError> {
        let a = self.input(x, "the input")?;
        let n = elements(x, "the input")?;
        let (code, alpha, beta) = match op {
            Unary::Silu => (0, 0.0, 0.0),
            Unary::Gelu => (1, 0.0, 0.0),
            Unary::Exp => (2, 0.0, 0.0),
            Unary::Affine { scale, shift } => (3, scale, shift),
            Unary::Tanh => (4, 0.0, 0.0),
            Unary::Sigmoid => (5, 0.0, 0.0),
            Unary::GeluTanh => (6, 0.0, 0.0),
        };
        let p = self.params(&[n, code, f32::to_bits(alpha), f32::to_bits(beta)])?;
        let groups = self.groups_for(u64::from(n).div_ceil(u64::from(WORKGROUP)))?;
        self.output(&x.shape(), |out| {
            self.launch(
                ELEMENTWISE,
                "unary",
                &[(0, p.buffer), (1, a), (3, out)],
                groups,
            )
        })
    }

    /// An element-wise map of `a` and `b` (one shape; no broadcasting).
    pub fn binary(&self, a: &Tensor, b: &Tensor, op: Binary) -> Result<Tensor, NodeError> {
        if a.shape() != b.shape() {
            return Err(NodeError::invalid(format!(
                "the GPU element-wise kernels take tensors of one shape; got {:?} and {:?}",
                a.shape(),
                b.shape()
            )));
        }
        let (ba, bb) = (self.input(a, "a")?, self.input(b, "b")?);
        let n = elements(a, "a")?;
        let (code, alpha, beta) = match op {
            Binary::Add => (0, 0.0, 0.0),
            Binary::Sub => (1, 0.0, 0.0),
            Binary::Mul => (2, 0.0, 0.0),
            Binary::Div => (3, 0.0, 0.0),
            Binary::Mix { alpha, beta } => (4, alpha, beta),
        };
        let p = self.params(&[n, code, f32::to_bits(alpha), f32::to_bits(beta)])?;
        let groups = self.groups_for(u64::from(n).div_ceil(u64::from(WORKGROUP)))?;
        self.output(&a.shape(), |out| {
            self.launch(
                ELEMENTWISE,
                "binary",
                &[(0, p.buffer), (1, ba), (2, bb), (3, out)],
                groups,
            )
        })
    }

    /// softmax(scale·x) over the last dimension.
    pub fn softmax(&self, x: &Tensor, scale: f32) -> Result<Tensor, NodeError> {
        let b = self.input(x, "the input")?;
        let shape = x.shape();
        let cols = *shape
            .last()
            .ok_or_else(|| NodeError::invalid("softmax of a scalar"))?;
        if cols == 0 {
            return self.output(&shape, |_| Ok(()));
        }
        let rows = u32_of("row count", x.numel() / cols)?;
        elements(x, "the input")?;
        let p = self.params(&[rows, cols as u32, f32::to_bits(scale), 0])?;
        let groups = self.groups_for(u64::from(rows))?;
        self.output(&shape, |out| {
            self.launch(
                SOFTMAX,
                "softmax",
                &[(0, p.buffer), (1, b), (2, out)],
                groups,
            )
        })
    }

    /// GroupNorm of x (N×C×…) in `groups` groups, with an optional per-channel affine and SiLU.
    pub fn group_norm(
        &self,
        x: &Tensor,
        groups: usize,
        eps: f32,
        affine: Option<(&Tensor, &Tensor)>,
        silu: bool,
    ) -> Result<Tensor, NodeError> {
        let bx = self.input(x, "the input")?;
        let shape = x.shape();
        if shape.len() < 2 {
            return Err(NodeError::invalid(format!(
                "GroupNorm takes N×C×…, got shape {shape:?}"
            )));
        }
        let (n, c) = (shape[0], shape[1]);
        if groups == 0 || c % groups != 0 {
            return Err(NodeError::invalid(format!(
                "{c} channels do not split into {groups} groups"
            )));
        }
        let spatial: usize = shape[2..].iter().product();
        elements(x, "the input")?;
        let (bw, bb) = match affine {
            Some((w, b)) => {
                if w.shape() != [c] || b.shape() != [c] {
                    return Err(NodeError::invalid(format!(
                        "GroupNorm's weight and bias must be [{c}], got {:?} and {:?}",
                        w.shape(),
                        b.shape()
                    )));
                }
                (self.input(w, "the weight")?, self.input(b, "the bias")?)
            }
            // The kernel binds them either way; x stands in, unread.
            None => (bx, bx),
        };
        let flags = u32::from(affine.is_some()) | (u32::from(silu) << 1);
        let items = n
            .checked_mul(groups)
            .ok_or_else(|| NodeError::too_large("GroupNorm's group count is too large"))?;
        let items = u32_of("GroupNorm's group count", items)?;
        let wg = self.groups_for(u64::from(items))?;
        let p = self.params(&[
            c as u32,
            spatial as u32,
            groups as u32,
            flags,
            f32::to_bits(eps),
            items,
            0,
            0,
        ])?;
        if items == 0 {
            return self.output(&shape, |_| Ok(()));
        }
        self.output(&shape, |out| {
            self.launch(
                GROUP_NORM,
                "group_norm",
                &[(0, p.buffer), (1, bx), (2, bw), (3, bb), (4, out)],
                wg,
            )
        })
    }

    /// alpha·a·b (or alpha·a·bᵀ) for a B×M×K (or M×K) and b B×K×N (B×N×K transposed).
    pub fn matmul(
        &self,
        a: &Tensor,
        b: &Tensor,
        transpose_b: bool,
        alpha: f32,
    ) -> Result<Tensor, NodeError> {
        let (sa, sb) = (a.shape(), b.shape());
        let bad = || {
            NodeError::invalid(format!(
                "matmul takes [B,]M×K and [B,]K×N{}; got {sa:?} and {sb:?}",
                if transpose_b {
                    " (transposed: N×K)"
                } else {
                    ""
                }
            ))
        };
        if sa.len() < 2 || sa.len() != sb.len() || sa[..sa.len() - 2] != sb[..sb.len() - 2] {
            return Err(bad());
        }
        let r = sa.len();
        let (m, k) = (sa[r - 2], sa[r - 1]);
        let (kb, n) = if transpose_b {
            (sb[r - 1], sb[r - 2])
        } else {
            (sb[r - 2], sb[r - 1])
        };
        if k != kb {
            return Err(bad());
        }
        let batch: usize = sa[..r - 2].iter().product();
        let (ba, bb) = (self.input(a, "a")?, self.input(b, "b")?);
        elements(a, "a")?;
        elements(b, "b")?;
        let mut shape = sa[..r - 2].to_vec();
        shape.extend([m, n]);
        let out_n = batch
            .checked_mul(m)
            .and_then(|v| v.checked_mul(n))
            .ok_or_else(|| {
                NodeError::too_large(format!("a {batch}×{m}×{n} product is too large"))
            })?;
        let out_n = u32_of("the product's element count", out_n)?;
        let max = self.limits().max_workgroups_per_dimension as usize;
        let (gx, gy) = (n.div_ceil(16), m.div_ceil(16));
        if gx > max || gy > max || batch > max {
            return Err(NodeError::too_large(format!(
                "a {batch}×{m}×{n} product is more workgroups than this device dispatches"
            )));
        }
        if out_n == 0 || k == 0 {
            return self.output(&shape, |_| Ok(()));
        }
        let p = self.params(&[
            m as u32,
            n as u32,
            k as u32,
            u32::from(transpose_b),
            f32::to_bits(alpha),
            batch as u32,
            0,
            0,
        ])?;
        self.output(&shape, |out| {
            self.launch(
                MATMUL,
                "matmul",
                &[(0, p.buffer), (1, ba), (2, bb), (3, out)],
                GpuGroups {
                    x: gx as u32,
                    y: gy as u32,
                    z: batch as u32,
                },
            )
        })
    }

    /// softmax(scale·q·kᵀ)·v for q B×Lq×d, k and v B×Lk×d (B may fold batch and heads).
    pub fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
    ) -> Result<Tensor, NodeError> {
        if k.shape() != v.shape() {
            return Err(NodeError::invalid(format!(
                "attention's keys and values must have one shape; got {:?} and {:?}",
                k.shape(),
                v.shape()
            )));
        }
        let scores = self.matmul(q, k, true, scale)?;
        let p = self.softmax(&scores, 1.0)?;
        self.matmul(&p, v, false, 1.0)
    }
}
