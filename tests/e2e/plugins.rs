//! Plugin loading: refusals, conflicts, composition through objects, the out-of-tree example.

use latentflow_tests::{read_safetensors_f32, workspace_root, Sandbox};

#[test]
fn abi_mismatch_is_refused_with_one_line_naming_both_versions() {
    let sb = Sandbox::new();
    sb.add_plugin("lf_fixture_abi_mismatch");
    let r = sb.run(&["nodes"]);
    r.expect_code(0);
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
    let sb = Sandbox::new();
    sb.add_plugin("lf_fixture_layout_mismatch");
    let r = sb.run(&["nodes"]);
    r.expect_code(0);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("incompatible plugin-api layout")
            && r.stderr.contains("expected PluginMod, found OldPluginMod"),
        "{}",
        r.stderr
    );
    // The full report is there for whoever asks.
    let r = sb.run(&["nodes", "--verbose"]);
    assert!(r.stderr.contains("Layout of expected type"), "{}", r.stderr);
}

#[test]
fn plugin_panicking_at_init_is_refused_and_host_keeps_running() {
    let sb = Sandbox::new();
    sb.add_plugin("lf_fixture_init_panic");
    let r = sb.run(&["nodes"]);
    r.expect_code(0);
    assert!(
        r.stderr.contains("refused plugin") && r.stderr.contains("broken on purpose"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("core.int"));
}

#[test]
fn garbage_library_is_refused() {
    let sb = Sandbox::new();
    std::fs::write(sb.path().join("plugins/libgarbage.so"), b"not an ELF file").expect("write");
    let r = sb.run(&["nodes"]);
    r.expect_code(0);
    assert!(
        r.stderr.contains("refused plugin") && r.stderr.contains("libgarbage.so"),
        "{}",
        r.stderr
    );
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
    let sb = Sandbox::new();
    sb.add_plugin("lf_fixture_testkit");
    sb.add_plugin("lf_fixture_consumer");
    let g = sb.write(
        "objects.yaml",
        r#"
nodes:
  scaler: {type: test.make_scaler, params: {factor: 3.0}}
  noise: {type: core.noise_latent, params: {width: 16, height: 16, seed: 5}}
  apply: {type: consumer.apply, inputs: {scaler: scaler, tensor: noise}}
  save_in: {type: core.save_tensor, inputs: {tensor: noise}, params: {filename: in.safetensors}}
  save_out: {type: core.save_tensor, inputs: {tensor: apply}, params: {filename: out.safetensors}}
"#,
    );
    sb.run(&["run", g.to_str().unwrap_or_default(), "-q"])
        .expect_code(0);
    let (s_in, x) = read_safetensors_f32(&sb.path().join("output/in.safetensors"));
    let (s_out, y) = read_safetensors_f32(&sb.path().join("output/out.safetensors"));
    assert_eq!(s_in, s_out);
    for (a, b) in x.iter().zip(&y) {
        assert!((a * 3.0 - b).abs() < 1e-6);
    }
}

#[test]
fn a_panicking_object_method_fails_the_calling_node_only() {
    let sb = Sandbox::new();
    sb.add_plugin("lf_fixture_testkit");
    sb.add_plugin("lf_fixture_consumer");
    let g = sb.write(
        "boom.yaml",
        r#"
nodes:
  scaler: {type: test.make_scaler}
  noise: {type: core.noise_latent, params: {width: 16, height: 16}}
  apply: {type: consumer.apply, inputs: {scaler: scaler, tensor: noise}, params: {method: explode}}
  save: {type: core.save_tensor, inputs: {tensor: noise}, params: {filename: ok.safetensors}}
"#,
    );
    let r = sb.run(&["run", g.to_str().unwrap_or_default(), "--events", "json"]);
    r.expect_code(4);
    let failed = r
        .events()
        .into_iter()
        .find(|e| e["event"] == "node_failed")
        .expect("node_failed");
    assert_eq!(failed["node"], "apply");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("the Scaler exploded"),
        "{failed}"
    );
    assert!(sb.path().join("output/ok.safetensors").exists());
}

#[test]
fn handle_interfaces_are_type_checked() {
    let sb = Sandbox::new();
    sb.add_plugin("lf_fixture_testkit");
    sb.add_plugin("lf_fixture_consumer");
    let g = sb.write(
        "bad.yaml",
        "nodes:\n  n: {type: core.noise_latent}\n  apply: {type: consumer.apply, inputs: {scaler: n, tensor: n}}\n",
    );
    let r = sb.run(&["validate", g.to_str().unwrap_or_default()]);
    r.expect_code(3);
    assert!(
        r.stderr
            .contains("expects Scaler, but `n.latent` is Latent{channels=4}"),
        "{}",
        r.stderr
    );
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
    let g = sb.write(
        "hello.yaml",
        "nodes:\n  greet: {type: hello.greet, params: {name: LatentFlow}}\n  out: {type: core.string, params: {value: x}}\n",
    );
    let r = sb.run(&["run", g.to_str().unwrap_or_default(), "--events", "json"]);
    r.expect_code(0);
    assert!(r.stdout.contains("Hello, LatentFlow!"), "{}", r.stdout);
}
