//! Shared by the pipeline parity tests: a graph instrumented to replay a reference's noise and
//! record its steps, and the comparison of what it saved with the reference.

use std::path::Path;

use latentflow_tests::rel_err;

use crate::sd_pipeline::saved;

/// `text` with its sampler (the one whose inputs start with `anchor`, e.g.
/// `"inputs: {model: sd3, positive:"`) replaying the reference's `noise` and recording every
/// step, and nodes that save the steps (`steps.safetensors`) and the decoded image
/// (`image.safetensors`, from the node `decode`).
pub fn instrument(text: &str, anchor: &str, reference: &Path) -> String {
    let replay = anchor.replacen("inputs: {", "inputs: {noise: ref_noise, ", 1);
    let wired = text.replacen(anchor, &replay, 1).replacen(
        "params: {kind: ",
        "params: {record_steps: true, kind: ",
        1,
    );
    assert!(
        wired.contains("noise: ref_noise") && wired.contains("record_steps"),
        "the graph's sampler moved; update this test"
    );
    format!(
        "{wired}  ref_noise:\n    type: core.load_tensor\n    params: {{path: {}, name: noise}}\n  save_steps:\n    type: core.save_tensor\n    inputs: {{tensor: sample.steps}}\n    params: {{filename: steps.safetensors}}\n  save_image:\n    type: core.save_tensor\n    inputs: {{tensor: decode}}\n    params: {{filename: image.safetensors}}\n",
        reference.display()
    )
}

/// Checks the steps and the image saved under `out` against the reference's `latents` and
/// `image`, each within 1e-4; returns the worst step's error.
pub fn compare(out: &Path, reference: &Path, what: &str) -> f32 {
    compare_within(out, reference, what, 1e-4)
}

/// [`compare`] with `bound` for every step and the image (bf16 compute: 2e-2).
pub fn compare_within(out: &Path, reference: &Path, what: &str, bound: f32) -> f32 {
    let (shape, ours) = saved(out, "steps.safetensors");
    let (rshape, theirs) = latentflow_tests::read_safetensors_tensor(reference, "latents");
    assert_eq!(shape, rshape, "{what}: steps × latent shape");
    let per = ours.len() / shape[0];
    let mut worst = 0f32;
    for s in 0..shape[0] {
        let e = rel_err(
            &ours[s * per..(s + 1) * per],
            &theirs[s * per..(s + 1) * per],
        );
        assert!(e <= bound, "{what}: step {s} error {e:e}");
        worst = worst.max(e);
    }
    eprintln!("{what}: worst step error {worst:e}");
    let (ishape, image) = saved(out, "image.safetensors");
    let (rishape, rimage) = latentflow_tests::read_safetensors_tensor(reference, "image");
    assert_eq!(ishape, rishape, "{what}: image shape");
    let e = rel_err(&image, &rimage);
    assert!(e <= bound, "{what}: decoded image error {e:e}");
    eprintln!("{what}: decoded image error {e:e}");
    worst
}

/// `text` with its sampler's positive conditioning taken from a node `words` that `nodes` (YAML
/// node entries) define instead: another family's text, which validation must refuse.
pub fn foreign_positive(text: &str, nodes: &str) -> String {
    let wired = text.replacen(
        "positive: positive.conditioning",
        "positive: words.conditioning",
        1,
    );
    assert!(
        wired.contains("words.conditioning"),
        "the graph's sampler moved; update this test"
    );
    wired + nodes
}
