//! Isolated plugins (`--isolate`): a plugin that segfaults, aborts, overflows its stack or
//! allocates without bound fails its node; the host, and the other branches, go on.

use std::time::Duration;

use latentflow_tests::{count, graph, Sandbox};

const CRASHY: &str = "lf_fixture_crashy";

/// A graph with a core branch, a branch through the crashing plugin's harmless node, and the
/// crashing node itself.
fn crashing_graph(crash: &str) -> String {
    format!(
        "version: 1\nnodes:\n  noise:\n    type: core.noise_latent\n    params: {{width: 64, height: 48, channels: 4, seed: 42}}\n  echoed:\n    type: crash.echo\n    inputs: {{x: noise}}\n  save:\n    type: core.save_tensor\n    inputs: {{tensor: echoed}}\n    params: {{filename: noise.safetensors, name: latent}}\n  boom:\n    type: {crash}\n"
    )
}

#[test]
fn a_crash_in_an_isolated_plugin_fails_its_node_and_the_other_branches_finish() {
    let sb = Sandbox::with_plugins(&[CRASHY]);
    for (node, signal) in [
        ("crash.segfault", "SIGSEGV (segmentation fault)"),
        ("crash.abort", "SIGABRT (aborted)"),
        ("crash.stack_overflow", "SIGABRT (aborted)"),
    ] {
        let _ = std::fs::remove_dir_all(sb.output(""));
        let run = sb.graph("run", "crash.yaml", &crashing_graph(node), &["--isolate"]);
        run.expect_code(4)
            .stderr_has(signal)
            .stderr_has("FAILED  boom [crashy (");
        let failure = run
            .stderr
            .lines()
            .find(|l| l.contains("FAILED  boom"))
            .unwrap_or_default();
        assert!(
            failure.contains("liblf_fixture_crashy.so crashed: its worker was killed by"),
            "{failure}"
        );
        assert_eq!(
            run.stderr.matches("FAILED").count(),
            1,
            "only the crashing node fails ({node}):\n{}",
            run.stderr
        );
        assert!(
            sb.output("noise.safetensors").is_file(),
            "the branch through the same plugin finished ({node})"
        );
    }
    // The stack overflow's own report reaches the message.
    sb.graph(
        "run",
        "crash.yaml",
        &crashing_graph("crash.stack_overflow"),
        &["--isolate"],
    )
    .stderr_has("stack overflow");
}

#[test]
fn without_isolation_the_same_crash_kills_the_host() {
    let sb = Sandbox::with_plugins(&[CRASHY]);
    let run = sb.graph("run", "crash.yaml", &crashing_graph("crash.segfault"), &[]);
    assert_eq!(run.code, -1, "killed by a signal:\n{}", run.stderr);
    // A folder marked for isolation isolates its plugins without the flag.
    sb.write("plugins/.latentflow-isolate", "");
    sb.graph("run", "crash.yaml", &crashing_graph("crash.segfault"), &[])
        .expect_code(4)
        .stderr_has("SIGSEGV");
    // So does naming the plugin.
    std::fs::remove_file(sb.path().join("plugins/.latentflow-isolate")).expect("unmark");
    sb.graph(
        "run",
        "crash.yaml",
        &crashing_graph("crash.segfault"),
        &["--isolate-plugin", CRASHY],
    )
    .expect_code(4)
    .stderr_has("SIGSEGV");
}

#[test]
fn a_runaway_allocation_is_stopped_at_the_worker_memory_limit() {
    let sb = Sandbox::with_plugins(&[CRASHY]);
    let started = std::time::Instant::now();
    sb.graph(
        "run",
        "crash.yaml",
        &crashing_graph("crash.hog"),
        &["--isolate", "--isolate-memory", "300M"],
    )
    .expect_code(4)
    .stderr_has("went over its memory limit of 300 MiB");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(sb.output("noise.safetensors").is_file());
}

