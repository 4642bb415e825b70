//! The `latentflow-pc-v1` file: one `.safetensors` holding
//!
//! - metadata `latentflow_pc`: the structure as JSON,
//!   `{"format": "latentflow-pc-v1", "cards": [K₀, K₁, …], "nodes": [N₀, N₁, …]}` with each node
//!   `{"input": var}`, `{"product": [children]}` or `{"sum": [children]}`, in topological order,
//!   the root last;
//! - tensor `input_probs` (F32 or F64, 1-D): every input node's probabilities, in node order;
//! - tensor `sum_weights` (F32 or F64, 1-D): every sum node's weights, in node order.
//!
//! Reading checks the structure and the tensors' lengths against each other before it converts
//! anything, then the circuit's own rules; distributions within 1e-4 of 1 (f32 rounding) are
//! renormalised exactly.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::{Circuit, Node, PcError};

/// The format's name in the metadata.
pub const FORMAT: &str = "latentflow-pc-v1";
/// The metadata key.
pub const KEY: &str = "latentflow_pc";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum NodeJson {
    Input(usize),
    Product(Vec<usize>),
    Sum(Vec<usize>),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Structure {
    format: String,
    cards: Vec<usize>,
    nodes: Vec<NodeJson>,
}

fn err(path: &Path, reason: impl Into<String>) -> PcError {
    PcError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes `circuit` to `path` (parameters as f32 or f64), atomically.
pub fn save(circuit: &Circuit, path: &Path, f64_params: bool) -> Result<(), PcError> {
    let mut inputs = Vec::new();
    let mut sums = Vec::new();
    let nodes = circuit
        .nodes()
        .iter()
        .map(|n| match n {
            Node::Input { var, probs } => {
                inputs.extend_from_slice(probs);
                NodeJson::Input(*var)
            }
            Node::Product { children } => NodeJson::Product(children.clone()),
            Node::Sum { children, weights } => {
                sums.extend_from_slice(weights);
                NodeJson::Sum(children.clone())
            }
        })
        .collect();
    let structure = Structure {
        format: FORMAT.into(),
        cards: circuit.cards().to_vec(),
        nodes,
    };
    let json = serde_json::to_string(&structure).map_err(|e| err(path, e.to_string()))?;
    let bytes = |v: &[f64]| -> Vec<u8> {
        if f64_params {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        } else {
            v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()
        }
    };
    let (ib, sb) = (bytes(&inputs), bytes(&sums));
    let dtype = if f64_params { Dtype::F64 } else { Dtype::F32 };
    let tensors = vec![
        ("input_probs", view(dtype, &ib, inputs.len(), path)?),
        ("sum_weights", view(dtype, &sb, sums.len(), path)?),
    ];
    let meta = std::collections::HashMap::from([(KEY.to_string(), json)]);
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(tensors, Some(meta), &tmp)
        .map_err(|e| err(path, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, e.to_string()))
}

fn view<'a>(dtype: Dtype, b: &'a [u8], n: usize, path: &Path) -> Result<TensorView<'a>, PcError> {
    TensorView::new(dtype, vec![n], b).map_err(|e| err(path, e.to_string()))
}

fn values(t: &TensorView, path: &Path, name: &str, expected: usize) -> Result<Vec<f64>, PcError> {
    if t.shape() != [expected] {
        return Err(err(
            path,
            format!(
                "`{name}` has shape {:?}; the structure needs [{expected}]",
                t.shape()
            ),
        ));
    }
    let data = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        other => {
            return Err(err(
                path,
                format!("`{name}` is {other:?}; F32 or F64 expected"),
            ))
        }
    })
}

fn renormalised(path: &Path, node: usize, mut p: Vec<f64>) -> Result<Vec<f64>, PcError> {
    let s: f64 = p.iter().sum();
    if s.is_nan() || (s - 1.0).abs() > 1e-4 || p.iter().any(|x| !x.is_finite() || *x < 0.0) {
        return Err(err(
            path,
            format!("node {node}: its parameters are not a distribution (sum {s})"),
        ));
    }
    // f64 files hold the written values exactly; f32 rounding is undone.
    if (s - 1.0).abs() > 1e-12 {
        p.iter_mut().for_each(|x| *x /= s);
    }
    Ok(p)
}

/// Reads a `latentflow-pc-v1` file.
pub fn load(path: &Path) -> Result<Circuit, PcError> {
    let meta = std::fs::metadata(path).map_err(|e| err(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(err(path, "not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
    // SAFETY: a read-only mapping of a regular file, dropped when this function returns.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(path, e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&map)
        .map_err(|e| err(path, format!("not a safetensors file: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(KEY))
        .ok_or_else(|| err(path, format!("no `{KEY}` metadata: not a {FORMAT} circuit")))?;
    let s: Structure =
        serde_json::from_str(json).map_err(|e| err(path, format!("structure: {e}")))?;
    if s.format != FORMAT {
        return Err(err(
            path,
            format!("format `{}`, expected {FORMAT}", s.format),
        ));
    }
    // Sizes from the structure, checked before any parameter is converted.
    let mut n_inputs = 0usize;
    let mut n_sums = 0usize;
    for (i, n) in s.nodes.iter().enumerate() {
        match n {
            NodeJson::Input(v) => {
                let k = s.cards.get(*v).ok_or_else(|| {
                    err(path, format!("node {i}: variable {v} of {}", s.cards.len()))
                })?;
                n_inputs = n_inputs
                    .checked_add(*k)
                    .ok_or_else(|| err(path, "too many parameters"))?;
            }
            NodeJson::Sum(c) => {
                n_sums = n_sums
                    .checked_add(c.len())
                    .ok_or_else(|| err(path, "too many parameters"))?
            }
            NodeJson::Product(_) => {}
        }
    }
    let st = SafeTensors::deserialize(&map).map_err(|e| err(path, e.to_string()))?;
    let get = |name: &str| {
        st.tensor(name)
            .map_err(|_| err(path, format!("no tensor `{name}`")))
    };
    let inputs = values(&get("input_probs")?, path, "input_probs", n_inputs)?;
    let sums = values(&get("sum_weights")?, path, "sum_weights", n_sums)?;
    let (mut ii, mut si) = (0, 0);
    let mut nodes = Vec::with_capacity(s.nodes.len());
    for (i, n) in s.nodes.into_iter().enumerate() {
        nodes.push(match n {
            NodeJson::Input(var) => {
                let k = s.cards[var];
                let probs = renormalised(path, i, inputs[ii..ii + k].to_vec())?;
                ii += k;
                Node::Input { var, probs }
            }
            NodeJson::Product(children) => Node::Product { children },
            NodeJson::Sum(children) => {
                let k = children.len();
                let weights = renormalised(path, i, sums[si..si + k].to_vec())?;
                si += k;
                Node::Sum { children, weights }
            }
        });
    }
    Circuit::new(s.cards, nodes).map_err(|e| err(path, e.to_string()))
}
