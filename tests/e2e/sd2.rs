//! SD 2.x through graphs/txt2img.yaml against diffusers' StableDiffusionPipeline
//! (tools/reference/make_sd2_sdxl_single_files.py: an OpenCLIP-style text encoder padding with
//! `!`, a UNet with linear projections, v-prediction, DPM-Solver++ 2M, guidance 7.5) at every
//! step and on the decoded image, from the diffusers folder and from the same weights as one
//! original-layout file (OpenCLIP's text tower under cond_stage_model.model, with the extra
//! final resblock SD 2.x files carry and the model does not run).

use latentflow_tests::{graph, Sandbox};

use crate::parity;
use crate::sd_pipeline::{fixture, run_graph};

fn reference() -> std::path::PathBuf {
    fixture("sd2-ref/pipeline.safetensors")
}

fn txt2img_matches_the_pipeline(model: &str, config: &str, what: &str) {
    let sb = Sandbox::new();
    let text = std::fs::read_to_string(graph("txt2img.yaml")).expect("graph");
    let g = parity::instrument(&text, "inputs: {model: ckpt.model, positive:", &reference());
    let g = sb.write("txt2img.yaml", &g);
    let mut sets: Vec<String> = vec![
        format!("model={}", fixture(model).display()),
        "prompt=a photo of a cat, best quality".into(),
        "negative=blurry, lowres".into(),
        "sampler=dpmpp_2m".into(),
        "steps=10".into(),
        "cfg=7.5".into(),
        "width=32".into(),
        "height=24".into(),
    ];
    if !config.is_empty() {
        sets.push(format!("config={}", fixture(config).display()));
    }
    run_graph(&sb, &g, None, &sets);
    parity::compare(&sb.path().join("output"), &reference(), what);
}

#[test]
fn every_step_matches_diffusers_on_an_sd2_folder() {
    txt2img_matches_the_pipeline("tiny-sd2", "", "SD 2.x folder 24×32");
}

#[test]
fn an_sd2_single_file_matches_the_pipeline_too() {
    txt2img_matches_the_pipeline(
        "tiny-sd2-single.safetensors",
        "tiny-sd2",
        "SD 2.x single file 24×32",
    );
}

#[test]
fn an_sd2_single_file_is_typed_sd2_and_its_missing_configs_are_named() {
    let sb = Sandbox::new();
    let single = format!("model={}", fixture("tiny-sd2-single.safetensors").display());
    // The family comes from the file's keys before anything runs: SD 1.x text cannot reach it.
    let text = std::fs::read_to_string(graph("txt2img.yaml")).unwrap_or_default();
    let mixed = parity::foreign_positive(
        &text,
        &format!(
            "  sdm:\n    type: sd.load_checkpoint\n    params: {{path: {}}}\n  words:\n    type: sd.text_encode\n    inputs: {{clip: sdm.clip}}\n    params: {{text: a dog}}\n",
            fixture("tiny-sd").display()
        ),
    );
    let bad = sb.write("bad.yaml", &mixed);
    sb.run(&["validate", &bad.display().to_string(), "--set", &single])
        .expect_code(3)
        .stderr_has("sd2");
    // Without `config`, SD 2.1's configs are used; the tiny file does not fit them.
    sb.run(&[
        "run",
        &graph("txt2img.yaml").display().to_string(),
        "-q",
        "--set",
        &single,
    ])
    .expect_code(4)
    .stderr_has("SD 2.1");
}
