//! `latentflow watch`: incremental re-runs through the cache, and plugin hot reload.

use std::time::Duration;

use latentflow_tests::{count, Running, Sandbox};

const WAIT: Duration = Duration::from_secs(30);

fn edit(sb: &Sandbox, name: &str, text: &str) {
    // Write through a temporary file and rename, as editors do.
    let tmp = sb.path().join(format!(".{name}.swp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, sb.path().join(name)).expect("rename");
}

fn reason_of(
    events: &[serde_json::Value],
    run_index: usize,
    node: &str,
) -> (String, serde_json::Value) {
    // Events of run k lie between the k-th run_started and the following run_finished.
    let mut k = 0;
    let mut inside = false;
    for e in events {
        match e["event"].as_str() {
            Some("run_started") => {
                inside = k == run_index;
            }
            Some("run_finished") => {
                if inside {
                    break;
                }
                k += 1;
            }
            Some(kind @ ("node_finished" | "node_cached")) if inside && e["node"] == node => {
                return (kind.to_string(), e["reason"].clone());
            }
            _ => {}
        }
    }
    panic!("no event for node {node} in run {run_index}: {events:#?}");
}

fn wait_runs(w: &Running, n: usize) {
    w.wait_for(&format!("{n} runs"), WAIT, |ev| {
        count(ev, "run_finished") >= n
    });
}

/// Writes `g.yaml`, starts `latentflow watch` on it and waits for the first run.
fn watch(sb: &Sandbox, yaml: &str) -> Running {
    let g = sb.write("g.yaml", yaml);
    let w = sb.spawn(&["watch", g.to_str().unwrap_or_default(), "--events", "json"]);
    wait_runs(&w, 1);
    w
}

/// The first event named `name` so far.
fn first(w: &Running, name: &str) -> serde_json::Value {
    w.events()
        .into_iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event"))
}

#[test]
fn graph_edits_rerun_only_what_changed_with_early_cutoff() {
    let sb = Sandbox::new();
    let v1 = "nodes:\n  x: {type: core.int, params: {value: 2}}\n  y: {type: core.add_int, inputs: {a: x}, params: {add: 1}}\n  z: {type: core.add_int, inputs: {a: y}, params: {add: 10}}\n  other: {type: core.int, params: {value: 7}}\n";
    let w = watch(&sb, v1);
    let ev = w.events();
    assert_eq!(
        reason_of(&ev, 0, "z"),
        (
            "node_finished".into(),
            serde_json::json!({"kind": "first_run"})
        )
    );

    // x changes value but y's output stays 3: z is cut off early.
    edit(
        &sb,
        "g.yaml",
        &v1.replace("value: 2}", "value: 1}")
            .replace("add: 1}", "add: 2}"),
    );
    wait_runs(&w, 2);
    let ev = w.events();
    let (kind, reason) = reason_of(&ev, 1, "x");
    assert_eq!(kind, "node_finished");
    assert_eq!(reason["kind"], "params_changed");
    assert_eq!(reason["params"], serde_json::json!(["value"]));
    assert_eq!(reason_of(&ev, 1, "y").1["kind"], "params_changed");
    let (kind, reason) = reason_of(&ev, 1, "z");
    assert_eq!(kind, "node_cached", "{ev:#?}");
    assert_eq!(reason["kind"], "early_cutoff");
    assert_eq!(reason["upstream"], serde_json::json!(["y"]));
    let (kind, reason) = reason_of(&ev, 1, "other");
    assert_eq!(
        (kind.as_str(), reason["kind"].as_str()),
        ("node_cached", Some("unchanged"))
    );

    // Back to the first version: everything comes from the cache.
    edit(&sb, "g.yaml", v1);
    wait_runs(&w, 3);
    let ev = w.events();
    for n in ["x", "y", "z", "other"] {
        assert_eq!(reason_of(&ev, 2, n).0, "node_cached", "{n}");
    }
}

#[test]
fn invalid_edit_is_reported_and_the_next_valid_edit_runs() {
    let sb = Sandbox::new();
    let good = "nodes:\n  x: {type: core.int, params: {value: 2}}\n";
    let w = watch(&sb, good);
    edit(&sb, "g.yaml", "nodes:\n  x: {type: core.innt}\n");
    w.wait_for("an invalid graph_changed", WAIT, |ev| {
        ev.iter()
            .any(|e| e["event"] == "graph_changed" && e["valid"] == false)
    });
    let events = w.events();
    let bad = events.iter().find(|e| e["valid"] == false);
    let bad = bad.expect("invalid event");
    assert!(bad["diagnostics"][0]
        .as_str()
        .unwrap_or_default()
        .contains("did you mean `core.int`"));
    edit(&sb, "g.yaml", &good.replace('2', "3"));
    wait_runs(&w, 2);
}

#[test]
fn rebuilt_plugin_is_hot_reloaded_and_a_broken_one_refused() {
    let sb = Sandbox::with_plugins(&["lf_fixture_testkit"]);
    sb.add_plugin_as("lf_fixture_reload_v1", "libreload.so");
    let yaml = "nodes:\n  v: {type: reload.value}\n  w: {type: test.write_text, inputs: {value: v}, params: {filename: value.txt}}\n";
    let w = watch(&sb, yaml);
    let value = || std::fs::read_to_string(sb.output("value.txt")).unwrap_or_default();
    assert_eq!(value(), "1");

    // A rebuild lands: the new generation is loaded, swapped in and the graph re-runs.
    sb.add_plugin_as("lf_fixture_reload_v2", "libreload.so");
    w.wait_for("the reload", WAIT, |ev| count(ev, "plugin_reloaded") >= 1);
    wait_runs(&w, 2);
    assert_eq!(value(), "2");
    let ev = w.events();
    let (_, reason) = reason_of(&ev, 1, "v");
    assert_eq!(reason["kind"], "plugin_reloaded");
    // testkit's node re-ran only because its input changed.
    assert_eq!(reason_of(&ev, 1, "w").1["kind"], "upstream_changed");

    // A broken rebuild is refused with one line; the previous generation keeps serving.
    sb.add_plugin_as("lf_fixture_abi_mismatch", "libreload.so");
    w.wait_for("the refusal", WAIT, |ev| count(ev, "plugin_refused") >= 1);
    let refused = first(&w, "plugin_refused");
    let msg = refused["error"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("0.1.0") && !msg.contains('\n'), "{msg}");
    std::fs::remove_file(sb.output("value.txt")).expect("remove");
    edit(&sb, "g.yaml", &yaml.replace("value.txt", "again.txt"));
    wait_runs(&w, 3);
    let again = std::fs::read_to_string(sb.output("again.txt")).unwrap_or_default();
    assert_eq!(again, "2");
}

#[test]
fn a_plugin_overwritten_in_place_mid_write_is_refused_then_reloaded() {
    let sb = Sandbox::with_plugins(&["lf_fixture_testkit"]);
    let target = sb.add_plugin_as("lf_fixture_reload_v1", "libreload.so");
    let yaml = "nodes:\n  v: {type: reload.value}\n  w: {type: test.write_text, inputs: {value: v}, params: {filename: value.txt}}\n";
    let w = watch(&sb, yaml);
    // A build caught mid-write: the first half of the new library, in place.
    let v2 = std::fs::read(latentflow_tests::lib("lf_fixture_reload_v2")).expect("v2");
    std::fs::write(&target, &v2[..v2.len() / 2]).expect("half");
    w.wait_for("the refusal", WAIT, |ev| count(ev, "plugin_refused") >= 1);
    let msg = first(&w, "plugin_refused")["error"].to_string();
    assert!(msg.contains("truncated"), "{msg}");
    // The write completes: the new generation loads and the graph re-runs.
    std::fs::write(&target, &v2).expect("full");
    w.wait_for("the reload", WAIT, |ev| count(ev, "plugin_reloaded") >= 1);
    wait_runs(&w, 2);
    assert_eq!(
        std::fs::read_to_string(sb.output("value.txt")).unwrap_or_default(),
        "2"
    );
}
