//! LLM connectors end to end: ELLA's 10-step loops (fixed and flexible length) and SUR-adapter's
//! against the authors' modules inside diffusers (tools/reference/make_llm_fixtures.py), every
//! step's latent ≤ 1e-4; the encoder nodes against transformers; and the type errors that keep
//! T5 features away from a CLIP-conditioned UNet and back.

use latentflow_tests::{read_safetensors_tensor, rel_err, workspace_root, Sandbox};

use crate::sd_pipeline::{fixture, run_graph, run_model_and_compare, saved, set_fixture};

const LOOP: [&str; 5] = [
    "sampler=dpmpp_2m",
    "steps=10",
    "cfg=7.5",
    "width=32",
    "height=24",
];

const ELLA_FILES: &[(&str, &str)] = &[("t5", "tiny-t5"), ("ella", "tiny-ella.safetensors")];

/// The loop's settings, the graph's model files by absolute path (the instrumented copy lives
/// in a sandbox), and `extra`.
fn with_loop(files: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let files = files.iter().map(|(name, rel)| set_fixture(name, rel));
    LOOP.iter()
        .chain(extra)
        .map(|s| s.to_string())
        .chain(files)
        .collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn ella_fixed_length_matches_the_authors_proxy_unet() {
    run_model_and_compare(
        "ella.yaml",
        "llm-ref/ella_fixed",
        &fixture("tiny-sd"),
        &refs(&with_loop(ELLA_FILES, &["length=fixed", "max_length=128"])),
    );
}

#[test]
fn ella_flexible_length_matches_the_authors_proxy_unet() {
    run_model_and_compare(
        "ella.yaml",
        "llm-ref/ella_flexible",
        &fixture("tiny-sd"),
        &refs(&with_loop(ELLA_FILES, &["length=flexible", "max_length=0"])),
    );
}

#[test]
fn sur_adapter_loop_matches_the_authors_adapter() {
    run_model_and_compare(
        "sur_adapter.yaml",
        "llm-ref/sur_loop",
        &fixture("tiny-sd"),
        &refs(&with_loop(&[("adapter", "tiny-sur.safetensors")], &[])),
    );
}

fn reference(name: &str, tensor: &str) -> (Vec<usize>, Vec<f32>) {
    read_safetensors_tensor(
        &workspace_root().join("tests/fixtures/llm-ref").join(name),
        tensor,
    )
}

/// Row `row`, first `n` tokens, of a B×L×D reference.
fn row(shape: &[usize], data: &[f32], row: usize, n: usize) -> Vec<f32> {
    let (l, d) = (shape[1], shape[2]);
    data[row * l * d..(row * l + n) * d].to_vec()
}

#[test]
fn encoder_nodes_match_transformers() {
    let sb = Sandbox::new();
    let t5 = fixture("tiny-t5");
    let llm = fixture("tiny-llm/qwen3");
    let g = sb.write(
        "encode.yaml",
        &format!(
            "version: 1\nnodes:\n  t5: {{type: llm.load_t5, params: {{path: {t5}}}}}\n  fixed: {{type: llm.t5_encode, inputs: {{t5: t5}}, params: {{text: 'a photo of a cat, best quality', max_length: 16}}}}\n  llm: {{type: llm.load_llm, params: {{path: {llm}}}}}\n  hidden: {{type: llm.llm_encode, inputs: {{llm: llm}}, params: {{text: 'two dogs playing in the snow at night', layer: -2}}}}\n  s1: {{type: core.save_tensor, inputs: {{tensor: fixed.features}}, params: {{filename: t5.safetensors}}}}\n  s2: {{type: core.save_tensor, inputs: {{tensor: fixed.mask}}, params: {{filename: mask.safetensors}}}}\n  s3: {{type: core.save_tensor, inputs: {{tensor: hidden.features}}, params: {{filename: llm.safetensors}}}}\n",
            t5 = t5.display(),
            llm = llm.display()
        ),
    );
    run_graph(&sb, &g, None, &[]);
    let out = sb.path().join("output");
    let (shape, ours) = saved(&out, "t5.safetensors");
    assert_eq!(shape, vec![1, 16, 32]);
    let (rshape, theirs) = reference("t5.safetensors", "fixed_hidden");
    let e = rel_err(&ours, &row(&rshape, &theirs, 1, 16));
    assert!(e <= 1e-5, "T5 features: error {e:e}");
    let (_, mask) = saved(&out, "mask.safetensors");
    let (_, rmask) = reference("t5.safetensors", "fixed_mask");
    assert_eq!(mask, rmask[16..32].to_vec());
    // The second prompt is the batch's longest: unpadded, its states are the reference row.
    let (shape, ours) = saved(&out, "llm.safetensors");
    let (rshape, theirs) = reference("llm_qwen3.safetensors", "hidden_m2");
    assert_eq!(shape, vec![1, rshape[1], rshape[2]]);
    let e = rel_err(&ours, &row(&rshape, &theirs, 1, rshape[1]));
    assert!(e <= 1e-5, "Qwen3 hidden_states[-2]: error {e:e}");
}

fn ella_graph(sample_inputs: &str) -> String {
    format!(
        "version: 1\nnodes:\n  ckpt: {{type: sd.load_checkpoint, params: {{path: {sd}}}}}\n  t5: {{type: llm.load_t5, params: {{path: {t5}}}}}\n  text: {{type: llm.t5_encode, inputs: {{t5: t5}}, params: {{text: a cat}}}}\n  clip: {{type: sd.text_encode, inputs: {{clip: ckpt.clip}}, params: {{text: a cat}}}}\n  ella: {{type: llm.ella, inputs: {{model: ckpt.model}}, params: {{path: {ella}, heads: 4}}}}\n  empty: {{type: sd.empty_latent, inputs: {{vae: ckpt.vae}}, params: {{width: 32, height: 24}}}}\n  sample: {{type: samplers.sample, inputs: {{{sample_inputs}, latent: empty}}, params: {{steps: 2}}}}\n",
        sd = fixture("tiny-sd").display(),
        t5 = fixture("tiny-t5").display(),
        ella = fixture("tiny-ella.safetensors").display(),
    )
}

#[test]
fn t5_features_and_clip_conditioning_do_not_mix() {
    let sb = Sandbox::new();
    // T5 features into the bare UNet, CLIP conditioning into the ELLA model: both refused
    // before anything runs.
    for (inputs, needle) in [
        ("model: ckpt.model, positive: text.features", "t5"),
        ("model: ella, positive: clip.conditioning", "sd1"),
    ] {
        let g = sb.write("mix.yaml", &ella_graph(inputs));
        sb.run(&["validate", g.to_str().unwrap_or_default()])
            .expect_code(3)
            .stderr_has(needle);
    }
    let g = sb.write("ok.yaml", &ella_graph("model: ella, positive: text.features, negative: text.features, positive_mask: text.mask, negative_mask: text.mask"));
    sb.run(&["run", g.to_str().unwrap_or_default(), "-q"])
        .expect_code(0);
}

#[test]
fn a_file_that_is_not_an_ella_connector_is_refused_at_validation() {
    let sb = Sandbox::new();
    let g = sb.write(
        "bad.yaml",
        &ella_graph("model: ella, positive: text.features"),
    );
    let bogus = set_fixture("x", "tiny-sur.safetensors");
    let bogus = bogus.trim_start_matches("x=");
    let text = std::fs::read_to_string(&g).unwrap_or_default().replace(
        &fixture("tiny-ella.safetensors").display().to_string(),
        bogus,
    );
    let g = sb.write("bad.yaml", &text);
    sb.run(&["validate", g.to_str().unwrap_or_default()])
        .expect_code(3)
        .stderr_has("not an ELLA connector");
}

#[test]
fn the_readme_commands_run() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    for (cmd, graph, sets, png) in [
        (
            "latentflow run graphs/ella.yaml --set length=flexible max_length=0",
            "ella.yaml",
            &["length=flexible", "max_length=0"][..],
            "ella.png",
        ),
        (
            "latentflow run graphs/sur_adapter.yaml --set attend=tokens",
            "sur_adapter.yaml",
            &["attend=tokens"][..],
            "sur_adapter.png",
        ),
    ] {
        assert!(readme.contains(cmd), "README: `{cmd}`");
        let sb = Sandbox::new();
        let g = latentflow_tests::graph(graph).display().to_string();
        let mut args = vec!["run", g.as_str(), "-q", "--set"];
        args.extend(sets);
        sb.run(&args).expect_code(0);
        assert!(sb.output(png).exists(), "{cmd}: {png}");
    }
}
