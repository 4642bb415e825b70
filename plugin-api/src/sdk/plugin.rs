//! A plugin's node list and the glue between SDK nodes and the ABI.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RBox, RResult, RVec};

use crate::descriptor::PluginManifest;
use crate::error::NodeError;
use crate::host::HostRef;
use crate::module::{Node, NodeBox, Node_TO};
use crate::sdk::{Ctx, Inputs, NodeDef, NodeImpl, Params};
use crate::value::Value;

/// Runs `f`, turning a panic into a [`NodeError`] of kind `Panicked`.
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
            .insert(node.desc.type_id.to_string(), self.nodes.len());
        self.input_names.push(
            node.desc
                .inputs
                .iter()
                .map(|p| p.name.to_string())
                .collect(),
        );
        self.nodes.push(node);
        self
    }

    /// The manifest the host reads.
    pub fn manifest(&self) -> PluginManifest {
        PluginManifest {
            name: self.name.as_str().into(),
            version: self.version.as_str().into(),
            nodes: self.nodes.iter().map(|n| n.desc.clone()).collect(),
        }
    }

    /// Creates an instance of `type_id` with JSON `params`.
    pub fn create(&self, type_id: &str, params: &str) -> Result<NodeBox, NodeError> {
        let index = *self.index.get(type_id).ok_or_else(|| {
            NodeError::invalid(format!(
                "plugin `{}` has no node type `{type_id}`",
                self.name
            ))
        })?;
        let def = &self.nodes[index];
        let params = Params::parse(params, &def.desc.params)?;
        let inner = (def.factory)(params)?;
        let adapter = Adapter {
            inner,
            input_names: Arc::clone(&self.input_names[index]),
            n_outputs: def.desc.outputs.len(),
        };
        Ok(Node_TO::from_value(adapter, TD_Opaque))
    }
}

struct Adapter {
    inner: Box<dyn NodeImpl>,
    input_names: Arc<[String]>,
    n_outputs: usize,
}

impl Node for Adapter {
    fn run(&self, host: HostRef<'_>, inputs: RVec<Value>) -> RResult<RVec<Value>, NodeError> {
        guard(|| {
            let ctx = Ctx::new(host);
            let inputs = Inputs::new(Arc::clone(&self.input_names), inputs.into_vec())?;
            let out = self.inner.run(&ctx, &inputs)?;
            if out.len() != self.n_outputs {
                return Err(NodeError::failed(format!(
                    "node returned {} outputs but declares {}",
                    out.len(),
                    self.n_outputs
                )));
            }
            Ok(out.into_iter().collect())
        })
        .into()
    }
}

// Keep the boxed-pointer type used by `NodeBox` in one place.
#[allow(dead_code)]
type _NodePtr = RBox<()>;
