//! Executing plans.

pub mod cache;
pub mod events;
pub mod executor;
pub mod hash;
pub mod services;

pub use events::{CollectSink, Event, EventSink, JsonLinesSink, NullSink, Reason};
pub use executor::{explain, Executor, Outcome, RunOptions, RunReport, RunStatus, Status};
