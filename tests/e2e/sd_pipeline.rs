//! Stable Diffusion end to end through the real binary and the graphs in `graphs/`, on the
//! tiny random-weight pipeline: every sampler's 10-step txt2img loop with CFG 7.5, img2img at
//! strength 0.6, inpainting by blending and with a 9-channel inpainting UNet match diffusers (tools/reference/make_sd_fixtures.py) at every
//! step's latent and in the decoded image, error ≤ 1e-4 (stochastic samplers replay the
//! reference's recorded noise through the sampler's `noise` input).

use std::path::PathBuf;

use latentflow_tests::{graph, read_safetensors_tensor, rel_err, workspace_root, Sandbox};

/// A fixture folder or file under the workspace root.
pub(crate) fn fixture(rel: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(rel)
}

/// `name=<fixture path>`, for `--set`.
pub(crate) fn set_fixture(name: &str, rel: &str) -> String {
    format!("{name}={}", fixture(rel).display())
}

/// The text of a graph in `graphs/`.
pub(crate) fn graph_text(file: &str) -> String {
    std::fs::read_to_string(graph(file)).expect("graph")
}

/// `text` with the denoiser feeding the node whose inputs start `{model: from, <next>:` taken
/// from `to` instead, and `extra` nodes appended.
fn rewire(text: &str, from: &str, next: &str, to: &str, extra: &str) -> String {
    let (old, new) = (
        format!("{{model: {from}, {next}:"),
        format!("{{model: {to}, {next}:"),
    );
    assert!(text.contains(&old), "no `{old}` in the graph");
    text.replacen(&old, &new, 1) + extra
}

