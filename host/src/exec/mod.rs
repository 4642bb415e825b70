//! Executing plans.

pub mod cache;
pub mod events;
pub mod executor;
pub mod hash;
pub mod report;
pub mod services;
mod worker;

pub use events::{CollectSink, Event, EventSink, JsonLinesSink, NullSink, Reason};
pub use executor::Executor;
pub use report::{explain, Outcome, RunOptions, RunReport, RunStatus, Status};
pub use worker::json_to_value;
