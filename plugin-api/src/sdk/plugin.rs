//! A plugin's node list and the glue between SDK nodes and the ABI.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RVec};

use crate::abi_value::{from_abi_vec, to_abi_vec, AbiValue};
use crate::descriptor::PluginManifest;
use crate::error::NodeError;
use crate::host::HostRef;
use crate::module::{Node, NodeBox, Node_TO};
use crate::sdk::{Ctx, Inputs, NodeDef, NodeImpl, Params};

/// Runs `f`, turning a panic into a [`NodeError`] of kind `PANICKED`.
pub fn guard<T>(f: impl FnOnce() -> Result<T, NodeError>) -> Result<T, NodeError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(NodeError::panicked(&*payload)),
    }
}

/// A plugin: a name, a version and its node types.
pub struct PluginDef {
    name: String,
    version: String,
    nodes: Vec<NodeDef>,
    index: HashMap<String, usize>,
    /// Input port names per node, shared by all instances.
    input_names: Vec<Arc<[String]>>,
}

impl PluginDef {
    /// An empty plugin.
    pub fn new(name: &str, version: &str) -> Self {
        PluginDef {
            name: name.into(),
            version: version.into(),
            nodes: Vec::new(),
            index: HashMap::new(),
            input_names: Vec::new(),
        }
    }

    /// Adds a node type.
    pub fn node(mut self, node: NodeDef) -> Self {
        self.index
            .insert(node.desc.type_id.clone(), self.nodes.len());
        self.input_names
            .push(node.desc.inputs.iter().map(|p| p.name.clone()).collect());
        self.nodes.push(node);
        self
    }

    /// The manifest.
    pub fn manifest(&self) -> Result<PluginManifest, NodeError> {
        let nodes = self
            .nodes
            .iter()
            .map(|n| serde_json::to_value(&n.desc))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NodeError::failed(format!("describing the nodes: {e}")))?;
        Ok(PluginManifest {
            name: self.name.clone(),
            version: self.version.clone(),
            api_version: crate::API_VERSION.into(),
            nodes,
        })
    }

    /// The manifest as the JSON the host reads.
    pub fn manifest_json(&self) -> Result<String, NodeError> {
        serde_json::to_string(&self.manifest()?)
            .map_err(|e| NodeError::failed(format!("describing the plugin: {e}")))
    }

    fn def(&self, type_id: &str) -> Result<&NodeDef, NodeError> {
        let index = *self.index.get(type_id).ok_or_else(|| {
            NodeError::invalid(format!(
                "plugin `{}` has no node type `{type_id}`",
                self.name
            ))
        })?;
        Ok(&self.nodes[index])
    }

    /// Creates an instance of `type_id` with JSON `params`.
    pub fn create(&self, type_id: &str, params: &str) -> Result<NodeBox, NodeError> {
        let def = self.def(type_id)?;
        let params = Params::parse(params, &def.desc.params)?;
        let inner = (def.factory)(params)?;
        let index = self.index[type_id];
        let adapter = Adapter {
            inner,
            input_names: Arc::clone(&self.input_names[index]),
            n_outputs: def.desc.outputs.len(),
        };
        Ok(Node_TO::from_value(adapter, TD_Opaque))
    }

    /// The refined output types of `type_id` with JSON `params`, as a JSON list.
    pub fn infer(&self, type_id: &str, params: &str) -> Result<String, NodeError> {
        let def = self.def(type_id)?;
        let params = Params::parse(params, &def.desc.params)?;
        let types = match &def.infer {
            Some(f) => f(&params)?,
            None => def.desc.outputs.iter().map(|p| p.ty.clone()).collect(),
        };
        if types.len() != def.desc.outputs.len() {
            return Err(NodeError::failed(format!(
                "type inference gave {} output types for {} outputs",
                types.len(),
                def.desc.outputs.len()
            )));
        }
        serde_json::to_string(&types).map_err(|e| NodeError::failed(e.to_string()))
    }
}

struct Adapter {
    inner: Box<dyn NodeImpl>,
    input_names: Arc<[String]>,
    n_outputs: usize,
}

impl Node for Adapter {
    fn run(&self, host: HostRef<'_>, inputs: RVec<AbiValue>) -> RResult<RVec<AbiValue>, NodeError> {
        guard(|| {
            let ctx = Ctx::new(host);
            let inputs = Inputs::new(Arc::clone(&self.input_names), from_abi_vec(inputs)?)?;
            let out = self.inner.run(&ctx, &inputs)?;
            if out.len() != self.n_outputs {
                return Err(NodeError::failed(format!(
                    "node returned {} outputs but declares {}",
                    out.len(),
                    self.n_outputs
                )));
            }
            Ok(to_abi_vec(out))
        })
        .into()
    }
}
