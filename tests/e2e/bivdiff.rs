//! BIVDiff through graphs/bivdiff.yaml: its mixed inversion (the image model on every frame,
//! the video model on the video, mixed) against the authors' `reverse_step` driven by
//! diffusers' models (tools/reference/make_bivdiff_fixtures.py), and ratio 1 giving the image
//! inversion alone.

use latentflow_tests::{graph, read_safetensors_tensor, rel_err, Sandbox};

use crate::sd_pipeline::{fixture, run_graph, saved};

/// graphs/bivdiff.yaml with the inversions fed the reference's z0 and their results saved.
fn instrumented(sb: &Sandbox) -> std::path::PathBuf {
    let text = std::fs::read_to_string(graph("bivdiff.yaml")).expect("graph");
    let wired = text
        .replacen(
            "conditioning: unconditional.conditioning, latent: z0}",
            "conditioning: unconditional.conditioning, latent: reference_z0}",
            1,
        )
        .replacen("inputs: {latent: z0}", "inputs: {latent: reference_z0}", 1);
    assert_eq!(
        wired.matches("reference_z0").count(),
        2,
        "the graph's inversion moved; update this test"
    );
    let reference = fixture("bivdiff-ref/invert.safetensors");
    let mut g = wired;
    g.push_str(&format!(
        "  reference_z0:\n    type: core.load_latent\n    params: {{path: {}, name: z0}}\n  s1:\n    type: core.save_tensor\n    inputs: {{tensor: invert_image}}\n    params: {{filename: z_img.safetensors}}\n  s2:\n    type: core.save_tensor\n    inputs: {{tensor: invert_video}}\n    params: {{filename: z_vid.safetensors}}\n  s3:\n    type: core.save_tensor\n    inputs: {{tensor: mix}}\n    params: {{filename: mixed.safetensors}}\n",
        reference.display()
    ));
    sb.write("bivdiff.yaml", &g)
}

#[test]
fn mixed_inversion_matches_the_authors_reverse_step() {
    let sb = Sandbox::new();
    let g = instrumented(&sb);
    let reference = fixture("bivdiff-ref/invert.safetensors");
    let sets: Vec<String> = [
        format!("model={}", fixture("tiny-sd").display()),
        format!("motion={}", fixture("tiny-motion").display()),
        format!(
            "video={}",
            latentflow_tests::workspace_root()
                .join("graphs/inputs/flicker.gif")
                .display()
        ),
        "steps=10".into(),
        "ratio=0.25".into(),
        "betas=scaled_linear".into(),
    ]
    .into();
    run_graph(&sb, &g, None, &sets);
    let out = sb.path().join("output");
    for name in ["z_img", "z_vid", "mixed"] {
        let (shape, ours) = saved(&out, &format!("{name}.safetensors"));
        let (rshape, theirs) = read_safetensors_tensor(&reference, name);
        assert_eq!(shape, rshape, "{name}");
        let e = rel_err(&ours, &theirs);
        assert!(e <= 1e-4, "{name}: error {e:e}");
    }
    assert!(out.join("bivdiff.webp").exists());
    // Ratio 1 is the image model's inversion alone (BIVDiff's setting for ControlNet).
    let sb = Sandbox::new();
    let g = instrumented(&sb);
    let mut sets = sets;
    sets[4] = "ratio=1.0".into();
    run_graph(&sb, &g, None, &sets);
    let (_, mixed) = saved(&sb.path().join("output"), "mixed.safetensors");
    let (_, image) = read_safetensors_tensor(&reference, "z_img");
    let e = rel_err(&mixed, &gather(&image, 5, 4, 12 * 8));
    assert!(e <= 1e-4, "ratio 1: error {e:e}");
}

/// F×C×P frames as 1×C×F×P.
fn gather(frames: &[f32], f: usize, c: usize, p: usize) -> Vec<f32> {
    let mut out = vec![0f32; frames.len()];
    for fi in 0..f {
        for ci in 0..c {
            for pi in 0..p {
                out[(ci * f + fi) * p + pi] = frames[(fi * c + ci) * p + pi];
            }
        }
    }
    out
}
