//! Plugin loading: refusals, conflicts, composition through objects, the out-of-tree example.

use latentflow_tests::{read_safetensors_f32, workspace_root, Sandbox};

/// `latentflow nodes` with one plugin installed; it must succeed.
fn nodes_with(lib: &str) -> latentflow_tests::Run {
    let sb = Sandbox::with_plugins(&[lib]);
    let r = sb.run(&["nodes"]);
    r.expect_code(0);
    r
}

#[test]
fn abi_mismatch_is_refused_with_one_line_naming_both_versions() {
    let r = nodes_with("lf_fixture_abi_mismatch");
    let refusal: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("refused plugin"))
        .collect();
    assert_eq!(refusal.len(), 1, "{}", r.stderr);
    let line = refusal[0];
    assert!(line.contains("lf_fixture_abi_mismatch"), "{line}");
    // A plugin built against ABI v1 (0.1.0) in this ABI v2 (0.2.0) host.
    assert!(line.contains("0.1.0") && line.contains("0.2.0"), "{line}");
    assert_eq!(r.stderr.lines().count(), 1, "only one line: {}", r.stderr);
    // The host keeps running with the other plugins.
    assert!(r.stdout.contains("core.save_image"));
}

#[test]
fn layout_mismatch_is_summarised_in_one_line() {
    let r = nodes_with("lf_fixture_layout_mismatch");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    r.stderr_has("incompatible plugin-api layout")
        .stderr_has("expected PluginMod, found OldPluginMod");
    // The full report is there for whoever asks.
    let sb = Sandbox::with_plugins(&["lf_fixture_layout_mismatch"]);
    sb.run(&["nodes", "--verbose"])
        .stderr_has("Layout of expected type");
}

#[test]
fn plugin_panicking_at_init_is_refused_and_host_keeps_running() {
    nodes_with("lf_fixture_init_panic")
        .stderr_has("refused plugin")
        .stderr_has("broken on purpose")
        .stdout_has("core.int");
}

#[test]
fn garbage_library_is_refused() {
    let sb = Sandbox::new();
    std::fs::write(sb.path().join("plugins/libgarbage.so"), b"not an ELF file").expect("write");
    sb.run(&["nodes"])
        .expect_code(0)
        .stderr_has("refused plugin")
        .stderr_has("libgarbage.so");
}

#[test]
fn a_truncated_library_is_refused_before_loading() {
    // dlopen of a truncated file would map segments past its end and die of SIGBUS.
    let sb = Sandbox::new();
    let full = std::fs::read(latentflow_tests::lib("lf_fixture_testkit")).expect("testkit");
    std::fs::write(
        sb.path().join("plugins/libhalf.so"),
        &full[..full.len() / 2],
    )
    .expect("write");
    let r = sb.run(&["nodes"]);
    r.expect_code(0)
        .stderr_has("libhalf.so")
        .stderr_has("truncated or corrupt library")
        .stdout_has("core.int");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}

#[test]
fn duplicate_node_types_name_both_files() {
    let sb = Sandbox::new();
    sb.add_plugin_as("lf_fixture_testkit", "libtestkit_a.so");
    sb.add_plugin_as("lf_fixture_testkit", "libtestkit_b.so");
    let g = sb.write("g.yaml", "nodes:\n  a: {type: core.int}\n");
    let r = sb.run(&["validate", g.to_str().unwrap_or_default()]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("already provided"))
        .expect("conflict line");
    assert!(
        line.contains("libtestkit_a.so") && line.contains("libtestkit_b.so"),
        "{line}"
    );
}

#[test]
fn two_plugins_compose_through_an_opaque_object() {
    let sb = Sandbox::with_plugins(&["lf_fixture_testkit", "lf_fixture_consumer"]);
    let yaml = r#"
nodes:
  scaler: {type: test.make_scaler, params: {factor: 3.0}}
  noise: {type: core.noise_latent, params: {width: 16, height: 16, seed: 5}}
  apply: {type: consumer.apply, inputs: {scaler: scaler, tensor: noise}}
  save_in: {type: core.save_tensor, inputs: {tensor: noise}, params: {filename: in.safetensors}}
  save_out: {type: core.save_tensor, inputs: {tensor: apply}, params: {filename: out.safetensors}}
"#;
    sb.graph("run", "objects.yaml", yaml, &["-q"])
        .expect_code(0);
    let (s_in, x) = read_safetensors_f32(&sb.output("in.safetensors"));
    let (s_out, y) = read_safetensors_f32(&sb.output("out.safetensors"));
    assert_eq!(s_in, s_out);
    for (a, b) in x.iter().zip(&y) {
        assert!((a * 3.0 - b).abs() < 1e-6);
    }
}

#[test]
fn a_panicking_object_method_fails_the_calling_node_only() {
    let sb = Sandbox::with_plugins(&["lf_fixture_testkit", "lf_fixture_consumer"]);
    let yaml = r#"
nodes:
  scaler: {type: test.make_scaler}
  noise: {type: core.noise_latent, params: {width: 16, height: 16}}
  apply: {type: consumer.apply, inputs: {scaler: scaler, tensor: noise}, params: {method: explode}}
  save: {type: core.save_tensor, inputs: {tensor: noise}, params: {filename: ok.safetensors}}
"#;
    let r = sb.graph("run", "boom.yaml", yaml, &["--events", "json"]);
    r.expect_code(4);
    let failed = r.event("node_failed");
    assert_eq!(failed["node"], "apply");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("the Scaler exploded"), "{failed}");
    assert!(sb.output("ok.safetensors").exists());
}

#[test]
fn handle_interfaces_are_type_checked() {
    let sb = Sandbox::with_plugins(&["lf_fixture_testkit", "lf_fixture_consumer"]);
    let yaml = "nodes:\n  n: {type: core.noise_latent}\n  apply: {type: consumer.apply, inputs: {scaler: n, tensor: n}}\n";
    sb.refuses(yaml, "expects Scaler, but `n.latent` is Latent{channels=4}");
}

/// The README's plugin example, built out of tree against this checkout's plugin-api.
#[test]
fn out_of_tree_example_plugin_builds_loads_and_runs() {
    let root = workspace_root();
    let example = root.join("examples/plugin-template");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let lib_rs = std::fs::read_to_string(example.join("src/lib.rs")).expect("example lib.rs");
    assert!(
        readme.contains(lib_rs.trim()),
        "README must show examples/plugin-template/src/lib.rs verbatim"
    );

    let built = latentflow_tests::build_example("plugin-template", "libhello_plugin.so");
    let sb = Sandbox::new();
    std::fs::copy(&built, sb.path().join("plugins/libhello_plugin.so")).expect("copy");
    let yaml = "nodes:\n  greet: {type: hello.greet, params: {name: LatentFlow}}\n  out: {type: core.string, params: {value: x}}\n";
    sb.graph("run", "hello.yaml", yaml, &["--events", "json"])
        .expect_code(0)
        .stdout_has("Hello, LatentFlow!");
}
