//! Tiramisu end to end (graphs/tiramisu.yaml): CoPaint on the tiny ADM model with the circuit's
//! steering hook keeps the known region exactly, steering changes the hole and only while it is
//! active, and models that cannot give gradients are refused.

use latentflow_tests::{graph, Sandbox};

use crate::sd_pipeline::{graph_text, saved, set_fixture};

const SAVES: &str = "  s_fill: {type: core.save_tensor, inputs: {tensor: fill.image}, params: {filename: filled.safetensors}}\n  s_pic: {type: core.save_tensor, inputs: {tensor: picture}, params: {filename: picture.safetensors}}\n  s_mask: {type: core.save_tensor, inputs: {tensor: mask}, params: {filename: mask.safetensors}}\n";

/// The filled image, the picture and the mask of a run of `text` with `sets`.
fn run(text: &str, sets: &[&str]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let sb = Sandbox::new();
    let g = sb.write("tiramisu.yaml", &format!("{text}{SAVES}"));
    let mut args = vec!["run", g.to_str().unwrap_or_default(), "-q"];
    if !sets.is_empty() {
        args.push("--set");
        args.extend_from_slice(sets);
    }
    sb.run(&args).expect_code(0);
    let out = sb.path().join("output");
    let (shape, filled) = saved(&out, "filled.safetensors");
    assert_eq!(shape, vec![1, 16, 16, 3]);
    (
        filled,
        saved(&out, "picture.safetensors").1,
        saved(&out, "mask.safetensors").1,
    )
}

fn graph_with_inputs_dir() -> String {
    // The sandboxed copy resolves `../tests/fixtures` and `inputs/` from the graphs folder.
    let dir = graph("tiramisu.yaml")
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    graph_text("tiramisu.yaml")
        .replace("../tests/fixtures", &format!("{dir}/../tests/fixtures"))
        .replace("default: inputs/", &format!("default: {dir}/inputs/"))
}

#[test]
fn the_known_region_is_kept_and_steering_changes_only_what_it_should() {
    let text = graph_with_inputs_dir();
    let (steered, picture, mask) = run(&text, &["steer_frac=0.5", "respacing=10"]);
    let (plain, _, _) = run(&text, &["steer_frac=1.0", "respacing=10"]);
    let (no_hook, _, _) = run(&text.replace(", hooks: steer}", "}"), &["respacing=10"]);
    let (again, _, _) = run(&text, &["steer_frac=0.5", "respacing=10"]);
    let (mut hole, mut differ) = (0, 0);
    for (i, m) in mask.iter().enumerate() {
        for c in 0..3 {
            let j = i * 3 + c;
            if *m < 0.5 {
                for out in [&steered, &plain, &no_hook] {
                    assert!(
                        (out[j] - picture[j]).abs() < 1e-6,
                        "known pixel {i} changed"
                    );
                }
            } else {
                hole += 1;
                differ += usize::from((steered[j] - plain[j]).abs() > 1e-3);
            }
        }
    }
    assert!(
        hole > 0 && hole < mask.len() * 3,
        "the mask covers part of the picture"
    );
    assert!(
        differ * 4 > hole,
        "steering changed {differ} of {hole} hole values"
    );
    assert_eq!(plain, no_hook, "an inactive hook leaves the run as it is");
    assert_eq!(steered, again, "seeded");
}

