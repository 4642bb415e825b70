//! Saving and loading tensors as `.safetensors`.

use std::collections::HashMap;

use latentflow_plugin_api::sdk::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype as SDtype, SafeTensors};

use crate::util::{fail, output_path, write_atomic};

fn to_st(d: DType) -> SDtype {
    match d {
        DType::F32 => SDtype::F32,
        DType::F16 => SDtype::F16,
        DType::BF16 => SDtype::BF16,
        DType::F64 => SDtype::F64,
        DType::U8 => SDtype::U8,
        DType::U32 => SDtype::U32,
        DType::I64 => SDtype::I64,
    }
}

fn from_st(d: SDtype) -> Result<DType, NodeError> {
    Ok(match d {
        SDtype::F32 => DType::F32,
        SDtype::F16 => DType::F16,
        SDtype::BF16 => DType::BF16,
        SDtype::F64 => DType::F64,
        SDtype::U8 => DType::U8,
        SDtype::U32 => DType::U32,
        SDtype::I64 => DType::I64,
        other => {
            return Err(NodeError::failed(format!(
                "unsupported safetensors dtype {other:?}"
            )))
        }
    })
}

fn save_tensor(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let t = inputs.tensor("tensor")?;
    let dtype = t
        .dtype()
        .ok_or_else(|| NodeError::invalid("unsupported element type"))?;
    let bytes = t.to_contiguous_bytes()?;
    let shape = t.shape();
    let name = p.str("name")?.to_string();
    let view = TensorView::new(to_st(dtype), shape, &bytes).map_err(fail)?;
    let mut meta = HashMap::new();
    meta.insert("latentflow:graph".to_string(), ctx.run_metadata());
    let data = safetensors::serialize([(name.as_str(), view)], Some(meta)).map_err(fail)?;
    let path = output_path(&ctx.output_dir(), p.str("filename")?)?;
    write_atomic(&path, |f| std::io::Write::write_all(f, &data))?;
    Ok(vec![Value::from(path.to_string_lossy().into_owned())])
}

fn read_tensor(ctx: &Ctx, p: &Params) -> Result<Tensor, NodeError> {
    let path = p.str("path")?;
    // Only regular files: a device or a pipe (`/dev/zero`) would be read until memory runs out.
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read {path}: {e}")))?;
    if !meta.is_file() {
        return Err(NodeError::invalid(format!("{path} is not a regular file")));
    }
    ctx.check_alloc(&format!("reading {path}"), &[meta.len() as usize], 1)?;
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read {path}: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| fail(format!("{path} is not a safetensors file: {e}")))?;
    let name = p.str("name")?;
    let names = st.names();
    let key = if name.is_empty() {
        match names.as_slice() {
            [only] => only.to_string(),
            _ => {
                return Err(NodeError::failed(format!(
                    "{path} holds {} tensors; set `name` to one of: {}",
                    names.len(),
                    names
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    } else {
        name.to_string()
    };
    let view = st
        .tensor(&key)
        .map_err(|_| fail(format!("{path} has no tensor `{key}`")))?;
    Ok(Tensor::from_bytes(
        view.data().to_vec(),
        from_st(view.dtype())?,
        view.shape(),
    )?)
}

/// The tensor file nodes.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("core.save_tensor", save_tensor)
            .doc("Saves a tensor (or latent, image, mask) as .safetensors, atomically, with the run's provenance in the metadata.")
            .side_effects()
            .input("tensor", PortType::tensor(None, Dim::Any), "the tensor")
            .output("file", PortType::String, "written path")
            .param(Param::string("filename").default("tensor.safetensors"))
            .param(Param::string("name").default("tensor").doc("tensor name inside the file")),
        NodeDef::new("core.load_tensor", |ctx, _, p| Ok(vec![Value::Tensor(read_tensor(ctx, p)?)]))
            .doc("Loads one tensor from a .safetensors file.")
            .output("tensor", PortType::tensor(None, Dim::Any), "the tensor")
            .param(Param::path("path"))
            .param(Param::string("name").default("").doc("tensor name; empty when the file holds one")),
        NodeDef::new("core.load_latent", |ctx, _, p| {
            let t = read_tensor(ctx, p)?;
            if t.rank() != 4 {
                return Err(NodeError::failed(format!("a latent must be N×C×H×W, got shape {:?}", t.shape())));
            }
            Ok(vec![Value::Tensor(t)])
        })
        .doc("Loads a latent (N×C×H×W) from a .safetensors file.")
        .output("latent", PortType::latent(Dim::Any), "the latent")
        .param(Param::path("path"))
        .param(Param::string("name").default("")),
    ]
}
