//! Probabilistic circuits (PCs) over categorical variables, for tractable steering of diffusion
//! models (Tiramisu): smooth, decomposable circuits whose marginals and conditionals are exact in
//! two passes.
//!
//! - [`Circuit`]: input distributions over one variable, products over disjoint scopes, weighted
//!   sums over equal scopes, in topological order (the root last); checked when built.
//! - [`structure`]: a mixture of factorised categoricals, a hidden Chow-Liu tree learned from
//!   data, and the Poon-Domingos image structure.
//! - [`Evidence`]: per variable, missing, hard (one value) or soft (a weight per value).
//! - [`query`]: the forward pass (log Z under evidence, batched, in log space), the backward
//!   pass (flows), and conditional marginals in both semantics: pyjuice's flow-weighted leaf
//!   distributions and the Bayes posterior.
//! - [`learn`]: expectation-maximisation from data.
//! - [`format`]: the `latentflow-pc-v1` file, one `.safetensors` whose metadata holds the
//!   structure as JSON.

pub mod circuit;
pub mod error;
pub mod evidence;
pub mod format;
pub mod learn;
pub mod query;
pub mod structure;

pub use circuit::{Circuit, Node};
pub use error::PcError;
pub use evidence::Evidence;
pub use query::{conditional, forward, Flows, Forward, Semantics};
