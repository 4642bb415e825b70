//! Graph files: parsing, validation, type checking, plans.

pub mod diag;
pub mod file;
pub mod params;
pub mod plan;
pub mod source;
pub mod typecheck;
pub mod validate;
pub mod yaml_positions;

pub use diag::{Diagnostic, Pos, Severity};
pub use plan::{Plan, PlanNode, Source};
pub use validate::{node_seed, parse_set_value, validate, validate_bytes, Overrides, Validated};
