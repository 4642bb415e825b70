//! DiT through graphs/dit.yaml against diffusers' DiTPipeline
//! (tools/reference/make_dit_fixtures.py) at every step and on the decoded image, square and
//! non-square; class names; and the refusals a user meets first.

use latentflow_tests::{graph, rel_err, Sandbox};

use crate::sd_pipeline::{fixture, run_graph, saved};

fn reference(name: &str) -> std::path::PathBuf {
    fixture(&format!("dit-ref/{name}.safetensors"))
}

/// graphs/dit.yaml with the reference `name`'s noise replayed and the steps and the image saved.
fn instrumented(sb: &Sandbox, name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(graph("dit.yaml")).expect("graph");
    let wired = text
        .replacen(
            "inputs: {model: dit, positive:",
            "inputs: {noise: ref_noise, model: dit, positive:",
            1,
        )
        .replacen("params: {kind: ", "params: {record_steps: true, kind: ", 1);
    assert!(
        wired.contains("noise: ref_noise") && wired.contains("record_steps"),
        "the graph's sampler moved; update this test"
    );
    let g = format!(
        "{wired}  ref_noise:\n    type: core.load_tensor\n    params: {{path: {}, name: noise}}\n  save_steps:\n    type: core.save_tensor\n    inputs: {{tensor: sample.steps}}\n    params: {{filename: steps.safetensors}}\n  save_image:\n    type: core.save_tensor\n    inputs: {{tensor: decode}}\n    params: {{filename: image.safetensors}}\n",
        reference(name).display()
    );
    sb.write("dit.yaml", &g)
}

fn compare(sb: &Sandbox, name: &str, what: &str) {
    let out = sb.path().join("output");
    let (shape, ours) = saved(&out, "steps.safetensors");
    let (rshape, theirs) = latentflow_tests::read_safetensors_tensor(&reference(name), "latents");
    assert_eq!(shape, rshape, "{what}: steps × latent shape");
    let per = ours.len() / shape[0];
    let mut worst = 0f32;
    for s in 0..shape[0] {
        let e = rel_err(
            &ours[s * per..(s + 1) * per],
            &theirs[s * per..(s + 1) * per],
        );
        assert!(e <= 1e-4, "{what}: step {s} error {e:e}");
        worst = worst.max(e);
    }
    eprintln!("{what}: worst step error {worst:e}");
    let (ishape, image) = saved(&out, "image.safetensors");
    let (rishape, rimage) = latentflow_tests::read_safetensors_tensor(&reference(name), "image");
    assert_eq!(ishape, rishape, "{what}: image shape");
    let e = rel_err(&image, &rimage);
    assert!(e <= 1e-4, "{what}: decoded image error {e:e}");
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
