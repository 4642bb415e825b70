//! The plugin's objects: `Vq` (a VQ model) and `Circuit` (a probabilistic circuit).
//!
//! - `Vq.encode(image N×H×W×3 in [0, 1])` → `[codes N×h×w, log_probs N×h×w×K]`;
//!   `Vq.decode(codes)` → `[image]`; `Vq.decode_raw(codes)` → `[N×C×H×W in [−1, 1], unclamped]`;
//!   `Vq.info()` → `[downscale, codebook size]`.
//! - `Circuit.marginals(weights N×n×K, semantics)` → `[N×n×K]`: per evidence row and variable a
//!   weight per value (all ones: missing); `Circuit.save(path)`; `Circuit.info()` →
//!   `[variables, values of variable 0, nodes, edges]`.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use latentflow_models::vq::VqModel;
use latentflow_pc::evidence::Observation;
use latentflow_pc::{conditional, format, Circuit, Evidence, Semantics};
use latentflow_plugin_api::sdk::candle::from_candle;
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::{arg, fail, tensor_arg};

/// A VQ model as an object.
pub struct VqObject {
    pub vq: Arc<VqModel>,
    pub name: String,
}

impl VqObject {
    /// The decoded image (N×C×H×W in [−1, 1]) of the codes (N×h×w) in `args[0]`.
    fn decode_arg(&self, args: &[Value], method: &str) -> Result<CTensor, NodeError> {
        let codes = tensor_arg(args, 0, method)?;
        if codes.rank() != 3 {
            return Err(NodeError::invalid(format!(
                "codes must be N×h×w, got {:?}",
                codes.dims()
            )));
        }
        let codes = codes.to_dtype(CDType::U32).map_err(fail)?;
        self.vq.decode_codes(&codes).map_err(fail)
    }
}

impl ObjectImpl for VqObject {
    fn interface(&self) -> String {
        "Vq".into()
    }
    fn call(&self, _host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        match method {
            "encode" => {
                let image = tensor_arg(&args, 0, method)?
                    .permute((0, 3, 1, 2))
                    .and_then(|t| t.affine(2.0, -1.0))
                    .and_then(|t| t.contiguous())
                    .map_err(fail)?;
                let latent = self.vq.encode(&image).map_err(fail)?;
                let codes = self
                    .vq
                    .codes(&latent)
                    .and_then(|c| Ok(c.to_dtype(CDType::F32)?))
                    .map_err(fail)?;
                let lp = self.vq.code_log_probs(&latent).map_err(fail)?;
                Ok(vec![
                    Value::Tensor(from_candle(&codes)?),
                    Value::Tensor(from_candle(&lp)?),
                ])
            }
            "decode" => {
                let img = self.decode_arg(&args, method)?;
                let img = ((img / 2.0).and_then(|t| t + 0.5))
                    .and_then(|t| t.clamp(0f32, 1f32))
                    .and_then(|t| t.permute((0, 2, 3, 1)))
                    .and_then(|t| t.contiguous())
                    .map_err(fail)?;
                Ok(vec![Value::Tensor(from_candle(&img)?)])
            }
            "decode_raw" => {
                let img = self.decode_arg(&args, method)?;
                Ok(vec![Value::Tensor(from_candle(&img)?)])
            }
            "info" => Ok(vec![
                Value::Int(self.vq.downscale() as i64),
                Value::Int(self.vq.config.num_vq_embeddings as i64),
            ]),
            other => Err(NodeError::invalid(format!("Vq has no method `{other}`"))),
        }
    }
    fn describe(&self) -> String {
        format!("Vq({})", self.name)
    }
}

/// A circuit as an object.
pub struct CircuitObject {
    pub circuit: Arc<Circuit>,
    pub name: String,
}

/// Evidence rows from weights N×n×K: a row of all ones is missing.
pub fn evidence_rows(w: &CTensor, c: &Circuit) -> Result<Vec<Evidence>, NodeError> {
    let (n, vars, k) = w.dims3().map_err(fail)?;
    if vars != c.num_vars() || c.cards().iter().any(|&kc| kc != k) {
        return Err(NodeError::invalid(format!(
            "evidence of {vars} variables × {k} values for a circuit over {} variables",
            c.num_vars()
        )));
    }
    let flat: Vec<f64> = w
        .to_dtype(CDType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(fail)?;
    Ok((0..n)
        .map(|b| {
            Evidence(
                (0..vars)
                    .map(|i| {
                        let row = &flat[(b * vars + i) * k..(b * vars + i + 1) * k];
                        if row.iter().all(|&x| x == 1.0) {
                            Observation::Missing
                        } else {
                            Observation::Soft(row.to_vec())
                        }
                    })
                    .collect(),
            )
        })
        .collect())
}

/// The semantics a parameter names.
pub fn semantics(s: &str) -> Result<Semantics, NodeError> {
    match s {
        "flows" => Ok(Semantics::Flows),
        "posterior" => Ok(Semantics::Posterior),
        other => Err(NodeError::invalid(format!(
            "semantics `{other}`: flows or posterior"
        ))),
    }
}

impl ObjectImpl for CircuitObject {
    fn interface(&self) -> String {
        "Circuit".into()
    }
    fn call(&self, _host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        match method {
            "marginals" => {
                let w = tensor_arg(&args, 0, method)?;
                let sem = semantics(arg(&args, 1, method)?.as_str().unwrap_or("flows"))?;
                let ev = evidence_rows(&w, &self.circuit)?;
                let m = conditional(&self.circuit, &ev, sem).map_err(fail)?;
                let flat: Vec<f32> = m.iter().flatten().flatten().map(|&x| x as f32).collect();
                let t = CTensor::from_vec(flat, w.dims(), &Device::Cpu).map_err(fail)?;
                Ok(vec![Value::Tensor(from_candle(&t)?)])
            }
            "save" => {
                let path = arg(&args, 0, method)?
                    .as_str()
                    .ok_or_else(|| NodeError::invalid("Circuit.save takes a path"))?;
                format::save(&self.circuit, Path::new(path), false).map_err(fail)?;
                Ok(vec![Value::from(path.to_string())])
            }
            "info" => {
                let c = &self.circuit;
                Ok(vec![
                    Value::Int(c.num_vars() as i64),
                    Value::Int(c.cards()[0] as i64),
                    Value::Int(c.nodes().len() as i64),
                    Value::Int(c.num_edges() as i64),
                ])
            }
            other => Err(NodeError::invalid(format!(
                "Circuit has no method `{other}`"
            ))),
        }
    }
    fn describe(&self) -> String {
        format!("Circuit({})", self.name)
    }
}
