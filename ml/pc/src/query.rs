//! Exact queries in two passes, in log space, batched over evidence.
//!
//! - [`forward`]: every node's log value under each evidence; the root's is log Z(e), the
//!   probability of the evidence (soft evidence: Σ_z Π_i e_i(z_i) p(z)).
//! - [`Forward::backward`]: log ∂Z/∂v_n for every node (products use prefix and suffix sums of
//!   their children's logs, so a zero child never divides), and the flows
//!   F_n = ∂log Z/∂log v_n derived from it.
//! - [`conditional`]: per variable, a distribution over its values, in two semantics
//!   ([`Semantics`]).

use crate::evidence::Evidence;
use crate::{Circuit, Node, PcError};

/// log(e^a + e^b), exact at −∞.
fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// The forward pass: log values of every node for every evidence.
pub struct Forward<'c> {
    circuit: &'c Circuit,
    evidence: Vec<Evidence>,
    /// `log_v[node * batch + b]`.
    log_v: Vec<f64>,
}

/// The backward pass: log ∂Z/∂v_n for every node and evidence.
pub struct Flows<'f, 'c> {
    forward: &'f Forward<'c>,
    /// `log_d[node * batch + b]`.
    log_d: Vec<f64>,
}

/// Which conditional marginals [`conditional`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantics {
    /// pyjuice's `conditional`: r_i(c) ∝ Σ_{n over i} F_n θ_{n,c}, the input distributions
    /// weighted by their flows (what Tiramisu uses).
    Flows,
    /// The posterior p(z_i = c | e) ∝ e_i(c) Σ_{n over i} θ_{n,c} ∂Z/∂v_n.
    Posterior,
}

/// Runs the forward pass for a batch of evidence.
pub fn forward<'c>(circuit: &'c Circuit, evidence: &[Evidence]) -> Result<Forward<'c>, PcError> {
    if evidence.is_empty() {
        return Err(PcError::Evidence("no evidence given".into()));
    }
    for e in evidence {
        e.check(circuit)?;
    }
    let b = evidence.len();
    let nodes = circuit.nodes();
    let total = nodes
        .len()
        .checked_mul(b)
        .ok_or_else(|| PcError::Invalid("the batch is too large for this circuit".into()))?;
    let mut log_v = vec![0f64; total];
    for (n, node) in nodes.iter().enumerate() {
        for (j, e) in evidence.iter().enumerate() {
            let v = match node {
                Node::Input { var, probs } => probs
                    .iter()
                    .enumerate()
                    .map(|(c, p)| p * e.weight(*var, c))
                    .sum::<f64>()
                    .ln(),
                Node::Product { children } => children.iter().map(|&c| log_v[c * b + j]).sum(),
                Node::Sum { children, weights } => children
                    .iter()
                    .zip(weights)
                    .fold(f64::NEG_INFINITY, |acc, (&c, w)| {
                        log_add(acc, w.ln() + log_v[c * b + j])
                    }),
            };
            log_v[n * b + j] = v;
        }
    }
    Ok(Forward {
        circuit,
        evidence: evidence.to_vec(),
        log_v,
    })
}

impl<'c> Forward<'c> {
    /// The batch size.
    pub fn batch(&self) -> usize {
        self.evidence.len()
    }

    /// log v of node `n` under evidence `b`.
    pub fn log_value(&self, n: usize, b: usize) -> f64 {
        self.log_v[n * self.batch() + b]
    }

    /// log Z for each evidence.
    pub fn log_z(&self) -> Vec<f64> {
        let root = self.circuit.root();
        (0..self.batch()).map(|b| self.log_value(root, b)).collect()
    }

