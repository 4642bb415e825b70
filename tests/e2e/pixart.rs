//! PixArt-α through graphs/pixart.yaml against diffusers' PixArtAlphaPipeline
//! (tools/reference/make_pixart_fixtures.py) at every step and on the decoded image, on a
//! non-square latent; and the refusals a user meets first.

use latentflow_tests::{graph, Sandbox};

use crate::parity;
use crate::sd_pipeline::{fixture, run_graph};

fn reference() -> std::path::PathBuf {
    fixture("pixart-ref/loop.safetensors")
}

fn models() -> Vec<String> {
    vec![
        format!("model={}", fixture("tiny-pixart").display()),
        format!("t5={}", fixture("tiny-t5").display()),
    ]
}

#[test]
fn every_step_matches_diffusers_pixart_alpha_pipeline() {
    let sb = Sandbox::new();
    let text = std::fs::read_to_string(graph("pixart.yaml")).expect("graph");
    let g = parity::instrument(&text, "inputs: {model: pixart, positive:", &reference());
    let g = sb.write("pixart.yaml", &g);
    run_graph(&sb, &g, None, &models());
    let out = sb.path().join("output");
    parity::compare(&out, &reference(), "PixArt 16×32");
    assert!(out.join("pixart.png").exists());
}

#[test]
fn mismatched_or_missing_conditioning_is_refused() {
    let g = graph("pixart.yaml").display().to_string();
    let sb = Sandbox::new();
    // A DiT folder is not a PixArt: refused by field before anything runs.
    let set = format!("model={}", fixture("tiny-dit").display());
    sb.run(&["validate", &g, "--set", &set])
        .expect_code(3)
        .stderr_has("DiT");
    // CLIP conditioning cannot reach PixArt: the conditioning families differ.
    let text = std::fs::read_to_string(graph("pixart.yaml"))
        .unwrap_or_default()
        .replace("positive: positive.features", "positive: words.conditioning")
        + &format!(
            "  sdm:\n    type: sd.load_checkpoint\n    params: {{path: {}}}\n  words:\n    type: sd.text_encode\n    inputs: {{clip: sdm.clip}}\n    params: {{text: a dog}}\n",
            fixture("tiny-sd").display()
        );
    let bad = sb.write("bad.yaml", &text);
    sb.run(&["validate", &bad.display().to_string()])
        .expect_code(3);
    // A latent that does not split into patches (the tiny VAE halves: 18 px → 9 cells).
    sb.run(&["run", &g, "-q", "--set", "width=18"])
        .expect_code(4)
        .stderr_has("multiples of 2, got [2, 4, 16, 9]");
}