/// The authors draw 10 per image and keep the 2 that fit the known region best.
#[test]
fn several_draws_per_image_keep_the_best_fitting_ones_with_the_known_region() {
    let sb = Sandbox::new();
    let g = sb.write(
        "tiramisu.yaml",
        &format!("{}{SAVES}", graph_with_inputs_dir()),
    );
    let sets = [
        "respacing=6",
        "steer_frac=0.5",
        "samples=3",
        "keep_samples=2",
    ];
    let mut args = vec!["run", g.to_str().unwrap_or_default(), "-q", "--set"];
    args.extend_from_slice(&sets);
    sb.run(&args).expect_code(0);
    let out = sb.path().join("output");
    let (shape, filled) = saved(&out, "filled.safetensors");
    assert_eq!(shape, vec![2, 16, 16, 3]);
    let picture = saved(&out, "picture.safetensors").1;
    let mask = saved(&out, "mask.safetensors").1;
    for k in 0..2 {
        for (i, m) in mask.iter().enumerate() {
            for c in 0..3 {
                let j = i * 3 + c;
                if *m < 0.5 {
                    assert!(
                        (filled[k * 768 + j] - picture[j]).abs() < 1e-6,
                        "draw {k}: known pixel {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn models_without_gradients_are_refused_before_running() {
    let sb = Sandbox::new();
    let text = graph_with_inputs_dir()
        .replace(
            "  model:\n    type: sd.load_unet2d\n    params: {path: $model}\n",
            "  model:\n    type: sd.load_checkpoint\n    params: {path: $model}\n",
        )
        .replace("inputs: {model: model,", "inputs: {model: model.model,");
    let g = sb.write("sd.yaml", &text);
    sb.run(&[
        "validate",
        g.to_str().unwrap_or_default(),
        "--set",
        &set_fixture("model", "tiny-sd"),
    ])
    .expect_code(3)
    .stderr_has("family=unet2d");
}

/// The sampled latent of graphs/tiramisu_sd.yaml with `sets`, from `text`.
fn run_sd(text: &str, sets: &[&str]) -> Vec<f32> {
    let sb = Sandbox::new();
    let save = "  s_latent: {type: core.save_tensor, inputs: {tensor: sample.latent}, params: {filename: latent.safetensors}}\n";
    let g = sb.write("tiramisu_sd.yaml", &format!("{text}{save}"));
    let mut args = vec![
        "run",
        g.to_str().unwrap_or_default(),
        "-q",
        "--set",
        "steps=6",
        "size=32",
    ];
    args.extend_from_slice(sets);
    sb.run(&args).expect_code(0);
    let (shape, latent) = saved(&sb.path().join("output"), "latent.safetensors");
    assert_eq!(shape[..2], [1, 4]);
    latent
}

#[test]
fn latent_space_steering_through_the_vae_changes_the_sample_only_while_active() {
    let dir = graph("tiramisu_sd.yaml")
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let text = graph_text("tiramisu_sd.yaml")
        .replace("../models/", &format!("{dir}/../models/"))
        .replace("../tests/fixtures", &format!("{dir}/../tests/fixtures"))
        .replace("default: inputs/", &format!("default: {dir}/inputs/"));
    let steered = run_sd(&text, &["steer_frac=0.5"]);
    let plain = run_sd(&text, &["steer_frac=1.0"]);
    let no_hook = run_sd(&text.replace(", hooks: steer}", "}"), &[]);
    assert_eq!(plain, no_hook, "an inactive hook leaves the run as it is");
    let differ = steered
        .iter()
        .zip(&plain)
        .filter(|(a, b)| (*a - *b).abs() > 1e-3)
        .count();
    assert!(
        differ * 10 > steered.len(),
        "steering changed {differ} of {} latent values",
        steered.len()
    );
    assert_eq!(steered, run_sd(&text, &["steer_frac=0.5"]), "seeded");
}

#[test]
fn a_wrapped_model_gives_no_gradients_and_says_so() {
    let sb = Sandbox::new();
    let text = graph_with_inputs_dir()
        .replace(
            "  vq:\n    type: tpm.load_vq",
            "  cached:\n    type: sd.deepcache\n    inputs: {model: model}\n  vq:\n    type: tpm.load_vq",
        )
        .replace("inputs: {model: model,", "inputs: {model: cached,");
    let g = sb.write("wrapped.yaml", &text);
    sb.run(&[
        "run",
        g.to_str().unwrap_or_default(),
        "-q",
        "--set",
        "respacing=4",
    ])
    .expect_code(4)
    .stderr_has("cannot give gradients");
}
