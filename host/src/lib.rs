//! LatentFlow: run diffusion pipelines written as YAML graphs of nodes from plugin libraries.
//!
//! The library behind the `latentflow` binary: graph validation ([`graph`]), plugin loading
//! ([`plugins`]), execution with a content-addressed cache ([`exec`]) and hot reload
//! ([`watch`]).

pub mod bench;
pub mod catalog;
pub mod devices;
pub mod dot;
pub mod exec;
pub mod farm;
pub mod foreign;
pub mod graph;
pub mod isolate;
pub mod limits;
pub mod models;
pub mod plugins;
pub mod provenance;
pub mod schema;
pub mod serve;
pub mod ui;
pub mod watch;
