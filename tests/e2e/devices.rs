//! Device selection: a graph's `device:` and a loader's `device` are checked before anything
//! runs — the name, the node's devices, this machine's — with the devices found in the hint.

use latentflow_tests::Sandbox;

const TESTKIT: &[&str] = &["lf_fixture_testkit"];

fn graph(device: Option<&str>, node_device: Option<&str>) -> String {
    let mut g = String::from("version: 1\n");
    if let Some(d) = device {
        g += &format!("device: {d}\n");
    }
    g += "nodes:\n  dev:\n    type: test.device_loader\n";
    if let Some(d) = node_device {
        g += &format!("    params: {{device: {d}}}\n");
    }
    g
}

#[test]
fn the_graph_default_reaches_loaders_that_do_not_set_their_own() {
    let sb = Sandbox::with_plugins(TESTKIT);
    // cpu from the graph; a node's own value wins over the graph's.
    for (g, n) in [
        (Some("CPU"), None),
        (Some("cuda:7"), Some("cpu")),
        (None, None),
    ] {
        let r = sb.graph("run", "g.yaml", &graph(g, n), &["--events", "json"]);
        r.expect_code(0);
        assert_eq!(r.event("log")["message"], "device cpu", "{g:?} {n:?}");
    }
}

#[test]
fn a_device_the_node_cannot_use_is_refused_where_it_was_written() {
    let sb = Sandbox::with_plugins(TESTKIT);
    sb.graph("validate", "g.yaml", &graph(Some("wgpu"), None), &[])
        .expect_code(3)
        .stderr_has("g.yaml:2:9: error[unsupported-device]")
        .stderr_has("runs on cpu and cuda, not on wgpu");
    sb.graph("validate", "g.yaml", &graph(None, Some("wgpu")), &[])
        .expect_code(3)
        .stderr_has("g.yaml:5:22: error[unsupported-device]");
    // The real loaders run on the CPU only in this build.
    sb.refuses(
        "version: 1\ndevice: cuda\nnodes:\n  m:\n    type: dit.load\n    params: {path: model}\n",
        "`dit.load` runs on cpu, not on cuda:0",
    );
}

#[test]
fn a_name_that_is_not_a_device_is_refused_once() {
    let sb = Sandbox::with_plugins(TESTKIT);
    let r = sb.graph("validate", "g.yaml", &graph(Some("gpu"), None), &[]);
    r.expect_code(3)
        .stderr_has("g.yaml:2:9: error[param-value]: `gpu` is not a device: write cpu, cuda, cuda:N or wgpu")
        .stderr_has("1 error found");
    sb.graph("validate", "g.yaml", &graph(None, Some("cuda:x")), &[])
        .expect_code(3)
        .stderr_has("`cuda:x` is not a device");
}

#[test]
fn a_missing_device_is_refused_with_the_devices_found() {
    let sb = Sandbox::with_plugins(TESTKIT);
    // No CUDA on the test machines: cuda:0 is missing; the hint lists what exists.
    sb.graph("validate", "g.yaml", &graph(Some("cuda:0"), None), &[])
        .expect_code(3)
        .stderr_has("error[no-device]: node `dev`: device `cuda:0` is not available here")
        .stderr_has("devices found: cpu, wgpu (");
}
