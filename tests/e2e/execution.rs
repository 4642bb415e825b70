//! Execution: failures, panics, concurrency, cancellation, exit codes, explain.

use std::time::{Duration, Instant};

use latentflow_tests::{count, Sandbox};

const TESTKIT: &[&str] = &["lf_fixture_testkit"];

fn text_of(e: &serde_json::Value, key: &str) -> String {
    e[key].as_str().unwrap_or_default().to_string()
}

#[test]
fn panicking_node_fails_that_node_only() {
    let sb = Sandbox::with_plugins(TESTKIT);
    let yaml = r#"
nodes:
  one: {type: core.int, params: {value: 1}}
  bad: {type: test.panic, inputs: {x: one}, params: {message: kaboom}}
  after: {type: test.write_text, inputs: {value: bad}, params: {filename: never.txt}}
  good: {type: test.write_text, inputs: {value: one}, params: {filename: good.txt}}
"#;
    let args = ["--events", "json", "--threads", "1"];
    let r = sb.graph("run", "panic.yaml", yaml, &args);
    r.expect_code(4);
    let failed = r.event("node_failed");
    assert_eq!(failed["node"], "bad");
    assert!(text_of(&failed, "plugin").contains("testkit"));
    assert!(text_of(&failed, "error").contains("kaboom"));
    assert!(r
        .events()
        .iter()
        .any(|e| e["event"] == "node_skipped" && e["node"] == "after"));
    let good = std::fs::read_to_string(sb.output("good.txt")).unwrap_or_default();
    assert_eq!(good, "1");
    assert!(!sb.output("never.txt").exists());
}

#[test]
fn failing_node_message_names_node_and_plugin_for_humans() {
    let sb = Sandbox::with_plugins(TESTKIT);
    let yaml = "nodes:\n  broken: {type: test.fail, params: {message: no luck}}\n";
    sb.graph("run", "fail.yaml", yaml, &[])
        .expect_code(4)
        .stderr_has("FAILED  broken [testkit")
        .stderr_has("no luck");
}

#[test]
fn quiet_still_prints_what_failed() {
    let sb = Sandbox::with_plugins(TESTKIT);
    let yaml = "nodes:\n  broken: {type: test.fail, params: {message: no luck}}\n  fine: {type: core.int}\n";
    let r = sb.graph("run", "fail.yaml", yaml, &["-q"]);
    r.expect_code(4).stderr_has("FAILED  broken [testkit");
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "only the failure: {}",
        r.stderr
    );
}

#[test]
fn independent_branches_run_concurrently() {
    let sb = Sandbox::with_plugins(TESTKIT);
    let yaml = r#"
nodes:
  a: {type: test.sleep, params: {ms: 400}}
  b: {type: test.sleep, params: {ms: 400}}
  wa: {type: test.write_text, inputs: {value: a}, params: {filename: a.txt}}
  wb: {type: test.write_text, inputs: {value: b}, params: {filename: b.txt}}
"#;
    let args = ["--events", "json", "--threads", "2"];
    let r = sb.graph("run", "parallel.yaml", yaml, &args);
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
        "two 400 ms branches took {total} ms: not concurrent"
    );
}

#[test]
fn invalid_graph_exits_3_and_runs_nothing() {
    let sb = Sandbox::with_plugins(TESTKIT);
    let yaml =
        "nodes:\n  w: {type: test.write_text, inputs: {value: nope}, params: {filename: x.txt}}\n";
    sb.graph("run", "bad.yaml", yaml, &[])
        .expect_code(3)
        .stderr_has("nothing was run");
    assert!(!sb.output("x.txt").exists());
}

#[test]
fn output_paths_cannot_escape_the_output_folder() {
    let sb = Sandbox::new();
    let yaml = "nodes:\n  img: {type: core.solid_image, params: {width: 8, height: 8}}\n  save: {type: core.save_image, inputs: {image: img}, params: {filename: ../escaped.png}}\n";
    sb.graph("run", "escape.yaml", yaml, &[])
        .expect_code(4)
        .stderr_has("must stay inside the output folder");
    assert!(!sb.path().join("escaped.png").exists());
}

#[test]
fn sizes_known_from_params_are_refused_before_anything_runs() {
    let sb = Sandbox::new();
    let cases = [
        (
            "core.solid_image",
            "{width: 16384, height: 16384, batch: 4096}",
        ),
        (
            "core.noise_latent",
            "{width: 16384, height: 16384, batch: 4096, channels: 64, downscale: 1}",
        ),
        (
            "core.solid_mask",
            "{width: 16384, height: 16384, batch: 4096}",
        ),
    ];
    for (ty, params) in cases {
        let yaml = format!("nodes:\n  n: {{type: {ty}, params: {params}}}\n");
        // Pointed at the largest size written in the graph.
        sb.graph("run", "big.yaml", &yaml, &["-q"])
            .expect_code(3)
            .stderr_has("big.yaml:2:")
            .stderr_has("would take");
    }
    // The limit is the run's: under a small one, a modest latent is refused too...
    let yaml =
        "nodes:\n  n: {type: core.empty_latent, params: {width: 512, height: 512, batch: 64}}\n";
    let g = sb.write("limited.yaml", yaml);
    let out = sb
        .cmd(&["validate", g.to_str().unwrap_or_default()])
        .env("LATENTFLOW_ALLOC_LIMIT", "1M")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("would take 4.0 MiB but one result may take at most 1.0 MiB"));
    // ... and passes under the default one.
    sb.graph("validate", "limited.yaml", yaml, &[])
        .expect_code(0);
}

#[test]
fn endless_and_special_files_are_refused_when_read() {
    let sb = Sandbox::new();
    let yaml = "nodes:\n  n: {type: core.load_tensor, params: {path: /dev/zero}}\n";
    sb.graph("run", "zero.yaml", yaml, &["-q"])
        .expect_code(4)
        .stderr_has("not a regular file");
}

#[test]
fn ctrl_c_cancels_inside_a_long_node() {
    let sb = Sandbox::with_plugins(TESTKIT);
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
    let yaml = "nodes:\n  a: {type: core.int, params: {value: 2}}\n  b: {type: core.add_int, inputs: {a: a}, params: {add: 1}}\n";
    let r = sb.graph("run", "e.yaml", yaml, &["--explain", "-q"]);
    r.expect_code(0);
    let table: Vec<&str> = r.stderr.lines().collect();
    assert!(table[0].starts_with("node"), "{}", r.stderr);
    let ran = |node: &str| {
        table
            .iter()
            .any(|l| l.starts_with(node) && l.contains("ran"))
    };
    assert!(ran("a ") && ran("b "), "{}", r.stderr);
    assert!(table
        .iter()
        .any(|l| l.starts_with("a ") && l.contains("first run")));
}
