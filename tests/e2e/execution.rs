//! Execution: failures, panics, concurrency, cancellation, exit codes, explain.

use std::time::{Duration, Instant};

use latentflow_tests::{count, Sandbox};

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.add_plugin("lf_fixture_testkit");
    sb
}

#[test]
fn panicking_node_fails_that_node_only() {
    let sb = sandbox();
    let g = sb.write(
        "panic.yaml",
        r#"
nodes:
  one: {type: core.int, params: {value: 1}}
  bad: {type: test.panic, inputs: {x: one}, params: {message: kaboom}}
  after: {type: test.write_text, inputs: {value: bad}, params: {filename: never.txt}}
  good: {type: test.write_text, inputs: {value: one}, params: {filename: good.txt}}
"#,
    );
    let r = sb.run(&[
        "run",
        g.to_str().unwrap_or_default(),
        "--events",
        "json",
        "--threads",
        "1",
    ]);
    r.expect_code(4);
    let ev = r.events();
    let failed = ev
        .iter()
        .find(|e| e["event"] == "node_failed")
        .expect("node_failed event");
    assert_eq!(failed["node"], "bad");
    assert!(failed["plugin"]
        .as_str()
        .unwrap_or_default()
        .contains("testkit"));
    assert!(failed["error"]
        .as_str()
        .unwrap_or_default()
        .contains("kaboom"));
    assert!(ev
        .iter()
        .any(|e| e["event"] == "node_skipped" && e["node"] == "after"));
    assert_eq!(
        std::fs::read_to_string(sb.path().join("output/good.txt")).unwrap_or_default(),
        "1"
    );
    assert!(!sb.path().join("output/never.txt").exists());
}

#[test]
fn failing_node_message_names_node_and_plugin_for_humans() {
    let sb = sandbox();
    let g = sb.write(
        "fail.yaml",
        "nodes:\n  broken: {type: test.fail, params: {message: no luck}}\n",
    );
    let r = sb.run(&["run", g.to_str().unwrap_or_default()]);
    r.expect_code(4);
    assert!(r.stderr.contains("FAILED  broken [testkit"), "{}", r.stderr);
    assert!(r.stderr.contains("no luck"), "{}", r.stderr);
}

#[test]
fn independent_branches_run_concurrently() {
    let sb = sandbox();
    let g = sb.write(
        "parallel.yaml",
        r#"
nodes:
  a: {type: test.sleep, params: {ms: 400}}
  b: {type: test.sleep, params: {ms: 400}}
  wa: {type: test.write_text, inputs: {value: a}, params: {filename: a.txt}}
  wb: {type: test.write_text, inputs: {value: b}, params: {filename: b.txt}}
"#,
    );
    let r = sb.run(&[
        "run",
        g.to_str().unwrap_or_default(),
        "--events",
        "json",
        "--threads",
        "2",
    ]);
    r.expect_code(0);
    let ev = r.events();
    let sleeps: Vec<f64> = ev
        .iter()
        .filter(|e| e["event"] == "node_finished" && (e["node"] == "a" || e["node"] == "b"))
        .map(|e| e["ms"].as_f64().unwrap_or(0.0))
        .collect();
    assert_eq!(sleeps.len(), 2);
    assert!(sleeps.iter().all(|&ms| ms >= 390.0), "{sleeps:?}");
    let total = ev.last().and_then(|e| e["ms"].as_f64()).unwrap_or(0.0);
    // Serial execution would take at least 800 ms.
    assert!(
        total < 700.0,
        "two 400 ms branches took {total} ms in all: not concurrent"
    );
}

#[test]
fn invalid_graph_exits_3_and_runs_nothing() {
    let sb = sandbox();
    let g = sb.write(
        "bad.yaml",
        "nodes:\n  w: {type: test.write_text, inputs: {value: nope}, params: {filename: x.txt}}\n",
    );
    let r = sb.run(&["run", g.to_str().unwrap_or_default()]);
    r.expect_code(3);
    assert!(r.stderr.contains("nothing was run"), "{}", r.stderr);
    assert!(!sb.path().join("output/x.txt").exists());
}

#[test]
fn output_paths_cannot_escape_the_output_folder() {
    let sb = Sandbox::new();
    let g = sb.write(
        "escape.yaml",
        "nodes:\n  img: {type: core.solid_image, params: {width: 8, height: 8}}\n  save: {type: core.save_image, inputs: {image: img}, params: {filename: ../escaped.png}}\n",
    );
    let r = sb.run(&["run", g.to_str().unwrap_or_default()]);
    r.expect_code(4);
    assert!(
        r.stderr.contains("must stay inside the output folder"),
        "{}",
        r.stderr
    );
    assert!(!sb.path().join("escaped.png").exists());
}

#[test]
fn ctrl_c_cancels_inside_a_long_node() {
    let sb = sandbox();
    let g = sb.write(
        "long.yaml",
        "nodes:\n  s: {type: test.sleep, params: {ms: 20000}}\n  w: {type: test.write_text, inputs: {value: s}}\n",
    );
    let mut running = sb.spawn(&["run", g.to_str().unwrap_or_default(), "--events", "json"]);
    running.wait_for("the sleep to start", Duration::from_secs(20), |ev| {
        count(ev, "node_started") >= 1
    });
    let started = Instant::now();
    let pid = running.child.id().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .map(|s| s.success());
    assert_eq!(ok.ok(), Some(true));
    let status = running.child.wait().expect("exit status");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancellation took too long"
    );
    assert_eq!(status.code(), Some(130));
}

#[test]
fn explain_lists_every_node_with_a_reason() {
    let sb = Sandbox::new();
    let g = sb.write(
        "e.yaml",
        "nodes:\n  a: {type: core.int, params: {value: 2}}\n  b: {type: core.add_int, inputs: {a: a}, params: {add: 1}}\n",
    );
    let r = sb.run(&["run", g.to_str().unwrap_or_default(), "--explain", "-q"]);
    r.expect_code(0);
    let table: Vec<&str> = r.stderr.lines().collect();
    assert!(table[0].starts_with("node"), "{}", r.stderr);
    assert!(table
        .iter()
        .any(|l| l.starts_with("a ") && l.contains("ran") && l.contains("first run")));
    assert!(table
        .iter()
        .any(|l| l.starts_with("b ") && l.contains("ran")));
}
