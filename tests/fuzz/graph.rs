//! The graph reader and validator: mutated example graphs and malformed-corpus files, with the
//! real first-party plugins loaded. Validation never panics, a refused graph always says why,
//! and every position lies inside the file.

use std::path::PathBuf;
use std::sync::OnceLock;

use latentflow::graph::{validate_bytes, Overrides};
use latentflow::plugins::{Discovery, Registry};
use latentflow_tests::{workspace_root, Sandbox};
use proptest::prelude::*;

use crate::mutate::{apply, edits};

const DICTIONARY: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b":",
    b": ",
    b"- ",
    b"#",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"\"",
    b"'",
    b"&a ",
    b"*a",
    b"<<: *a",
    b"!!str ",
    b"!!binary ",
    b"~",
    b"null",
    b"true",
    b"---\n",
    b"...\n",
    b"|\n",
    b">-\n",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xc3",
    b"\x00",
    b"nodes:",
    b"inputs:",
    b"outputs:",
    b"type:",
    b"params:",
    b"id:",
    b"from:",
    b"${",
    b"}",
    b"$seed",
    b"version: 1\n",
    b"-1",
    b"0",
    b"1e400",
    b"18446744073709551615",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"0x7fffffff",
    b".nan",
    b"-.inf",
    b"core.int",
    b"sd.load_checkpoint",
    b"/dev/zero",
    b"../../../../etc/passwd",
];

struct World {
    _plugins: Sandbox,
    registry: Registry,
    seeds: Vec<(PathBuf, Vec<u8>)>,
}

/// The first-party plugins, loaded from their own sandbox (so from their own copies).
fn load_plugins() -> (Sandbox, Registry) {
    let plugins =
        Sandbox::with_plugins(&["latentflow_core", "latentflow_samplers", "latentflow_sd"]);
    let discovery = Discovery {
        dirs: vec![plugins.path().join("plugins")],
        exe_dir: None,
        cache_dir: plugins.path().join("cache"),
    };
    let (registry, refused) = Registry::load(&discovery);
    assert!(refused.is_empty(), "plugins refused: {refused:?}");
    (plugins, registry)
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let (plugins, registry) = load_plugins();
        let mut seeds = Vec::new();
        for dir in ["graphs", "tests/malformed"] {
            for path in latentflow_tests::files_with_ext(&workspace_root().join(dir), "yaml") {
                let bytes = std::fs::read(&path).expect("seed graph");
                seeds.push((path, bytes));
            }
        }
        assert!(seeds.len() > 30, "seed corpus");
        World {
            _plugins: plugins,
            registry,
            seeds,
        }
    })
}

/// Validates `bytes` as the graph at `path` and checks what comes back.
fn check(path: &std::path::Path, bytes: &[u8]) {
    let w = world();
    let v = validate_bytes(path, bytes, &w.registry, &Overrides::default());
    let errors = v
        .diagnostics
        .iter()
        .filter(|d| d.severity == latentflow::graph::Severity::Error)
        .count();
    assert_eq!(
        v.plan.is_none(),
        errors > 0,
        "a graph is refused exactly when an error says why: {:?}",
        v.diagnostics
    );
    let lines = 1 + bytes.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64;
    for d in &v.diagnostics {
        assert!(
            d.pos.line <= lines,
            "{} points at line {} of a {lines}-line file",
            d.code,
            d.pos.line
        );
        assert!(!d.message.is_empty(), "{} has no message", d.code);
    }
}

proptest! {
    #![proptest_config(crate::config(384))]

    #[test]
    fn mutated_graphs_validate_without_panicking(seed in any::<usize>(), e in edits(6)) {
        let w = world();
        let (path, bytes) = &w.seeds[seed % w.seeds.len()];
        check(path, &apply(bytes, &e, DICTIONARY));
    }

    #[test]
    fn arbitrary_bytes_validate_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let w = world();
        check(&w.seeds[0].0, &bytes);
    }
}

/// A plugin loaded by a thread that has ended still works from other threads. (mimalloc v3,
/// the allocator of `nodes/sd`, faulted in `mi_thread_init` here, killing the process; found by
/// this target, fixed by building mimalloc v2 with dlopen-safe thread-locals.)
#[test]
fn plugins_loaded_by_a_thread_that_has_ended_keep_working() {
    let (_plugins, registry) = std::thread::spawn(load_plugins).join().expect("loads");
    let w = world();
    for (path, bytes) in w.seeds.iter().take(8) {
        std::thread::scope(|s| {
            s.spawn(|| validate_bytes(path, bytes, &registry, &Overrides::default()));
        });
    }
}
