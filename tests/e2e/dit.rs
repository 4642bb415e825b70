//! DiT through graphs/dit.yaml against diffusers' DiTPipeline
//! (tools/reference/make_dit_fixtures.py) at every step and on the decoded image, square and
//! non-square; class names; and the refusals a user meets first.

use latentflow_tests::{graph, Sandbox};

use crate::parity;
use crate::sd_pipeline::{fixture, run_graph};

fn reference(name: &str) -> std::path::PathBuf {
    fixture(&format!("dit-ref/{name}.safetensors"))
}

/// graphs/dit.yaml with the reference `name`'s noise replayed and the steps and the image saved.
fn instrumented(sb: &Sandbox, name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(graph("dit.yaml")).expect("graph");
    let g = parity::instrument(&text, "inputs: {model: dit, positive:", &reference(name));
    sb.write("dit.yaml", &g)
}

fn compare(sb: &Sandbox, name: &str, what: &str) {
    let out = sb.path().join("output");
    parity::compare(&out, &reference(name), what);
    assert!(out.join("dit.png").exists());
}

fn model() -> String {
    format!("model={}", fixture("tiny-dit").display())
}

#[test]
fn every_step_matches_diffusers_dit_pipeline() {
    // Non-square (the graph's default 16×32 pixels: an 8×16 latent, 2×4 patches).
    let sb = Sandbox::new();
    let g = instrumented(&sb, "loop_wide");
    run_graph(&sb, &g, None, &[model()]);
    compare(&sb, "loop_wide", "DiT 16×32");
    // Square, as DiTPipeline itself samples.
    let sb = Sandbox::new();
    let g = instrumented(&sb, "loop");
    run_graph(&sb, &g, None, &[model(), "width=32".into()]);
    compare(&sb, "loop", "DiT 32×32");
}

#[test]
fn class_names_resolve_and_bad_labels_are_refused() {
    let g = graph("dit.yaml").display().to_string();
    let sb = Sandbox::new();
    // A synonym, any case, and an id, one image each.
    sb.run(&["run", &g, "-q", "--set", "label=Goldfish; 207", "batch=2"])
        .expect_code(0);
    sb.run(&["run", &g, "-q", "--set", "label=Goldfish; 207"])
        .expect_code(4)
        .stderr_has("positive conditioning has batch 2, the latent 1");
    for (label, says) in [
        ("unicorn", "`unicorn` is not one of the model's"),
        ("gold", "close: golden retriever, goldfish"),
        ("1000", "class 1000 is out of range"),
        (";", "no class labels"),
    ] {
        let set = format!("label={label}");
        sb.run(&["run", &g, "-q", "--set", &set])
            .expect_code(4)
            .stderr_has(says);
    }
    // Text conditioning cannot reach a DiT: refused before anything runs.
    let text = std::fs::read_to_string(graph("dit.yaml"))
        .unwrap_or_default()
        .replace(
            "positive: labels.positive",
            "positive: words.conditioning",
        )
        + &format!(
            "  sdm:\n    type: sd.load_checkpoint\n    params: {{path: {}}}\n  words:\n    type: sd.text_encode\n    inputs: {{clip: sdm.clip}}\n    params: {{text: a dog}}\n",
            fixture("tiny-sd").display()
        );
    let bad = sb.write("bad.yaml", &text);
    sb.run(&["validate", &bad.display().to_string()])
        .expect_code(3);
    // Another transformer's config is refused by field.
    let dir = sb.path().join("pixart");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = std::fs::read_to_string(fixture("tiny-dit/transformer/config.json"))
        .unwrap()
        .replace("\"ada_norm_zero\"", "\"ada_norm_single\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let set = format!("model={}", dir.display());
    sb.run(&["validate", &g, "--set", &set])
        .expect_code(3)
        .stderr_has("PixArt");
}
