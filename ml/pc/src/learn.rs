//! Expectation-maximisation from data: each pass runs the two-pass query on every row and
//! re-estimates every sum's weights from its edge flows and every input's probabilities from
//! its flows (expected counts), so the data's likelihood never decreases (with no pseudocount).

use crate::evidence::Evidence;
use crate::query::forward;
use crate::{Circuit, Node, PcError};

/// One EM pass over `data` (rows of evidence; missing entries are summed out) with
/// `pseudocount` added to every count (0: plain maximum likelihood). Returns the new circuit and
/// the mean log-likelihood of the data under the old one.
pub fn em_step(
    circuit: &Circuit,
    data: &[Evidence],
    pseudocount: f64,
) -> Result<(Circuit, f64), PcError> {
    if data.is_empty() {
        return Err(PcError::Invalid("EM needs data".into()));
    }
    if pseudocount.is_nan() || pseudocount < 0.0 || pseudocount.is_infinite() {
        return Err(PcError::Invalid(format!("pseudocount {pseudocount}")));
    }
    let nodes = circuit.nodes();
    let mut counts: Vec<Vec<f64>> = nodes
        .iter()
        .map(|n| match n {
            Node::Input { probs, .. } => vec![0.0; probs.len()],
            Node::Sum { weights, .. } => vec![0.0; weights.len()],
            Node::Product { .. } => Vec::new(),
        })
        .collect();
    let mut total_ll = 0.0;
    // Batches bound the memory of the passes.
    for chunk in data.chunks(256) {
        let fw = forward(circuit, chunk)?;
        let flows = fw.backward();
        for (b, e) in chunk.iter().enumerate() {
            let log_z = fw.log_value(circuit.root(), b);
            if log_z == f64::NEG_INFINITY {
                return Err(PcError::Evidence(
                    "a data row has probability 0 under the circuit".into(),
                ));
            }
            total_ll += log_z;
            for (n, node) in nodes.iter().enumerate() {
                let f = flows.flow(n, b);
                if f == 0.0 {
                    continue;
                }
                match node {
                    Node::Sum { children, weights } => {
                        let lv = fw.log_value(n, b);
                        for (j, (&c, w)) in children.iter().zip(weights).enumerate() {
                            counts[n][j] += f * (w.ln() + fw.log_value(c, b) - lv).exp();
                        }
                    }
                    Node::Input { var, probs } => {
                        let v: f64 = probs
                            .iter()
                            .enumerate()
                            .map(|(k, p)| p * e.weight(*var, k))
                            .sum();
                        for (k, p) in probs.iter().enumerate() {
                            counts[n][k] += f * p * e.weight(*var, k) / v;
                        }
                    }
                    Node::Product { .. } => {}
                }
            }
        }
    }
    let normalise = |c: &[f64], old: &[f64]| -> Vec<f64> {
        let s: f64 = c.iter().map(|x| x + pseudocount).sum();
        if s > 0.0 {
            c.iter().map(|x| (x + pseudocount) / s).collect()
        } else {
            old.to_vec()
        }
    };
    let updated: Vec<Node> = nodes
        .iter()
        .zip(&counts)
        .map(|(node, c)| match node {
            Node::Input { var, probs } => Node::Input {
                var: *var,
                probs: normalise(c, probs),
            },
            Node::Sum { children, weights } => Node::Sum {
                children: children.clone(),
                weights: normalise(c, weights),
            },
            p @ Node::Product { .. } => p.clone(),
        })
        .collect();
    Ok((circuit.with_nodes(updated)?, total_ll / data.len() as f64))
}

/// `passes` EM passes; returns the circuit and the mean log-likelihood before each pass.
pub fn em(
    circuit: &Circuit,
    data: &[Evidence],
    passes: usize,
    pseudocount: f64,
) -> Result<(Circuit, Vec<f64>), PcError> {
    let mut c = circuit.clone();
    let mut lls = Vec::with_capacity(passes);
    for _ in 0..passes {
        let (next, ll) = em_step(&c, data, pseudocount)?;
        lls.push(ll);
        c = next;
    }
    Ok((c, lls))
}
