//! A validated graph, ready to execute.

use std::path::PathBuf;
use std::sync::Arc;

use latentflow_plugin_api::PortType;
use serde_json::{Map, Value as Json};

use super::diag::Pos;
use crate::plugins::NodeType;

/// Where an input's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Output `port` of node `node` (an index into [`Plan::nodes`]).
    Node {
        /// Producer index.
        node: usize,
        /// Producer output index.
        port: usize,
    },
    /// A constant from a graph variable.
    Const(Json),
    /// Not connected (optional input).
    None,
}

/// One node of a plan.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// Node id.
    pub id: String,
    /// Type and providing plugin.
    pub ty: NodeType,
    /// Parameters: validated, variables substituted, defaults filled, paths resolved, in the
    /// order of the node's parameter schema (so equal params serialize equally).
    pub params: Arc<Map<String, Json>>,
    /// One source per declared input.
    pub inputs: Vec<Source>,
    /// Per input, where its value comes from: `node.port`, `$port` (a constant) or the port name
    /// (unconnected). Used to explain re-runs.
    pub labels: Arc<[String]>,
    /// Output types with parameters and type variables resolved.
    pub output_types: Vec<PortType>,
    /// Where the node is defined.
    pub pos: Pos,
}

/// A validated graph. Nodes are in a topological order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The graph file (or PNG it came from).
    pub file: PathBuf,
    /// Nodes, producers before consumers.
    pub nodes: Vec<PlanNode>,
    /// Indices of the nodes whose results are wanted.
    pub outputs: Vec<usize>,
    /// The run seed.
    pub seed: u64,
    /// The graph with variables resolved, as JSON (embedded in outputs for provenance).
    pub canonical: Json,
}

impl Plan {
    /// Index of node `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }
}
