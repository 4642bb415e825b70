//! Declaring node types.

use std::sync::Arc;

use crate::descriptor::{Capabilities, Extent, NodeDescriptor, PortDesc, SizeRule};
use crate::error::NodeError;
use crate::sdk::{Ctx, Inputs, Param, Params};
use crate::types::PortType;
use crate::value::Value;

/// A node instance's behaviour. Implement it for stateful nodes; stateless nodes use a closure
/// with [`NodeDef::new`].
pub trait NodeImpl: Send + Sync {
    /// Runs the node; returns one value per declared output.
    fn run(&self, ctx: &Ctx<'_>, inputs: &Inputs) -> Result<Vec<Value>, NodeError>;
}

type Factory = dyn Fn(Params) -> Result<Box<dyn NodeImpl>, NodeError> + Send + Sync;

/// Refines a node's output types from its parameters (see [`NodeDef::infer`]).
pub type Infer = dyn Fn(&Params) -> Result<Vec<PortType>, NodeError> + Send + Sync;

/// A node type: its descriptor and how to make instances.
pub struct NodeDef {
    pub(crate) desc: NodeDescriptor,
    pub(crate) factory: Arc<Factory>,
    pub(crate) infer: Option<Arc<Infer>>,
}

struct FnNode<F> {
    params: Params,
    f: Arc<F>,
}

impl<F> NodeImpl for FnNode<F>
where
    F: Fn(&Ctx<'_>, &Inputs, &Params) -> Result<Vec<Value>, NodeError> + Send + Sync,
{
    fn run(&self, ctx: &Ctx<'_>, inputs: &Inputs) -> Result<Vec<Value>, NodeError> {
        (self.f)(ctx, inputs, &self.params)
    }
}

impl NodeDef {
    /// A stateless node computed by `f(ctx, inputs, params)`.
    pub fn new<F>(type_id: &str, f: F) -> Self
    where
        F: Fn(&Ctx<'_>, &Inputs, &Params) -> Result<Vec<Value>, NodeError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        Self::with_factory(type_id, move |params| {
            Ok(Box::new(FnNode {
                params,
                f: Arc::clone(&f),
            }) as Box<dyn NodeImpl>)
        })
    }

    /// A node whose instances are built by `factory(params)` (for stateful nodes).
    pub fn with_factory<F>(type_id: &str, factory: F) -> Self
    where
        F: Fn(Params) -> Result<Box<dyn NodeImpl>, NodeError> + Send + Sync + 'static,
    {
        let display = type_id
            .rsplit('.')
            .next()
            .unwrap_or(type_id)
            .replace('_', " ");
        NodeDef {
            desc: NodeDescriptor {
                type_id: type_id.into(),
                version: "1.0.0".into(),
                display_name: display,
                doc: String::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                params: Vec::new(),
                caps: Capabilities::default(),
                allocates: Vec::new(),
            },
            factory: Arc::new(factory),
            infer: None,
        }
    }

    /// Sets the documentation.
    pub fn doc(mut self, doc: &str) -> Self {
        self.desc.doc = doc.into();
        self
    }

    /// Sets the display name.
    pub fn display_name(mut self, name: &str) -> Self {
        self.desc.display_name = name.into();
        self
    }

    /// Sets the node type's version.
    pub fn version(mut self, version: &str) -> Self {
        self.desc.version = version.into();
        self
    }

    fn port(name: &str, ty: PortType, doc: &str, optional: bool) -> PortDesc {
        PortDesc {
            name: name.into(),
            ty,
            optional,
            doc: doc.into(),
        }
    }

    /// Adds a required input.
    pub fn input(mut self, name: &str, ty: PortType, doc: &str) -> Self {
        self.desc.inputs.push(Self::port(name, ty, doc, false));
        self
    }

    /// Adds an optional input.
    pub fn optional_input(mut self, name: &str, ty: PortType, doc: &str) -> Self {
        self.desc.inputs.push(Self::port(name, ty, doc, true));
        self
    }

    /// Adds an output.
    pub fn output(mut self, name: &str, ty: PortType, doc: &str) -> Self {
        self.desc.outputs.push(Self::port(name, ty, doc, false));
        self
    }

    /// Adds a parameter.
    pub fn param(mut self, param: Param) -> Self {
        self.desc.params.push(param.into_spec());
        self
    }

    /// Marks the node non-deterministic (never cached unless it has a seed parameter).
    pub fn nondeterministic(mut self) -> Self {
        self.desc.caps.deterministic = false;
        self
    }

    /// Marks the node stateful.
    pub fn stateful(mut self) -> Self {
        self.desc.caps.stateful = true;
        self
    }

    /// The devices the node runs on (a bit set of [`Capabilities`](crate::Capabilities)'
    /// `CPU`, `CUDA`, `WGPU`; the default is the CPU).
    pub fn devices(mut self, devices: u32) -> Self {
        self.desc.caps.devices = devices;
        self
    }

    /// Marks the node as having side effects (writing files).
    pub fn side_effects(mut self) -> Self {
        self.desc.caps.side_effects = true;
        self
    }

    /// Declares a buffer sized by the parameters (`bytes_each` × the product of `dims`), so that
    /// the host refuses an oversized one at validation, before anything runs. The node still
    /// calls [`Ctx::check_alloc`] when it runs.
    pub fn allocates(
        mut self,
        what: &str,
        dims: impl IntoIterator<Item = Extent>,
        bytes_each: u64,
    ) -> Self {
        self.desc.allocates.push(SizeRule {
            what: what.into(),
            dims: dims.into_iter().collect(),
            bytes_each,
        });
        self
    }

    /// Refines the output types from the parameters before anything runs: `f` returns one type
    /// per declared output, each the declared type or a narrower one (a named family where the
    /// declaration has a variable). It must be cheap (headers and configs, never weights); its
    /// error is reported as a validation error at the node.
    pub fn infer<F>(mut self, f: F) -> Self
    where
        F: Fn(&Params) -> Result<Vec<PortType>, NodeError> + Send + Sync + 'static,
    {
        self.desc.caps.infers_types = true;
        self.infer = Some(Arc::new(f));
        self
    }

    /// The descriptor built so far.
    pub fn descriptor(&self) -> &NodeDescriptor {
        &self.desc
    }
}
