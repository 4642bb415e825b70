//! The graph reader and validator: mutated example graphs and malformed-corpus files, with the
//! real first-party plugins loaded. Validation never panics, a refused graph always says why,
//! and every position lies inside the file.

use std::path::PathBuf;
use std::sync::OnceLock;

use latentflow::graph::{validate_bytes, Overrides};
use latentflow::plugins::{Discovery, Registry};
use latentflow_tests::{workspace_root, Sandbox};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::mutate::{apply, text_edits};

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
    /// The example graphs as JSON trees, for structured edits.
    trees: Vec<(PathBuf, Value)>,
    /// Every string in the example graphs and every node type: ids, `node.port` references,
    /// `$variables`, type names, paths.
    words: Vec<String>,
}

/// The first-party plugins, loaded from their own sandbox (so from their own copies).
fn load_plugins() -> (Sandbox, Registry) {
    let plugins =
        Sandbox::with_plugins(&["latentflow_core", "latentflow_samplers", "latentflow_sd"]);
    let discovery = Discovery {
        dirs: vec![plugins.path().join("plugins")],
        exe_dir: None,
        cache_dir: plugins.path().join("cache"),
        isolate: Default::default(),
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
        let trees: Vec<(PathBuf, Value)> = seeds
            .iter()
            .filter(|(p, _)| p.starts_with(workspace_root().join("graphs")))
            .filter_map(|(p, b)| Some((p.clone(), serde_saphyr::from_slice(b).ok()?)))
            .collect();
        assert!(trees.len() > 10, "example graphs");
        // The same graphs as JSON, which takes the validator's fast path.
        for (p, v) in &trees {
            seeds.push((p.clone(), serde_json::to_vec_pretty(v).expect("JSON")));
        }
        let mut words: Vec<String> = registry.type_ids().map(str::to_string).collect();
        for (_, v) in &trees {
            strings(v, &mut words);
        }
        words.sort();
        words.dedup();
        World {
            _plugins: plugins,
            registry,
            seeds,
            trees,
            words,
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

/// Every string (keys included) in `v`.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out);
        }),
        _ => {}
    }
}

/// Every place in `v`, as a path of keys and indices.
fn places(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(at.clone());
    match v {
        Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| {
            at.push(Value::from(i));
            places(v, at, out);
            at.pop();
        }),
        Value::Object(o) => o.iter().for_each(|(k, v)| {
            at.push(Value::from(k.as_str()));
            places(v, at, out);
            at.pop();
        }),
        _ => {}
    }
}

/// The value at `path` and how to remove it from its parent.
fn at_path<'v>(v: &'v mut Value, path: &[Value]) -> Option<&'v mut Value> {
    path.iter().try_fold(v, |v, seg| match (v, seg) {
        (Value::Array(a), Value::Number(i)) => a.get_mut(i.as_u64()? as usize),
        (Value::Object(o), Value::String(k)) => o.get_mut(k),
        _ => None,
    })
}

/// A change to a graph tree: replace the value at a place, remove it, or rename a key.
#[derive(Debug, Clone)]
enum TreeEdit {
    Replace(usize, Value),
    Remove(usize),
    Rename(usize, usize),
}

/// A value for a place: a word from the graphs, a number at the edges of its type, a container.
fn tree_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => any::<usize>().prop_map(|i| Value::from(format!("#word{i}"))),
        2 => prop_oneof![
            Just(json!(0)), Just(json!(-1)), Just(json!(1)), Just(json!(7)), Just(json!(65536)),
            Just(json!(u64::MAX)), Just(json!(i64::MIN)), Just(json!(1.5)), Just(json!(1e300)),
            Just(json!(-0.0)),
        ],
        1 => prop_oneof![Just(Value::Null), Just(json!(true)), Just(json!({})), Just(json!([]))],
        1 => (any::<usize>(), any::<usize>())
            .prop_map(|(a, b)| json!({"type": format!("#word{a}"), "inputs": {"x": format!("#word{b}")}})),
        1 => prop::collection::vec(any::<usize>(), 0..3)
            .prop_map(|v| json!(v.iter().map(|i| format!("#word{i}")).collect::<Vec<_>>())),
    ]
}

/// `tree` with `edits` applied; `#wordN` strings become words of the corpus.
fn edited(tree: &Value, edits: &[TreeEdit], words: &[String]) -> Value {
    let word = |v: &mut Value| {
        fn fill(v: &mut Value, words: &[String]) {
            match v {
                Value::String(s) => {
                    if let Some(i) = s
                        .strip_prefix("#word")
                        .and_then(|i| i.parse::<usize>().ok())
                    {
                        *s = words[i % words.len()].clone();
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(|v| fill(v, words)),
                Value::Object(o) => o.values_mut().for_each(|v| fill(v, words)),
                _ => {}
            }
        }
        fill(v, words)
    };
    let mut t = tree.clone();
    for e in edits {
        let mut all = Vec::new();
        places(&t, &mut Vec::new(), &mut all);
        let pick = |i: usize| all[i % all.len()].clone();
        match e {
            TreeEdit::Replace(i, v) => {
                let mut v = v.clone();
                word(&mut v);
                if let Some(slot) = at_path(&mut t, &pick(*i)) {
                    *slot = v;
                }
            }
            TreeEdit::Remove(i) | TreeEdit::Rename(i, _) => {
                let path = pick(*i);
                let Some((last, parent)) = path.split_last() else {
                    continue;
                };
                let renamed = match e {
                    TreeEdit::Rename(_, w) => Some(words[w % words.len()].clone()),
                    _ => None,
                };
                match (at_path(&mut t, parent), last) {
                    (Some(Value::Object(o)), Value::String(k)) => {
                        if let (Some(v), Some(name)) = (o.remove(k), renamed) {
                            o.insert(name, v);
                        }
                    }
                    (Some(Value::Array(a)), Value::Number(n)) if renamed.is_none() => {
                        let n = n.as_u64().unwrap_or(0) as usize;
                        if n < a.len() {
                            a.remove(n);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    t
}

fn tree_edits() -> impl Strategy<Value = Vec<TreeEdit>> {
    let edit = prop_oneof![
        4 => (any::<usize>(), tree_value()).prop_map(|(i, v)| TreeEdit::Replace(i, v)),
        1 => any::<usize>().prop_map(TreeEdit::Remove),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, w)| TreeEdit::Rename(i, w)),
    ];
    prop::collection::vec(edit, 1..4)
}

proptest! {
    #![proptest_config(crate::config(384))]

    #[test]
    fn mutated_graphs_validate_without_panicking(seed in any::<usize>(), e in text_edits(4)) {
        let w = world();
        let (path, bytes) = &w.seeds[seed % w.seeds.len()];
        check(path, &apply(bytes, &e, DICTIONARY));
    }

    #[test]
    fn edited_graph_trees_validate_without_panicking(seed in any::<usize>(), e in tree_edits(), json in any::<bool>()) {
        let w = world();
        let (path, tree) = &w.trees[seed % w.trees.len()];
        let t = edited(tree, &e, &w.words);
        // JSON takes the fast path; after a comment, the same text takes the YAML parser.
        let text = serde_json::to_string_pretty(&t).expect("JSON");
        let text = if json { text } else { format!("# edited\n{text}") };
        check(path, text.as_bytes());
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