/// Runs `latentflow run <graph> -q [--output-dir out] --set s…`; it must succeed.
pub(crate) fn run_graph(
    sb: &Sandbox,
    graph: &std::path::Path,
    out: Option<&std::path::Path>,
    sets: &[String],
) {
    let mut args = vec!["run".to_string(), graph.display().to_string(), "-q".into()];
    if let Some(out) = out {
        args.extend(["--output-dir".into(), out.display().to_string()]);
    }
    for s in sets {
        args.extend(["--set".into(), s.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.run(&args).expect_code(0);
}

/// A tensor a graph saved (`core.save_tensor`).
pub(crate) fn saved(dir: &std::path::Path, file: &str) -> (Vec<usize>, Vec<f32>) {
    read_safetensors_tensor(&dir.join(file), "tensor")
}

/// A reference fixture: `name` in `sd-ref/`, or a path under `tests/fixtures` (`llm-ref/…`).
fn reference(name: &str) -> PathBuf {
    let rel = if name.contains('/') {
        format!("{name}.safetensors")
    } else {
        format!("sd-ref/{name}.safetensors")
    };
    workspace_root().join("tests/fixtures").join(rel)
}

/// A graph (the text of a file in `graphs/`, or a variant) with the reference's noise wired in
/// and the per-step latents and the float image saved.
fn instrumented_text(sb: &Sandbox, file: &str, text: &str, fixture: &str) -> PathBuf {
    let text = text.to_string();
    let wired = text.replacen(
        "type: samplers.sample\n    inputs: {",
        "type: samplers.sample\n    inputs: {noise: noise, ",
        1,
    );
    assert_ne!(
        wired, text,
        "{file}: the sample node's inputs moved; update this test"
    );
    let wired = wired.replacen(
        "params: {kind: $sampler,",
        "params: {record_steps: true, kind: $sampler,",
        1,
    );
    let noise = reference(fixture);
    let mut g = wired;
    g.push_str(&format!(
        "  noise:\n    type: core.load_tensor\n    params: {{path: {}, name: noise}}\n  save_steps:\n    type: core.save_tensor\n    inputs: {{tensor: sample.steps}}\n    params: {{filename: steps.safetensors}}\n  save_float:\n    type: core.save_tensor\n    inputs: {{tensor: decode}}\n    params: {{filename: image.safetensors}}\n",
        noise.display()
    ));
    sb.write(file, &g)
}

/// The tiny pipeline.
const TINY_SD: &str = "tiny-sd";

fn run_and_compare(file: &str, fixture: &str, set: &[&str]) {
    run_model_and_compare(file, fixture, &self::fixture(TINY_SD), set);
}

pub(crate) fn run_model_and_compare(
    file: &str,
    fixture: &str,
    model: &std::path::Path,
    set: &[&str],
) {
    run_text_and_compare(file, &graph_text(file), fixture, model, set);
}

fn run_text_and_compare(
    file: &str,
    text: &str,
    fixture: &str,
    model: &std::path::Path,
    set: &[&str],
) {
    run_text_and_compare_in(&Sandbox::new(), file, text, fixture, model, set);
}

fn run_text_and_compare_in(
    sb: &Sandbox,
    file: &str,
    text: &str,
    fixture: &str,
    model: &std::path::Path,
    set: &[&str],
) {
    let g = instrumented_text(sb, file, text, fixture);
    // The reference's prompts (tools/reference/make_sd_fixtures.py), whatever the graph's
    // defaults are.
    let mut sets = vec![
        format!("model={}", model.display()),
        "prompt=a photo of a cat, best quality".into(),
        "negative=blurry, lowres".into(),
    ];
    // The instrumented copy lives in the sandbox: give the default images by absolute path.
    if ["img2img", "inpaint", "controlnet"]
        .iter()
        .any(|p| file.starts_with(p))
    {
        sets.push(set_fixture("image", "images/img2img-init.png"));
    }
    if file.starts_with("controlnet") {
        sets.push(set_fixture("controlnet", "tiny-controlnet"));
    }
    if file.starts_with("inpaint") {
        sets.push(set_fixture("mask", "images/inpaint-mask.png"));
    }
    sets.extend(set.iter().map(|s| s.to_string()));
    run_graph(sb, &g, None, &sets);
    let out = sb.path().join("output");
    let (shape, ours) = saved(&out, "steps.safetensors");
    let (rshape, theirs) = read_safetensors_tensor(&reference(fixture), "latents");
    assert_eq!(shape, rshape, "{fixture}: steps × latent shape");
    let per = ours.len() / shape[0];
    for s in 0..shape[0] {
        let e = rel_err(
            &ours[s * per..(s + 1) * per],
            &theirs[s * per..(s + 1) * per],
        );
        assert!(e <= 1e-4, "{fixture}: step {s} latent error {e:e}");
    }
    let (ishape, img) = saved(&out, "image.safetensors");
    let (rishape, rimg) = read_safetensors_tensor(&reference(fixture), "image");
    assert_eq!(ishape, rishape, "{fixture}: image shape");
    let e = rel_err(&img, &rimg);
    assert!(e <= 1e-4, "{fixture}: decoded image error {e:e}");
    assert!(
        out.join(file.replace(".yaml", ".png")).exists(),
        "the graph's own PNG is written"
    );
}

const TXT2IMG: [(&str, &str, bool); 9] = [
    ("loop_ddim", "ddim", false),
    ("loop_ddpm", "ddpm", false),
    ("loop_euler", "euler", false),
    ("loop_euler_a", "euler_a", false),
    ("loop_dpmpp_2m", "dpmpp_2m", false),
    ("loop_dpmpp_2m_karras", "dpmpp_2m", true),
    ("loop_lms", "lms", false),
    ("loop_unipc", "unipc", false),
    ("loop_lcm", "lcm", false),
];

#[test]
fn txt2img_matches_diffusers_for_every_sampler() {
    for (fixture, kind, karras) in TXT2IMG {
        let sampler = format!("sampler={kind}");
        let karras = format!("karras={karras}");
        run_and_compare(
            "txt2img.yaml",
            fixture,
            &[
                &sampler,
                &karras,
                "steps=10",
                "cfg=7.5",
                "width=32",
                "height=24",
            ],
        );
    }
}

#[test]
fn img2img_matches_diffusers() {
    run_and_compare(
        "img2img.yaml",
        "img2img",
        &["sampler=euler", "steps=10", "strength=0.6", "cfg=7.5"],
    );
}

#[test]
fn inpainting_model_matches_diffusers() {
    let unet = set_fixture("unet", "tiny-sd-inpaint/unet");
    run_and_compare(
        "inpaint_model.yaml",
        "inpaint9",
        &[&unet, "sampler=euler", "steps=10", "cfg=7.5"],
    );
}

#[test]
fn inpaint_matches_diffusers() {
    run_and_compare(
        "inpaint.yaml",
        "inpaint",
        &["sampler=ddim", "steps=10", "cfg=7.5"],
    );
}

#[test]
fn single_file_checkpoint_runs_txt2img_like_the_folder() {
    let ckpt = fixture("tiny-sd-single.safetensors");
    let config = set_fixture("config", TINY_SD);
    run_model_and_compare(
        "txt2img.yaml",
        "loop_dpmpp_2m",
        &ckpt,
        &[
            &config,
            "sampler=dpmpp_2m",
            "steps=10",
            "cfg=7.5",
            "width=32",
            "height=24",
        ],
    );
}

#[test]
fn a_checkpoint_that_is_not_sd_is_refused_with_one_line() {
    let sb = Sandbox::new();
    let g = graph("txt2img.yaml");
    let bogus = set_fixture("model", "sd-ref/unet.safetensors");
    // ABI v2: the loader reads the file's header at validation, so nothing runs (exit 3).
    sb.run(&["run", g.to_str().unwrap_or_default(), "--set", &bogus])
        .expect_code(3)
        .stderr_has("not a single-file Stable Diffusion checkpoint");
}

#[test]
fn deepcache_matches_the_deepcache_package() {
    for branch in [0, 1] {
        let b = format!("cache_branch_id={branch}");
        run_and_compare(
            "deepcache.yaml",
            &format!("deepcache_b{branch}"),
            &[
                "sampler=ddim",
                "steps=10",
                "cfg=7.5",
                "width=32",
                "height=24",
                "cache_interval=3",
                &b,
            ],
        );
    }
    // The reference really cached: its steps differ from the plain loop's.
    let (_, cached) = read_safetensors_tensor(&reference("deepcache_b0"), "latents");
    let (_, plain) = read_safetensors_tensor(&reference("loop_ddim"), "latents");
    assert!(rel_err(&cached, &plain) > 1e-3);
}

#[test]
fn deepcache_with_interval_one_is_the_plain_model() {
    run_and_compare(
        "deepcache.yaml",
        "loop_ddim",
        &[
            "sampler=ddim",
            "steps=10",
            "cfg=7.5",
            "width=32",
            "height=24",
            "cache_interval=1",
        ],
    );
}

#[test]
fn controlnet_matches_diffusers_with_a_guidance_window_and_in_guess_mode() {
    for (fixture, guess) in [("controlnet_loop", false), ("controlnet_guess", true)] {
        let g = format!("guess_mode={guess}");
        let mut set = CONTROLNET_SET.to_vec();
        set.push(&g);
        run_and_compare("controlnet.yaml", fixture, &set);
    }
}

#[test]
fn two_controlnets_sum_their_residuals() {
    // Residuals are linear in the strength: two wrappers at 0.4 equal one at 0.8.
    let sb = Sandbox::new();
    let text = graph_text("controlnet.yaml");
    let twice = rewire(&text, "controlled", "positive", "controlled2", "  controlled2:\n    type: sd.apply_controlnet\n    inputs: {model: controlled, controlnet: control_net, image: control_image.image}\n    params: {strength: $strength}\n");
    let single = text;
    let run = |name: &str, g: &str, strength: &str| {
        let mut sets = controlnet_sets();
        sets.extend(["steps=6".to_string(), strength.to_string()]);
        sampled_latent(&sb, name, g, &sets)
    };
    let one = run("one.yaml", &single, "strength=0.8");
    let two = run("two.yaml", &twice, "strength=0.4");
    let none = run("none.yaml", &single, "strength=0.0");
    let e = rel_err(&two, &one);
    assert!(e <= 1e-4, "two at 0.4 vs one at 0.8: {e:e}");
    assert!(rel_err(&none, &one) > 1e-3, "the ControlNet has an effect");
}

#[test]
fn attention_heatmap_masks_a_word_and_capturing_changes_nothing() {
    let sb = Sandbox::new();
    let text = graph_text("attention_segment.yaml");
    let plain = rewire(&text, "capture", "positive", "ckpt.model", "");
    let model = set_fixture("model", TINY_SD);
    let captured = sb.path().join("captured");
    run_graph(
        &sb,
        &sb.write("captured.yaml", &text),
        Some(&captured),
        std::slice::from_ref(&model),
    );
    let (shape, heat) = saved(&captured, "heatmap.safetensors");
    assert_eq!(shape, vec![1, 24, 32], "heat map at the image size");
    assert!(heat.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(
        heat.contains(&0.0) && heat.contains(&1.0),
        "min-max normalised"
    );
    let (_, mask) = saved(&captured, "mask.safetensors");
    for (h, m) in heat.iter().zip(&mask) {
        assert_eq!(*m, if *h >= 0.4 { 1.0 } else { 0.0 });
    }
    assert!(captured.join("repainted.png").exists());
    let (shape, seg) = saved(&captured, "segments.safetensors");
    assert_eq!(shape, vec![2, 24, 32], "one mask per word");
    let px = 24 * 32;
    for p in 0..px {
        let (a, b) = (seg[p], seg[px + p]);
        assert!(
            (a == 0.0 || a == 1.0) && (b == 0.0 || b == 1.0) && a + b <= 1.0,
            "masks are binary and disjoint"
        );
    }
    assert!(seg.contains(&1.0), "some pixel belongs to a word");
    // The sink only observes: the sampled latent is bit-identical without it.
    let with = saved(&captured, "latent.safetensors").1;
    let uncaptured = sb.path().join("plain");
    let path = sb.write("plain.yaml", &plain);
    let (path, dir) = (path.display().to_string(), uncaptured.display().to_string());
    // The heat map has nothing to show when sampling did not capture: exit 4, latent saved.
    sb.run(&["run", &path, "-q", "--output-dir", &dir, "--set", &model])
        .expect_code(4);
    let without = saved(&uncaptured, "latent.safetensors").1;
    assert_eq!(with, without);
}

/// Runs `graphs/lora.yaml` (plus a saved latent) with the given `--set`s; returns the latent.
/// A node saving the sampled latent, to append to a graph.
const SAVE_LATENT: &str = "  save_latent:\n    type: core.save_tensor\n    inputs: {tensor: sample.latent}\n    params: {filename: latent.safetensors}\n";

/// Runs `graph_text` plus [`SAVE_LATENT`] with `--set` values; returns the sampled latent.
fn sampled_latent(sb: &Sandbox, name: &str, graph_text: &str, sets: &[String]) -> Vec<f32> {
    let path = sb.write(name, &format!("{graph_text}{SAVE_LATENT}"));
    let out = sb.path().join(name.replace(".yaml", ""));
    run_graph(sb, &path, Some(&out), sets);
    saved(&out, "latent.safetensors").1
}

/// The tiny model, ControlNet and control image as `--set` values.
fn controlnet_sets() -> Vec<String> {
    vec![
        set_fixture("model", TINY_SD),
        set_fixture("controlnet", "tiny-controlnet"),
        set_fixture("image", "images/img2img-init.png"),
    ]
}

/// [`sampled_latent`] on the tiny model with 4 steps.
fn lora_latent(sb: &Sandbox, name: &str, graph_text: &str, sets: &[String]) -> Vec<f32> {
    let mut all = vec![set_fixture("model", TINY_SD), "steps=4".to_string()];
    all.extend_from_slice(sets);
    sampled_latent(sb, name, graph_text, &all)
}

#[test]
fn lora_formats_agree_stack_linearly_and_change_the_image() {
    let sb = Sandbox::new();
    let text = graph_text("lora.yaml");
    let file = |f: &str| set_fixture("lora", &format!("lora/{f}"));
    let kohya = lora_latent(&sb, "kohya.yaml", &text, &[file("kohya.safetensors")]);
    let peft = lora_latent(&sb, "peft.yaml", &text, &[file("peft.safetensors")]);
    assert!(
        rel_err(&peft, &kohya) <= 1e-5,
        "PEFT and kohya files merge alike"
    );
    let none = lora_latent(
        &sb,
        "none.yaml",
        &text,
        &[
            file("kohya.safetensors"),
            "strength_model=0".into(),
            "strength_clip=0".into(),
        ],
    );
    assert!(rel_err(&none, &kohya) > 1e-3, "the LoRA changes the result");
    // Two LoRA nodes at 0.35 each equal one at 0.7 (the updates add).
    let stacked = rewire(&text, "lora.model", "positive", "lora2.model", "")
        .replace("inputs: {clip: lora.clip}", "inputs: {clip: lora2.clip}")
        + "  lora2:\n    type: sd.load_lora\n    inputs: {model: lora.model, clip: lora.clip}\n    params: {path: $lora, strength_model: $strength_model, strength_clip: $strength_clip}\n";
    let two = lora_latent(
        &sb,
        "two.yaml",
        &stacked,
        &[
            file("kohya.safetensors"),
            "strength_model=0.35".into(),
            "strength_clip=0.35".into(),
        ],
    );
    assert!(
        rel_err(&two, &kohya) <= 1e-4,
        "stacked: {:e}",
        rel_err(&two, &kohya)
    );
}

#[test]
fn deepcache_quad_schedule_refreshes_on_its_steps() {
    // 10 steps at interval 3: full steps 0, 3, 6, 8 (the package's quadratic schedule) against
    // uniform's 0, 3, 6, 9: the runs agree until step 8, which only the quadratic one refreshes.
    let sb = Sandbox::new();
    let text = graph_text("deepcache.yaml");
    let g = format!("{text}  save_steps:\n    type: core.save_tensor\n    inputs: {{tensor: sample.steps}}\n    params: {{filename: steps.safetensors}}\n")
        .replacen("params: {kind: $sampler,", "params: {record_steps: true, kind: $sampler,", 1);
    let path = sb.write("dc.yaml", &g);
    let run = |schedule: &str| {
        let out = sb.path().join(schedule);
        let sets = [
            set_fixture("model", TINY_SD),
            "steps=10".into(),
            "width=32".into(),
            "height=24".into(),
            format!("schedule={schedule}"),
        ];
        run_graph(&sb, &path, Some(&out), &sets);
        saved(&out, "steps.safetensors").1
    };
    let (uniform, quad) = (run("uniform"), run("quad"));
    let per = uniform.len() / 10;
    assert!(uniform[..8 * per] == quad[..8 * per], "steps 0-7 agree");
    assert!(
        uniform[8 * per..9 * per] != quad[8 * per..9 * per],
        "step 8 differs"
    );
}

#[test]
fn segmentation_head_labels_every_pixel() {
    let sb = Sandbox::new();
    let out = sb.path().join("seg");
    run_graph(&sb, &graph("segment_head.yaml"), Some(&out), &[]);
    let (shape, labels) = saved(&out, "labels.safetensors");
    assert_eq!(shape, vec![1, 24, 32], "labels at the image size");
    assert!(labels.iter().all(|v| [0.0, 1.0, 2.0].contains(v)));
    let (lshape, logits) = saved(&out, "logits.safetensors");
    assert_eq!(lshape, vec![1, 3, 12, 16]);
    // The label is the argmax of the logits (checked at latent resolution, upscaled ×2).
    for y in 0..12 {
        for x in 0..16 {
            let l: Vec<f32> = (0..3).map(|k| logits[(k * 12 + y) * 16 + x]).collect();
            let best = (0..3).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap_or(0) as f32;
            assert_eq!(labels[(2 * y) * 32 + 2 * x], best);
        }
    }
}

#[test]
fn deepcache_composes_with_controlnet() {
    // LoRA → ControlNet → DeepCache → sampler: DeepCache at interval 1 over a ControlNet is the
    // ControlNet pipeline itself (diffusers' numbers); at interval 3 it still runs.
    let text = graph_text("controlnet.yaml");
    let dc = wrapper("deepcache1", "cached", "controlled");
    let cached = rewire(&text, "controlled", "positive", "cached", &dc);
    let model = fixture(TINY_SD);
    run_text_and_compare(
        "controlnet.yaml",
        &cached,
        "controlnet_loop",
        &model,
        &CONTROLNET_SET,
    );
    let every3 = cached.replace("params: {cache_interval: 1}", "params: {cache_interval: 3}");
    sampled_latent(&Sandbox::new(), "cn_dc.yaml", &every3, &controlnet_sets());
}

/// A wrapper node `name` of `kind` over the denoiser `over`.
fn wrapper(kind: &str, name: &str, over: &str) -> String {
    let (ty, params) = match kind {
        "deepcache1" => ("sd.deepcache", "{cache_interval: 1}"),
        "deepcache3" => ("sd.deepcache", "{cache_interval: 3}"),
        "capture" => ("sd.capture_attention", "{}"),
        other => panic!("no wrapper {other}"),
    };
    format!("  {name}:\n    type: {ty}\n    inputs: {{model: {over}}}\n    params: {params}\n")
}

/// The ControlNet graph with wrappers around the UNet under the ControlNet (`inner`, innermost
/// first) and around the ControlNet (`outer`, innermost first).
fn controlnet_chain(inner: &[&str], outer: &[&str]) -> String {
    let text = graph_text("controlnet.yaml");
    let mut extra = String::new();
    let mut below = "ckpt.model".to_string();
    for (i, w) in inner.iter().enumerate() {
        let name = format!("inner{i}");
        extra += &wrapper(w, &name, &below);
        below = name;
    }
    let text = rewire(&text, "ckpt.model", "controlnet", &below, "");
    let mut above = "controlled".to_string();
    for (i, w) in outer.iter().enumerate() {
        let name = format!("outer{i}");
        extra += &wrapper(w, &name, &above);
        above = name;
    }
    rewire(&text, "controlled", "positive", &above, &extra)
}

const CONTROLNET_SET: [&str; 6] = [
    "sampler=ddim",
    "steps=10",
    "cfg=7.5",
    "strength=0.8",
    "start=0.1",
    "end=0.8",
];

#[test]
fn wrappers_compose_in_any_order_and_match_the_reference() {
    // DeepCache (interval 1: every step full), attention capture and ControlNet, in four orders:
    // each is diffusers' ControlNet pipeline to within the parity bound.
    let model = fixture(TINY_SD);
    let orders: [(&[&str], &[&str]); 4] = [
        (&["deepcache1", "capture"], &[]),
        (&["capture"], &["deepcache1"]),
        (&[], &["capture", "deepcache1"]),
        (&["deepcache1"], &["capture"]),
    ];
    for (inner, outer) in orders {
        let text = controlnet_chain(inner, outer);
        run_text_and_compare(
            "controlnet.yaml",
            &text,
            "controlnet_loop",
            &model,
            &CONTROLNET_SET,
        );
    }
}

/// The final latent of the ControlNet graph with the given wrappers.
fn controlnet_chain_latent(inner: &[&str], outer: &[&str]) -> Vec<f32> {
    let mut sets = controlnet_sets();
    sets.extend(CONTROLNET_SET.iter().map(|s| s.to_string()));
    sampled_latent(
        &Sandbox::new(),
        "chain.yaml",
        &controlnet_chain(inner, outer),
        &sets,
    )
}

#[test]
fn caching_steps_give_the_same_result_wherever_deepcache_sits() {
    // DeepCache at interval 3 over the ControlNet, under it, and under a capture: the UNet gets
    // the same requests, so the results are identical to the bit.
    let a = controlnet_chain_latent(&[], &["deepcache3"]);
    let b = controlnet_chain_latent(&["deepcache3"], &[]);
    let c = controlnet_chain_latent(&["deepcache3", "capture"], &[]);
    let plain = controlnet_chain_latent(&[], &[]);
    assert_eq!(a, b, "DeepCache over vs under the ControlNet");
    assert_eq!(a, c, "with attention capture on top");
    assert_ne!(a, plain, "interval 3 really skips work");
}

#[test]
fn deepcache_and_capture_compose_with_the_inpainting_model() {
    let unet = set_fixture("unet", "tiny-sd-inpaint/unet");
    let set = [unet.as_str(), "sampler=euler", "steps=10", "cfg=7.5"];
    let model = fixture(TINY_SD);
    let text = graph_text("inpaint_model.yaml");
    // Inside the inpainting wrapper, and outside it.
    let dc = wrapper("deepcache1", "inner0", "unet");
    let inside = rewire(&text, "unet", "vae", "inner0", &dc);
    run_text_and_compare("inpaint_model.yaml", &inside, "inpaint9", &model, &set);
    let outer =
        wrapper("capture", "outer1", "inpaint") + &wrapper("deepcache1", "outer0", "outer1");
    let outside = rewire(&text, "inpaint", "positive", "outer0", &outer);
    run_text_and_compare("inpaint_model.yaml", &outside, "inpaint9", &model, &set);
}

#[test]
fn a_lora_applied_over_a_wrapper_is_the_wrapper_over_the_lora() {
    // LoRA → DeepCache and DeepCache → LoRA: the wrapper forwards `with_lora` and wraps the
    // LoRA'd model again, so both chains are the same model.
    let sb = Sandbox::new();
    let text = graph_text("lora.yaml");
    let over = wrapper("deepcache3", "cached", "lora.model");
    let lora_then_cache = rewire(&text, "lora.model", "positive", "cached", &over);
    let under = wrapper("deepcache3", "cached", "ckpt.model");
    let cache_then_lora = rewire(&text, "ckpt.model", "clip", "cached", &under);
    let file = set_fixture("lora", "lora/kohya.safetensors");
    let a = lora_latent(
        &sb,
        "lora_cache.yaml",
        &lora_then_cache,
        std::slice::from_ref(&file),
    );
    let b = lora_latent(&sb, "cache_lora.yaml", &cache_then_lora, &[file]);
    assert_eq!(a, b);
}

#[test]
fn an_out_of_tree_wrapper_plugin_matches_diffusers_guidance_rescale() {
    // examples/cfg-rescale: built out of tree on the model library and the typed protocol, it
    // wraps the SD UNet from another plugin; the loop equals diffusers' guidance_rescale=0.7.
    let built = latentflow_tests::build_example("cfg-rescale", "libcfg_rescale.so");
    let sb = Sandbox::new();
    std::fs::copy(&built, sb.path().join("plugins/libcfg_rescale.so")).expect("copy");
    let rescaled = "  rescaled:\n    type: cfg_rescale.wrap\n    inputs: {model: ckpt.model}\n    params: {rescale: 0.7}\n";
    let text = rewire(
        &graph_text("txt2img.yaml"),
        "ckpt.model",
        "positive",
        "rescaled",
        rescaled,
    );
    let model = fixture(TINY_SD);
    let set = [
        "sampler=ddim",
        "steps=10",
        "cfg=7.5",
        "width=32",
        "height=24",
    ];
    run_text_and_compare_in(&sb, "txt2img.yaml", &text, "cfg_rescale", &model, &set);
}
