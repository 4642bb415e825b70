//! PixArt-α through graphs/pixart.yaml against diffusers' PixArtAlphaPipeline
//! (tools/reference/make_pixart_fixtures.py) at every step and on the decoded image, on a
//! non-square latent; and the refusals a user meets first.

use latentflow_tests::{graph, rel_err, Sandbox};

use crate::sd_pipeline::{fixture, run_graph, saved};

fn reference() -> std::path::PathBuf {
    fixture("pixart-ref/loop.safetensors")
}

/// graphs/pixart.yaml with the reference noise replayed and the steps and the image saved.
fn instrumented(sb: &Sandbox) -> std::path::PathBuf {
    let text = std::fs::read_to_string(graph("pixart.yaml")).expect("graph");
    let wired = text
        .replacen(
            "inputs: {model: pixart, positive:",
            "inputs: {noise: ref_noise, model: pixart, positive:",
            1,
        )
        .replacen("params: {kind: ", "params: {record_steps: true, kind: ", 1);
    assert!(
        wired.contains("noise: ref_noise") && wired.contains("record_steps"),
        "the graph's sampler moved; update this test"
    );
    let g = format!(
        "{wired}  ref_noise:\n    type: core.load_tensor\n    params: {{path: {}, name: noise}}\n  save_steps:\n    type: core.save_tensor\n    inputs: {{tensor: sample.steps}}\n    params: {{filename: steps.safetensors}}\n  save_image:\n    type: core.save_tensor\n    inputs: {{tensor: decode}}\n    params: {{filename: image.safetensors}}\n",
        reference().display()
    );
    sb.write("pixart.yaml", &g)
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
    let g = instrumented(&sb);
    run_graph(&sb, &g, None, &models());
    let out = sb.path().join("output");
    let (shape, ours) = saved(&out, "steps.safetensors");
    let (rshape, theirs) = latentflow_tests::read_safetensors_tensor(&reference(), "latents");
    assert_eq!(shape, rshape, "steps × latent shape");
    let per = ours.len() / shape[0];
    let mut worst = 0f32;
    for s in 0..shape[0] {
        let e = rel_err(
            &ours[s * per..(s + 1) * per],
            &theirs[s * per..(s + 1) * per],
        );
        assert!(e <= 1e-4, "PixArt: step {s} error {e:e}");
        worst = worst.max(e);
    }
    eprintln!("PixArt 16×32: worst step error {worst:e}");
    let (ishape, image) = saved(&out, "image.safetensors");
    let (rishape, rimage) = latentflow_tests::read_safetensors_tensor(&reference(), "image");
    assert_eq!(ishape, rishape, "image shape");
    let e = rel_err(&image, &rimage);
    assert!(e <= 1e-4, "PixArt: decoded image error {e:e}");
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