    /// The backward pass.
    pub fn backward(&self) -> Flows<'_, 'c> {
        let b = self.batch();
        let nodes = self.circuit.nodes();
        let mut log_d = vec![f64::NEG_INFINITY; nodes.len() * b];
        let root = self.circuit.root();
        for j in 0..b {
            log_d[root * b + j] = 0.0;
        }
        let mut prefix = Vec::new();
        for (n, node) in nodes.iter().enumerate().rev() {
            match node {
                Node::Input { .. } => {}
                Node::Sum { children, weights } => {
                    for j in 0..b {
                        let d = log_d[n * b + j];
                        if d == f64::NEG_INFINITY {
                            continue;
                        }
                        for (&c, w) in children.iter().zip(weights) {
                            log_d[c * b + j] = log_add(log_d[c * b + j], d + w.ln());
                        }
                    }
                }
                Node::Product { children } => {
                    for j in 0..b {
                        let d = log_d[n * b + j];
                        if d == f64::NEG_INFINITY {
                            continue;
                        }
                        // Π of the other children: prefix and suffix sums of logs.
                        prefix.clear();
                        let mut acc = 0.0;
                        for &c in children {
                            prefix.push(acc);
                            acc += self.log_v[c * b + j];
                        }
                        let mut suffix = 0.0;
                        for (k, &c) in children.iter().enumerate().rev() {
                            let others = prefix[k] + suffix;
                            log_d[c * b + j] = log_add(log_d[c * b + j], d + others);
                            suffix += self.log_v[c * b + j];
                        }
                    }
                }
            }
        }
        Flows {
            forward: self,
            log_d,
        }
    }
}

impl Flows<'_, '_> {
    /// log ∂Z/∂v_n under evidence `b`.
    pub fn log_derivative(&self, n: usize, b: usize) -> f64 {
        self.log_d[n * self.forward.batch() + b]
    }

    /// The flow F_n = ∂log Z/∂log v_n under evidence `b` (0 when Z is 0).
    pub fn flow(&self, n: usize, b: usize) -> f64 {
        let log_z = self.forward.log_value(self.forward.circuit.root(), b);
        if log_z == f64::NEG_INFINITY {
            return 0.0;
        }
        (self.log_derivative(n, b) + self.forward.log_value(n, b) - log_z).exp()
    }

    /// Conditional marginals of every variable for evidence `b`: `out[i][c]`.
    pub fn marginals(&self, b: usize, semantics: Semantics) -> Result<Vec<Vec<f64>>, PcError> {
        let f = self.forward;
        let c = f.circuit;
        if f.log_value(c.root(), b) == f64::NEG_INFINITY {
            return Err(PcError::Evidence(format!(
                "evidence {b} has probability 0 under the circuit"
            )));
        }
        let mut out: Vec<Vec<f64>> = c.cards().iter().map(|&k| vec![0.0; k]).collect();
        for (n, node) in c.nodes().iter().enumerate() {
            let Node::Input { var, probs } = node else {
                continue;
            };
            let scale = match semantics {
                Semantics::Flows => self.flow(n, b),
                Semantics::Posterior => self.log_derivative(n, b).exp(),
            };
            if scale == 0.0 {
                continue;
            }
            for (k, p) in probs.iter().enumerate() {
                let e = match semantics {
                    Semantics::Flows => 1.0,
                    Semantics::Posterior => f.evidence[b].weight(*var, k),
                };
                out[*var][k] += scale * p * e;
            }
        }
        for (i, row) in out.iter_mut().enumerate() {
            let s: f64 = row.iter().sum();
            if s.is_nan() || s <= 0.0 || s.is_infinite() {
                return Err(PcError::Evidence(format!(
                    "variable {i}: no value has probability under the evidence"
                )));
            }
            row.iter_mut().for_each(|x| *x /= s);
        }
        Ok(out)
    }
}

/// Conditional marginals of every variable for each evidence: `out[b][i][c]`.
pub fn conditional(
    circuit: &Circuit,
    evidence: &[Evidence],
    semantics: Semantics,
) -> Result<Vec<Vec<Vec<f64>>>, PcError> {
    let fw = forward(circuit, evidence)?;
    let flows = fw.backward();
    (0..evidence.len())
        .map(|b| flows.marginals(b, semantics))
        .collect()
}
