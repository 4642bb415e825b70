//! Finding, loading and hot-swapping plugin libraries.

pub mod elf;
pub mod loader;
pub mod registry;

pub use loader::{LoadError, Plugin};
pub use registry::{Discovery, NodeType, Refusal, Registry};
