//! AnimateDiff through graphs: graphs/animatediff.yaml and graphs/freeinit.yaml against
//! diffusers' AnimateDiffPipeline (tools/reference/make_animatediff_fixtures.py) at every step
//! and on the decoded frames — plain, wrapped by DeepCache, and with FreeInit (DDIM; and
//! DPM-Solver++ 2M coarse-to-fine, whose history must start over each pass); and the refusals a
//! user meets first.

use latentflow_tests::{graph, rel_err, Sandbox};

use crate::sd_pipeline::{fixture, run_graph, saved};

fn reference(name: &str) -> std::path::PathBuf {
    fixture(&format!("animatediff-ref/{name}.safetensors"))
}

/// `file` (a graph in graphs/) with the reference `name`'s noise replayed, the steps and float
/// frames saved, and, when `wrap` gives its YAML (inputs and params), the video model wrapped by
/// a node `wrapped` the sampler then uses.
fn instrumented(sb: &Sandbox, file: &str, name: &str, wrap: Option<&str>) -> std::path::PathBuf {
    let text = std::fs::read_to_string(graph(file)).expect("graph");
    let model = if wrap.is_some() {
        "wrapped"
    } else {
        "video_model"
    };
    // A graph that makes its own noise (FreeNoise's shuffled windows) takes the reference's.
    let text = text.replacen(
        "inputs: {noise: shuffled, model: video_model, positive:",
        "inputs: {model: video_model, positive:",
        1,
    );
    let wired = text
        .replacen(
            "inputs: {model: video_model, positive:",
            &format!("inputs: {{noise: ref_noise, model: {model}, positive:"),
            1,
        )
        .replacen("params: {kind: ", "params: {record_steps: true, kind: ", 1);
    assert!(
        wired.contains("noise: ref_noise") && wired.contains("record_steps"),
        "the graph's sampler moved; update this test"
    );
    let mut g = wired;
    g.push_str(&format!(
        "  ref_noise:\n    type: core.load_tensor\n    params: {{path: {}, name: noise}}\n  save_steps:\n    type: core.save_tensor\n    inputs: {{tensor: sample.steps}}\n    params: {{filename: steps.safetensors}}\n  save_frames:\n    type: core.save_tensor\n    inputs: {{tensor: decode}}\n    params: {{filename: frames.safetensors}}\n",
        reference(name).display()
    ));
    if let Some(w) = wrap {
        g.push_str(&format!("  wrapped:\n{w}"));
    }
    sb.write(file, &g)
}

fn compare(sb: &Sandbox, name: &str, what: &str, video: &str) {
    let out = sb.path().join("output");
    let (shape, ours) = saved(&out, "steps.safetensors");
    let (rshape, theirs) = latentflow_tests::read_safetensors_tensor(&reference(name), "latents");
    assert_eq!(shape, rshape, "{what}: steps × video latent shape");
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
    // Frames: ours F×H×W×3, diffusers' 1×F×H×W×3.
    let (_, frames) = saved(&out, "frames.safetensors");
    let (_, rframes) = latentflow_tests::read_safetensors_tensor(&reference(name), "frames");
    let e = rel_err(&frames, &rframes);
    assert!(e <= 1e-4, "{what}: decoded frames error {e:e}");
    assert!(out.join(video).exists());
}

fn models() -> Vec<String> {
    vec![
        format!("model={}", fixture("tiny-sd").display()),
        format!("motion={}", fixture("tiny-motion").display()),
    ]
}

#[test]
fn every_step_matches_diffusers_animatediff_pipeline() {
    let sb = Sandbox::new();
    let g = instrumented(&sb, "animatediff.yaml", "loop", None);
    run_graph(&sb, &g, None, &models());
    compare(&sb, "loop", "AnimateDiff", "animatediff.webp");
    // DeepCache around the video model (refreshing every step: the full model) composes.
    let sb = Sandbox::new();
    let deepcache = "    type: sd.deepcache\n    inputs: {model: video_model}\n    params: {cache_interval: 1}\n";
    let g = instrumented(&sb, "animatediff.yaml", "loop", Some(deepcache));
    run_graph(&sb, &g, None, &models());
    compare(
        &sb,
        "loop",
        "AnimateDiff under DeepCache",
        "animatediff.webp",
    );
}

/// An `sd.apply_controlnet` around the video model with one control frame per video frame,
/// loaded as a folder of frames; `params` is its params line (or nothing).
fn control_wrap(params: &str) -> String {
    format!(
        "    type: sd.apply_controlnet\n    inputs: {{model: video_model, controlnet: cn, image: control_frames.image}}\n{params}  cn:\n    type: sd.load_controlnet\n    params: {{path: {}}}\n  control_clip:\n    type: video.load\n    params: {{path: {}}}\n  control_frames:\n    type: video.to_frames\n    inputs: {{video: control_clip}}\n",
        fixture("tiny-controlnet").display(),
        fixture("animatediff-ref/control").display()
    )
}