#[test]
fn isolated_runs_draw_the_same_pictures_as_in_process_runs() {
    // txt2img: the sampler (samplers plugin) calls the UNet denoiser (sd plugin) through the
    // host, each in its own worker; controlnet adds a wrapper chain; latents moves tensors.
    let sb = Sandbox::new();
    for g in ["txt2img.yaml", "controlnet.yaml", "latents.yaml"] {
        let file = graph(g);
        let file = file.to_string_lossy();
        sb.run(&["run", &file, "--output-dir", "plain", "-q"])
            .expect_code(0);
        sb.run(&["run", &file, "--output-dir", "isolated", "-q", "--isolate"])
            .expect_code(0);
    }
    let mut compared = 0;
    for entry in std::fs::read_dir(sb.path().join("plain")).expect("outputs") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name");
        let isolated = std::fs::read(sb.path().join("isolated").join(name)).expect("isolated");
        assert!(
            std::fs::read(&path).expect("plain") == isolated,
            "{} differs",
            name.to_string_lossy()
        );
        compared += 1;
    }
    assert!(compared >= 4, "{compared} outputs compared");
    let readme = std::fs::read_to_string(latentflow_tests::workspace_root().join("README.md"))
        .expect("README");
    assert!(readme.contains("latentflow run graphs/txt2img.yaml --isolate"));
}

#[test]
fn the_worker_restarts_after_a_crash_and_dead_objects_are_not_served_from_the_cache() {
    let sb = Sandbox::with_plugins(&[CRASHY]);
    let v1 = "nodes:\n  box: {type: crash.make_box, params: {value: 40}}\n  open: {type: crash.open_box, inputs: {box: box}, params: {add: 1}}\n  boom: {type: crash.segfault, inputs: {x: open}}\n";
    let g = sb.write("g.yaml", v1);
    let w = sb.spawn(&[
        "watch",
        g.to_str().unwrap_or_default(),
        "--events",
        "json",
        "--isolate",
    ]);
    let wait = Duration::from_secs(60);
    w.wait_for("the first run", wait, |ev| count(ev, "run_finished") >= 1);
    assert!(w.stderr().is_empty() || !w.stderr().contains("panicked"));
    // The Box of the first run lived in the worker that crashed. The second run must make it
    // again (in a new worker) rather than hand the dead object to `open`.
    let v2 = v1
        .replace("add: 1", "add: 2")
        .replace("crash.segfault", "crash.echo");
    let tmp = sb.path().join(".g.yaml.swp");
    std::fs::write(&tmp, &v2).expect("write");
    std::fs::rename(&tmp, &g).expect("rename");
    w.wait_for("the second run", wait, |ev| count(ev, "run_finished") >= 2);
    let events = w.events();
    let second: Vec<&serde_json::Value> = events
        .iter()
        .skip_while(|e| {
            !(e["event"] == "run_started"
                && events
                    .iter()
                    .filter(|x| x["event"] == "run_started")
                    .position(|x| std::ptr::eq(x, *e))
                    == Some(1))
        })
        .collect();
    assert!(
        second.iter().all(|e| e["event"] != "node_failed"),
        "the second run failed: {second:#?}"
    );
    assert!(
        second
            .iter()
            .any(|e| e["event"] == "node_finished" && e["node"] == "box"),
        "the dead Box was made again: {second:#?}"
    );
    let finished = second
        .iter()
        .find(|e| e["event"] == "run_finished")
        .expect("finished");
    assert_eq!(finished["status"], "ok", "{finished:#}");

    // The new worker outlives the run that started it: a third run serves the Box from the
    // cache and opens it in the same worker.
    let v3 = format!("# third\n{}", v2.replace("add: 2", "add: 3"));
    std::fs::write(&tmp, v3).expect("write");
    std::fs::rename(&tmp, &g).expect("rename");
    w.wait_for("the third run", wait, |ev| count(ev, "run_finished") >= 3);
    let events = w.events();
    let starts: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["event"] == "run_started")
        .map(|(i, _)| i)
        .collect();
    let third = &events[starts[2]..];
    assert!(
        third
            .iter()
            .any(|e| e["event"] == "node_cached" && e["node"] == "box"),
        "the Box stayed alive: {third:#?}"
    );
    assert!(
        third.iter().all(|e| e["event"] != "node_failed"),
        "{third:#?}"
    );
}
