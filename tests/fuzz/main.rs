//! Fuzz targets on the stable toolchain: proptest drives byte mutations of real inputs and
//! structured generators into every reader of untrusted data. Each target asserts that nothing
//! panics and that what is accepted is consistent.
//!
//! CI runs a bounded number of cases per target; `LATENTFLOW_FUZZ_CASES=N` runs more (see
//! BENCHMARKS.md for the long runs). A failure prints the minimal input; it then becomes a
//! regression test in the target's file.

mod configs;
mod elf;
mod graph;
mod mutate;
mod png_meta;
mod safetensors_header;

use proptest::test_runner::{Config, FileFailurePersistence};

/// The proptest configuration of a target: `default` cases unless `LATENTFLOW_FUZZ_CASES` says.
pub fn config(default: u32) -> Config {
    let cases = std::env::var("LATENTFLOW_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        max_shrink_iters: 2000,
        ..Config::default()
    }
}