#[test]
fn controlnet_and_lora_compose_with_the_motion_modules() {
    // One control frame per video frame, loaded as a folder of frames: diffusers'
    // AnimateDiffControlNetPipeline at every step.
    let sb = Sandbox::new();
    let g = instrumented(
        &sb,
        "animatediff.yaml",
        "controlnet",
        Some(&control_wrap("")),
    );
    let mut sets = models();
    sets.push("steps=6".into());
    run_graph(&sb, &g, None, &sets);
    compare(
        &sb,
        "controlnet",
        "AnimateDiff + ControlNet",
        "animatediff.webp",
    );
    // Guess mode: the ControlNet sees only the conditional half; the unconditional half gets no
    // residuals (diffusers' video pipeline fails here; its reference pads as the image pipeline
    // does: tools/reference/make_animatediff_guess_fixtures.py).
    let sb = Sandbox::new();
    let wrap = control_wrap("    params: {guess_mode: true}\n");
    let g = instrumented(&sb, "animatediff.yaml", "controlnet_guess", Some(&wrap));
    run_graph(&sb, &g, None, &sets);
    compare(
        &sb,
        "controlnet_guess",
        "AnimateDiff + ControlNet in guess mode",
        "animatediff.webp",
    );
    // A LoRA merged before the motion modules or after them gives the same model, and not the
    // plain one.
    let lora = fixture("lora/kohya.safetensors").display().to_string();
    let run = |place: Option<&str>| {
        let sb = Sandbox::new();
        let text = std::fs::read_to_string(graph("animatediff.yaml")).expect("graph");
        let text = match place {
            Some("before") => text.replacen(
                "inputs: {model: ckpt.model}\n    params: {path: $motion}",
                "inputs: {model: lora.model}\n    params: {path: $motion}",
                1,
            ),
            Some(_) => text.replacen(
                "inputs: {model: video_model, positive:",
                "inputs: {model: lora.model, positive:",
                1,
            ),
            None => text,
        };
        let source = if place == Some("before") {
            "ckpt.model"
        } else {
            "video_model"
        };
        let text = format!(
            "{text}  lora:\n    type: sd.load_lora\n    inputs: {{model: {source}, clip: ckpt.clip}}\n    params: {{path: {lora}, strength_clip: 0.0}}\n  save_latent:\n    type: core.save_tensor\n    inputs: {{tensor: sample.latent}}\n    params: {{filename: latent.safetensors}}\n"
        );
        let g = sb.write("lora.yaml", &text);
        run_graph(&sb, &g, None, &models());
        saved(&sb.path().join("output"), "latent.safetensors").1
    };
    let (before, after, plain) = (run(Some("before")), run(Some("after")), run(None));
    let e = rel_err(&before, &after);
    assert!(e <= 1e-5, "LoRA before vs after the motion modules: {e:e}");
    assert!(rel_err(&before, &plain) > 1e-3, "the LoRA changed nothing");
}

#[test]
fn free_init_passes_match_diffusers() {
    let sb = Sandbox::new();
    let g = instrumented(&sb, "freeinit.yaml", "freeinit", None);
    run_graph(&sb, &g, None, &models());
    compare(
        &sb,
        "freeinit",
        "FreeInit (DDIM, 3 × 4 steps)",
        "freeinit.webp",
    );
    // Coarse to fine on a multistep solver: passes of 2, 4 and 6 steps, each from a fresh
    // history.
    let sb = Sandbox::new();
    let g = instrumented(&sb, "freeinit.yaml", "freeinit_fast", None);
    let mut sets = models();
    sets.extend(
        [
            "sampler=dpmpp_2m",
            "spacing=default",
            "steps=6",
            "fast=true",
            "method=gaussian",
            "d_s=0.3",
        ]
        .map(String::from),
    );
    run_graph(&sb, &g, None, &sets);
    compare(
        &sb,
        "freeinit_fast",
        "FreeInit (DPM-Solver++ 2M, coarse to fine)",
        "freeinit.webp",
    );
}

#[test]
fn free_noise_windows_match_diffusers_at_every_step() {
    // 14 frames through an adapter with 8 positions: windows of 6 every 4, pyramid-blended,
    // against AnimateDiffPipeline with enable_free_noise (the noise given to both).
    let sb = Sandbox::new();
    let g = instrumented(&sb, "freenoise.yaml", "freenoise", None);
    run_graph(&sb, &g, None, &models());
    compare(&sb, "freenoise", "FreeNoise windows", "freenoise.webp");
    // The graph as shipped (its own shuffled noise) runs, and the windows are checked.
    let g = graph("freenoise.yaml").display().to_string();
    let sb = Sandbox::new();
    sb.run(&["run", &g, "-q", "--set", "context=9"])
        .expect_code(4)
        .stderr_has("context windows of 9 frames");
    sb.run(&["run", &g, "-q", "--set", "stride=7"])
        .expect_code(4)
        .stderr_has("skips frames");
    sb.run(&["run", &g, "-q", "--set", "weighting=triangle"])
        .stderr_has("triangle");
}

#[test]
fn an_original_layout_adapter_runs_and_bad_inputs_are_refused() {
    let sb = Sandbox::new();
    let g = graph("animatediff.yaml").display().to_string();
    let motion = format!(
        "motion={}",
        fixture("tiny-motion-original.safetensors").display()
    );
    sb.run(&["run", &g, "-q", "--set", &motion]).expect_code(0);
    // More frames than the adapter's position table: one line saying so.
    sb.run(&["run", &g, "-q", "--set", "frames=9"])
        .stderr_has("9 frames: this motion adapter takes 1 to 8");
    // An image latent cannot reach the video sampler.
    let text = std::fs::read_to_string(graph("animatediff.yaml"))
        .unwrap_or_default()
        .replace("latent: start}", "latent: empty}");
    let bad = sb.write("bad.yaml", &text);
    sb.run(&["validate", &bad.display().to_string()])
        .expect_code(3)
        .stderr_has("video.latent_from_batch");
    // Something else than a motion adapter is refused when it is applied, saying so.
    for other in ["tiny-sd/unet", "tiny-sd/vae_io.safetensors"] {
        let wrong = format!("motion={}", fixture(other).display());
        sb.run(&["run", &g, "-q", "--set", &wrong])
            .expect_code(4)
            .stderr_has("not a motion adapter");
    }
}
