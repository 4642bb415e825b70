//! Helpers shared by the core nodes: tensor conversions (safe output paths and atomic writes
//! come from the SDK).

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::{NodeError, Tensor, Value};

pub use latentflow_plugin_api::sdk::files::{output_path, write_atomic};

/// Converts any error into a node failure.
pub fn fail(e: impl std::fmt::Display) -> NodeError {
    NodeError::failed(e.to_string())
}

/// Input tensor as f32 candle tensor on the CPU (copies).
pub fn candle_f32(t: &Tensor) -> Result<CTensor, NodeError> {
    to_candle(t, &Device::Cpu)?
        .to_dtype(candle_core::DType::F32)
        .map_err(fail)
}

/// Exports a candle tensor as a value (no copy).
pub fn out(t: &CTensor) -> Result<Value, NodeError> {
    Ok(Value::Tensor(from_candle(t)?))
}

/// Checks the rank of an input tensor.
pub fn expect_rank(name: &str, t: &Tensor, rank: usize, layout: &str) -> Result<(), NodeError> {
    if t.rank() != rank {
        return Err(NodeError::invalid(format!(
            "`{name}` must be a rank-{rank} tensor ({layout}), got shape {:?}",
            t.shape()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_folder_cannot_lead_outside_and_nothing_is_created_there() {
        let base = std::env::temp_dir().join(format!("lf-out-{}", std::process::id()));
        let (out, elsewhere) = (base.join("output"), base.join("elsewhere"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("link")).unwrap();
        let err = output_path(&out, "link/deeper/x.png").unwrap_err();
        assert!(err.to_string().contains("leads outside"), "{err}");
        assert!(
            !elsewhere.join("deeper").exists(),
            "nothing created outside"
        );
        // Inside, folders are made as needed.
        let ok = output_path(&out, "a/b/x.png").unwrap();
        assert!(ok.parent().unwrap().is_dir() && ok.ends_with("a/b/x.png"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
