//! CLI surface: nodes, graph --dot, schema, re-running a PNG.

use latentflow_tests::{graph, workspace_root, Sandbox};

#[test]
fn nodes_json_lists_ports_params_and_docs() {
    let sb = Sandbox::new();
    let r = sb.run(&["nodes", "--json"]);
    r.expect_code(0);
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).expect("json");
    let empty = list
        .iter()
        .find(|n| n["type"] == "core.empty_latent")
        .expect("core.empty_latent");
    assert_eq!(empty["outputs"][0]["type"], "Latent{channels=$channels}");
    let channels = empty["params"]
        .as_array()
        .expect("params")
        .iter()
        .find(|p| p["name"] == "channels")
        .expect("param");
    assert_eq!(channels["default"], 4);
    assert_eq!(channels["kind"], "int");
    assert!(!empty["doc"].as_str().unwrap_or_default().is_empty());
}

#[test]
fn graph_dot_shows_nodes_and_typed_edges() {
    let sb = Sandbox::new();
    let r = sb.run(&[
        "graph",
        graph("compose.yaml").to_str().unwrap_or_default(),
        "--dot",
    ]);
    r.expect_code(0);
    assert!(r.stdout.starts_with("digraph latentflow {"));
    assert!(
        r.stdout
            .contains("\"mix\" -> \"bigger\" [label=\"image → image\\nImage\"]"),
        "{}",
        r.stdout
    );
}

#[test]
fn committed_schema_matches_the_core_plugin() {
    let sb = Sandbox::new();
    let r = sb.run(&["schema"]);
    r.expect_code(0);
    let generated: serde_json::Value = serde_json::from_str(&r.stdout).expect("schema json");
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("schema/graph.schema.json"))
            .expect("schema/graph.schema.json"),
    )
    .expect("committed schema json");
    assert_eq!(
        generated, committed,
        "regenerate with: latentflow schema > schema/graph.schema.json"
    );
}

#[test]
fn a_saved_png_reruns_to_the_same_bytes() {
    let sb = Sandbox::new();
    let g = graph("compose.yaml");
    sb.run(&[
        "run",
        g.to_str().unwrap_or_default(),
        "-q",
        "--set",
        "filename=first.png",
    ])
    .expect_code(0);
    let first = sb.path().join("output/first.png");
    sb.run(&[
        "run",
        first.to_str().unwrap_or_default(),
        "-q",
        "--output-dir",
        "again",
    ])
    .expect_code(0);
    let again = std::fs::read(sb.path().join("again/first.png")).expect("re-run output");
    assert_eq!(std::fs::read(&first).expect("first"), again);
}

#[test]
fn png_without_a_graph_is_a_clear_error() {
    let sb = Sandbox::new();
    let g = sb.write("g.yaml", "nodes:\n  i: {type: core.solid_image, params: {width: 4, height: 4}}\n  s: {type: core.save_image, inputs: {image: i}, params: {filename: x.jpg}}\n");
    sb.run(&["run", g.to_str().unwrap_or_default(), "-q"])
        .expect_code(0);
    let r = sb.run(&["run", "output/x.jpg"]);
    assert_ne!(r.code, 0);
}
