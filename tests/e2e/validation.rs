//! The malformed-graph corpus: each file in `tests/malformed/` states its expected diagnostics in
//! `# expect: CODE LINE:COL [text]` (errors) and `# expect-warning: ...` lines.

use latentflow_tests::{files_with_ext, workspace_root, Sandbox};

struct Expect {
    severity: &'static str,
    code: String,
    line: u64,
    column: u64,
    text: String,
}

fn expectations(source: &str) -> Vec<Expect> {
    source
        .lines()
        .filter_map(|l| {
            let (severity, rest) = if let Some(r) = l.strip_prefix("# expect-warning:") {
                ("warning", r)
            } else {
                ("error", l.strip_prefix("# expect:")?)
            };
            let mut parts = rest.trim().splitn(3, ' ');
            let code = parts.next()?.to_string();
            let (line, column) = parts.next()?.split_once(':')?;
            Some(Expect {
                severity,
                code,
                line: line.parse().ok()?,
                column: column.parse().ok()?,
                text: parts.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

#[test]
fn malformed_corpus_reports_each_error_at_its_position() {
    let files = files_with_ext(&workspace_root().join("tests/malformed"), "yaml");
    assert!(files.len() >= 15, "the corpus needs at least 15 graphs");
    let sb = Sandbox::new();
    sb.add_plugin("lf_fixture_testkit");
    let mut failures = Vec::new();
    for f in &files {
        let source = String::from_utf8_lossy(&std::fs::read(f).expect("read")).into_owned();
        let expected = expectations(&source);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            f.display()
        );
        let r = sb.run(&["validate", "--json", f.to_str().unwrap_or_default()]);
        if r.code != 3 {
            failures.push(format!(
                "{}: exit code {} (want 3)\n{}",
                f.display(),
                r.code,
                r.stderr
            ));
            continue;
        }
        let diags: Vec<serde_json::Value> =
            serde_json::from_str(&r.stdout).expect("diagnostics JSON");
        for e in &expected {
            let found = diags.iter().any(|d| {
                d["severity"] == e.severity
                    && d["code"] == e.code.as_str()
                    && d["line"] == e.line
                    && d["column"] == e.column
                    && format!(
                        "{} {}",
                        d["message"].as_str().unwrap_or(""),
                        d["hint"].as_str().unwrap_or("")
                    )
                    .contains(&e.text)
            });
            if !found {
                failures.push(format!(
                    "{}: expected {} {} at {}:{} containing {:?}; got {}",
                    f.display(),
                    e.severity,
                    e.code,
                    e.line,
                    e.column,
                    e.text,
                    serde_json::to_string_pretty(&diags).unwrap_or_default()
                ));
            }
        }
        let errors = diags.iter().filter(|d| d["severity"] == "error").count();
        let expected_errors = expected.iter().filter(|e| e.severity == "error").count();
        if errors != expected_errors {
            failures.push(format!(
                "{}: {errors} errors reported, {expected_errors} expected: {diags:#?}",
                f.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn human_diagnostics_have_file_line_column_node_and_hint() {
    let sb = Sandbox::new();
    let f = workspace_root().join("tests/malformed/01_unknown_type.yaml");
    let r = sb.run(&["validate", f.to_str().unwrap_or_default()]);
    r.expect_code(3);
    let first = r.stderr.lines().next().unwrap_or_default();
    assert!(first.ends_with("01_unknown_type.yaml:5:11: error[unknown-node-type]: node `a`: unknown node type `core.innt`"), "{first}");
    assert!(
        r.stderr.contains("  hint: did you mean `core.int`?"),
        "{}",
        r.stderr
    );
}

#[test]
fn set_overrides_graph_inputs_and_rejects_unknown_names() {
    let sb = Sandbox::new();
    let g = sb.write(
        "g.yaml",
        "inputs:\n  steps: 1\nnodes:\n  a: {type: core.int, params: {value: $steps}}\n",
    );
    let g = g.to_str().unwrap_or_default();
    sb.run(&["validate", g, "--set", "steps=5"]).expect_code(0);
    // Several after one --set, as the README writes them.
    sb.run(&["validate", g, "--set", "steps=5", "steps=6", "-q"])
        .expect_code(0);
    // Values after --set run to the first word without `=`: the graph may come after them.
    sb.run(&["validate", "--set", "steps=5", "steps=6", g, "-q"])
        .expect_code(0);
    sb.run(&["validate", "--set", "steps=abc", g])
        .expect_code(3)
        .stderr_has("must be a whole number");
    sb.run(&["validate", "--set", "steps=5"])
        .expect_code(2)
        .stderr_has("<GRAPH>");
    let r = sb.run(&["validate", g, "--set", "stesp=5"]);
    r.expect_code(3);
    assert!(
        r.stderr
            .contains("--set stesp: the graph has no input named `stesp`")
            && r.stderr.contains("did you mean `steps`"),
        "{}",
        r.stderr
    );
    let r = sb.run(&["validate", g, "--set", "steps=abc"]);
    r.expect_code(3);
    assert!(r.stderr.contains("must be a whole number"), "{}", r.stderr);
}
