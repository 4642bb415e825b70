//! The plugin pre-load check: every cut of a real plugin is refused, and mutated headers of a
//! small shared library are refused or accepted without a panic.

use std::sync::OnceLock;

use latentflow::plugins::elf::check;
use proptest::prelude::*;

use crate::mutate::{apply, edits};

fn plugin() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        std::fs::read(latentflow_tests::lib("latentflow_core")).expect("core plugin")
    })
}

/// A small shared library of the system (the C library's stubs), else the core plugin.
fn small() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        [
            "libdl.so.2",
            "libutil.so.1",
            "librt.so.1",
            "libpthread.so.0",
        ]
        .iter()
        .flat_map(|n| {
            [
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/lib64",
                "/usr/lib",
            ]
            .map(|d| format!("{d}/{n}"))
        })
        .filter_map(|p| std::fs::read(p).ok())
        .find(|b| b.len() < (1 << 20) && check(b).is_ok())
        .unwrap_or_else(|| plugin().to_vec())
    })
}

#[test]
fn the_plugin_passes() {
    assert_eq!(check(plugin()), Ok(()));
    assert_eq!(check(small()), Ok(()));
}

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn every_cut_of_a_plugin_is_refused(cut in any::<usize>()) {
        let bytes = plugin();
        let cut = cut % bytes.len();
        prop_assert!(check(&bytes[..cut]).is_err(), "cut at {cut} of {}", bytes.len());
    }

    #[test]
    fn mutated_libraries_are_checked_without_panicking(e in edits(8), header_only in any::<bool>()) {
        let seed = small();
        let mutated = if header_only {
            // Edits confined to the first 4 KiB, where the headers are.
            let head = seed.len().min(4096);
            let mut m = apply(&seed[..head], &e, &[]);
            m.extend_from_slice(&seed[head..]);
            m
        } else {
            apply(seed, &e, &[])
        };
        let _ = check(&mutated);
    }
}
