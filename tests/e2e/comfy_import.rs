//! ComfyUI workflow import on a corpus nobody here wrote: the workflow templates ComfyUI ships
//! on PyPI (fetched by `tools/comfy/fetch_templates.py`, pinned by version and hash). Every
//! template whose nodes all map converts, validates and runs on the tiny models with model
//! names substituted; the tally of what does not map is `docs/comfyui-templates.md`, which
//! this test checks (regenerate it with `LATENTFLOW_BLESS=1`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use latentflow_interop::comfy::{self, ImportError, NO_EQUIVALENT};
use latentflow_tests::{files_with_ext, workspace_root, Sandbox};

/// The corpus folder, fetched on first use.
fn corpus() -> PathBuf {
    if let Some(d) = std::env::var_os("LATENTFLOW_COMFY_TEMPLATES") {
        return PathBuf::from(d);
    }
    let dir = workspace_root().join("target/comfy-templates");
    if !dir.join(".complete").exists() {
        let script = workspace_root().join("tools/comfy/fetch_templates.py");
        let status = Command::new("python3")
            .arg(&script)
            .arg(&dir)
            .status()
            .expect("python3 runs");
        assert!(
            status.success(),
            "could not fetch the ComfyUI template corpus from PyPI ({}); set LATENTFLOW_COMFY_TEMPLATES to a folder of templates",
            script.display()
        );
    }
    dir
}

/// Values for the graph inputs the importer creates, by name prefix.
fn substitutions(yaml: &str, root: &Path) -> Vec<String> {
    let doc: serde_json::Value = serde_saphyr::from_str(yaml).expect("imported YAML parses");
    let inputs = doc["inputs"].as_object().cloned().unwrap_or_default();
    let controlnet = inputs.keys().any(|k| k.starts_with("controlnet"));
    // ControlNets need the UNet they were made for: the tiny test pair.
    let model = if controlnet {
        root.join("tests/fixtures/tiny-sd")
    } else {
        root.join("models/tiny-shapes")
    };
    let mut set = Vec::new();
    for name in inputs.keys() {
        let value = match name.as_str() {
            n if n.starts_with("checkpoint") || n.starts_with("vae") => model.display().to_string(),
            n if n.starts_with("lora") => root
                .join("models/loras/tiny-shapes-ring.safetensors")
                .display()
                .to_string(),
            n if n.starts_with("controlnet") => root
                .join("tests/fixtures/tiny-controlnet")
                .display()
                .to_string(),
            n if n.starts_with("mask_image") => root
                .join("graphs/inputs/center-mask.png")
                .display()
                .to_string(),
            n if n.starts_with("image") => {
                root.join("graphs/inputs/shapes.png").display().to_string()
            }
            n if n.starts_with("upscale_") || n.starts_with("scale_") => "96".into(),
            n if n.starts_with("width") || n.starts_with("height") => "64".into(),
            n if n.starts_with("steps") => "2".into(),
            n if n.starts_with("batch") => "1".into(),
            _ => continue,
        };
        set.push(format!("{name}={value}"));
    }
    set
}

#[test]
fn comfyui_templates_convert_validate_and_run() {
    let corpus = corpus();
    let root = workspace_root();
    let mut files = Vec::new();
    for pkg in std::fs::read_dir(&corpus).expect("corpus folder").flatten() {
        if pkg.path().is_dir() {
            files.extend(files_with_ext(&pkg.path(), "json"));
        }
    }
    files.sort();
    assert!(files.len() > 500, "the corpus has {} files", files.len());
    let sb = Sandbox::new();
    let mut ran = Vec::new();
    let mut refused = 0usize;
    let mut not_workflows = 0usize;
    let mut missing: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("template readable");
        let json: serde_json::Value = serde_json::from_str(&text).expect("template is JSON");
        if !comfy::is_workflow(&json) {
            not_workflows += 1;
            continue;
        }
        let name = format!(
            "{}/{}",
            f.parent()
                .and_then(|p| p.file_name())
                .unwrap_or_default()
                .to_string_lossy(),
            f.file_name().unwrap_or_default().to_string_lossy()
        );
        match comfy::import_json(&json, &name) {
            Ok(g) => {
                let stem = f
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let graph = sb.write(&format!("{stem}.yaml"), &g.yaml);
                let mut args = vec!["run".to_string(), graph.display().to_string(), "-q".into()];
                let set = substitutions(&g.yaml, &root);
                if !set.is_empty() {
                    args.push("--set".into());
                    args.extend(set);
                }
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let r = sb.run(&refs);
                if r.code != 0 {
                    failures.push(format!("{name}: exit {}\n{}\n{}", r.code, r.stderr, g.yaml));
                }
                ran.push(name);
            }
            Err(ImportError::Unmapped { report }) => {
                refused += 1;
                assert!(!report.unmapped.is_empty());
                let mut classes: Vec<String> = report
                    .unmapped
                    .iter()
                    .map(|i| {
                        if i.message == NO_EQUIVALENT {
                            i.class.clone()
                        } else if i.message.starts_with("a subgraph") {
                            "(a subgraph)".to_string()
                        } else if i.message.starts_with("sampler `")
                            || i.message.starts_with("scheduler `")
                        {
                            let words: Vec<&str> = i.message.split(' ').take(2).collect();
                            format!("{} {}", i.class, words.join(" "))
                        } else if i.message.starts_with("running steps") {
                            format!("{} (a step range)", i.class)
                        } else {
                            format!("{} ({})", i.class, i.message)
                        }
                    })
                    .collect();
                classes.sort();
                classes.dedup();
                for c in classes {
                    *missing.entry(c).or_default() += 1;
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} templates failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        ran.len() >= 11,
        "only {} templates converted: {ran:?}",
        ran.len()
    );

    let workflows = files.len() - not_workflows;
    let mut doc = String::new();
    doc.push_str("# ComfyUI's workflow templates through `latentflow import`\n\n");
    doc.push_str("Generated by the test `comfyui_templates_convert_validate_and_run` (`tests/e2e/comfy_import.rs`;\n");
    doc.push_str("`LATENTFLOW_BLESS=1 cargo test -p latentflow-tests --test e2e comfy` rewrites it). The corpus is\n");
    doc.push_str("what ComfyUI ships on PyPI, fetched by `tools/comfy/fetch_templates.py`: `comfyui-workflow-templates`\n");
    doc.push_str("0.1.30 (the classic SD 1.x templates) and `comfyui-workflow-templates-json` 0.1.123 (today's).\n\n");
    doc.push_str(&format!(
        "- {workflows} workflows ({} files; {not_workflows} {} not a workflow).\n",
        files.len(),
        if not_workflows == 1 { "is" } else { "are" }
    ));
    doc.push_str(&format!(
        "- **{} convert, validate and run** on the tiny models (model names, images, sizes and steps set\n  with `--set`).\n",
        ran.len()
    ));
    doc.push_str(&format!(
        "- {refused} are refused with a report naming each node that cannot be mapped (most use model\n  families LatentFlow does not have yet: Flux, SD3, Wan, LTX-Video, Qwen-Image, audio, 3D, API nodes).\n\n"
    ));
    doc.push_str("## Templates that run\n\n");
    for r in &ran {
        doc.push_str(&format!("- `{r}`\n"));
    }
    doc.push_str("\n## Missing node types, most used first\n\nTemplates that need each type (a template counts once per type).\n\n| node type | templates |\n|---|---|\n");
    let mut tally: Vec<(String, usize)> = missing.into_iter().collect();
    tally.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (c, n) in tally.iter().take(60) {
        doc.push_str(&format!("| {c} | {n} |\n"));
    }
    if tally.len() > 60 {
        let rest: usize = tally[60..].iter().map(|(_, n)| n).sum();
        doc.push_str(&format!(
            "\n…and {} more types, each in fewer templates ({rest} uses in all).\n",
            tally.len() - 60
        ));
    }
    let path = root.join("docs/comfyui-templates.md");
    if std::env::var_os("LATENTFLOW_BLESS").is_some() {
        std::fs::write(&path, &doc).expect("write the report");
    } else {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == doc,
            "docs/comfyui-templates.md is stale; rerun with LATENTFLOW_BLESS=1. Now:\n{doc}"
        );
    }
}

/// `latentflow import` writes a graph that validates, refuses to overwrite, and writes nothing
/// when a node cannot be mapped, listing each with its id and class.
#[test]
fn import_writes_complete_graphs_only() {
    let sb = Sandbox::new();
    let root = workspace_root();
    let wf = serde_json::json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": root.join("models/tiny-shapes").display().to_string()}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red circle"}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0],
              "seed": 1, "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}}
    });
    let src = sb.write("wf.json", &wf.to_string());
    let out = sb.path().join("wf.yaml");
    let (s, o) = (
        src.to_str().unwrap_or_default(),
        out.to_str().unwrap_or_default(),
    );
    sb.run(&["import", s, "-o", o])
        .expect_code(0)
        .stderr_has("wrote");
    sb.run(&["validate", o]).expect_code(0);
    sb.run(&["import", s, "-o", o])
        .expect_code(1)
        .stderr_has("exists; pass --force");
    sb.run(&["import", s, "-o", o, "--force"]).expect_code(0);
    // `run` takes the workflow file directly.
    sb.run(&["run", s, "-q"]).expect_code(0);
    assert!(sb.output("x.png").exists());

    let mut bad = wf.clone();
    bad["3"]["inputs"]["sampler_name"] = "heun".into();
    bad["10"] = serde_json::json!({"class_type": "FreeU_V2", "inputs": {"model": ["4", 0]}});
    bad["3"]["inputs"]["model"] = serde_json::json!(["10", 0]);
    let src = sb.write("bad.json", &bad.to_string());
    let out = sb.path().join("bad.yaml");
    sb.run(&[
        "import",
        src.to_str().unwrap_or_default(),
        "-o",
        out.to_str().unwrap_or_default(),
    ])
    .expect_code(3)
    .stderr_has("node 10 (FreeU_V2): no LatentFlow equivalent")
    .stderr_has("node 3 (KSampler): sampler `heun`")
    .stderr_has("nothing was written");
    assert!(!out.exists());
}

/// A PNG carrying ComfyUI's `prompt` and `workflow` chunks, as ComfyUI's SaveImage writes them
/// (tEXt, JSON), re-runs through the importer.
#[test]
fn a_png_from_comfyui_reruns_through_the_importer() {
    let sb = Sandbox::new();
    let root = workspace_root();
    let prompt = serde_json::json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": root.join("models/tiny-shapes").display().to_string()}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red circle on a blue background"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
              "seed": 42, "steps": 3, "cfg": 7.5, "sampler_name": "euler_ancestral", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "again"}}
    });
    let png = sb.path().join("comfy.png");
    write_png_with_text(
        &png,
        &[
            ("prompt", &prompt.to_string()),
            ("workflow", "{\"nodes\": [], \"links\": []}"),
        ],
    );
    let r = sb.run(&["run", png.to_str().unwrap_or_default(), "-q"]);
    r.expect_code(0);
    assert!(sb.output("again.png").exists());
    // `import` takes the PNG too.
    let out = sb.path().join("from_png.yaml");
    sb.run(&[
        "import",
        png.to_str().unwrap_or_default(),
        "-o",
        out.to_str().unwrap_or_default(),
    ])
    .expect_code(0);
    let yaml = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(yaml.contains("kind: \"euler_a\""), "{yaml}");

    // Only the editor's workflow (ComfyUI's own default template), with the model and sizes
    // set on the command line.
    let template = corpus().join("comfyui-workflow-templates-0.1.30/default.json");
    let workflow = std::fs::read_to_string(&template).expect("the default template");
    let png = sb.path().join("comfy-ui.png");
    write_png_with_text(&png, &[("workflow", &workflow)]);
    let model = root.join("models/tiny-shapes").display().to_string();
    let set = format!("checkpoint={model}");
    sb.run(&[
        "run",
        png.to_str().unwrap_or_default(),
        "-q",
        "--set",
        &set,
        "width=64",
        "height=64",
        "steps=2",
    ])
    .expect_code(0);
    assert!(sb.output("ComfyUI.png").exists());
}

/// An A1111 PNG (its `parameters` chunk, as A1111 writes it) re-runs through the txt2img graph,
/// and the PNG LatentFlow writes carries a `parameters` chunk A1111's parser reads back.
#[test]
fn a_png_from_a1111_reruns_and_ours_carry_a1111_parameters() {
    let sb = Sandbox::new();
    let root = workspace_root();
    let text = "a yellow star on a purple background\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 64x64, Model hash: 0123456789, Model: tiny-shapes, Hires upscale: 2, Version: v1.9.4";
    let png = sb.path().join("a1111.png");
    write_png_with_text(&png, &[("parameters", text)]);
    // The model by name, from a model folder in ComfyUI's extra_model_paths.yaml format.
    let paths = sb.write(
        "extra_model_paths.yaml",
        &format!(
            "mine:\n  base_path: {}\n  checkpoints: models\n",
            root.display()
        ),
    );
    let r = sb.run(&[
        "run",
        png.to_str().unwrap_or_default(),
        "--model-paths",
        paths.to_str().unwrap_or_default(),
    ]);
    r.expect_code(0)
        .stderr_has("A1111 settings not reproduced: Hires upscale: 2");
    let out = sb.output("txt2img.png");
    let chunks = png_text(&out);
    let params = chunks.get("parameters").expect("a parameters chunk");
    let back = latentflow_interop::a1111::parse(params).expect("A1111 format");
    assert_eq!(back.prompt, "a yellow star on a purple background");
    assert_eq!(back.negative, "blurry");
    for (k, v) in [
        ("Steps", "3"),
        ("Sampler", "DPM++ 2M"),
        ("Schedule type", "Karras"),
        ("CFG scale", "6.5"),
        ("Seed", "1234"),
        ("Size", "64x64"),
        ("Model", "tiny-shapes"),
    ] {
        assert_eq!(back.get(k), Some(v), "{k} in {params}");
    }
    // Without the folder, the name does not resolve: a clear error, before anything runs.
    sb.run(&["run", png.to_str().unwrap_or_default()])
        .expect_code(1)
        .stderr_has("the image was made with model `tiny-shapes` (hash 0123456789)")
        .stderr_has("--set model=PATH");
}

/// `--set NAME` finds models in a fake Hugging Face cache and in ComfyUI model folders, and
/// `latentflow models` lists them with their family.
#[test]
fn models_resolve_by_name_from_the_hub_cache_and_model_folders() {
    let sb = Sandbox::new();
    let root = workspace_root();
    // A hub cache holding tiny-shapes as `latentflow/tiny-shapes`, files symlinked to blobs as
    // huggingface_hub lays them out.
    let cache = sb.path().join("hf/hub");
    let repo = cache.join("models--latentflow--tiny-shapes");
    let snap = repo.join("snapshots/0123abcd");
    link_tree(&root.join("models/tiny-shapes"), &snap, &repo.join("blobs"));
    std::fs::create_dir_all(repo.join("refs")).unwrap_or_default();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap_or_default();
    let graph = latentflow_tests::graph("txt2img.yaml");
    let g = graph.to_str().unwrap_or_default();
    let mut cmd = sb.cmd(&[
        "run",
        g,
        "-q",
        "--set",
        "model=latentflow/tiny-shapes",
        "steps=2",
    ]);
    let out = cmd
        .env("HF_HOME", sb.path().join("hf"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A ComfyUI folder with a LoRA; a typo gets the close matches, before anything runs.
    let comfy = sb.path().join("ComfyUI/models/loras");
    std::fs::create_dir_all(&comfy).unwrap_or_default();
    std::fs::copy(
        root.join("models/loras/tiny-shapes-ring.safetensors"),
        comfy.join("ring.safetensors"),
    )
    .unwrap_or_default();
    let paths = sb.write(
        "paths.yaml",
        &format!(
            "comfy:\n  base_path: {}\n",
            sb.path().join("ComfyUI").display()
        ),
    );
    let lora = latentflow_tests::graph("lora.yaml");
    let l = lora.to_str().unwrap_or_default();
    let p = paths.to_str().unwrap_or_default();
    sb.run(&[
        "run",
        l,
        "-q",
        "--model-paths",
        p,
        "--set",
        "lora=ring.safetensors",
        "steps=2",
    ])
    .expect_code(0);
    sb.run(&[
        "validate",
        l,
        "--model-paths",
        p,
        "--set",
        "lora=rnig.safetensors",
    ])
    .expect_code(3)
    .stderr_has("no model named `rnig.safetensors`")
    .stderr_has("close matches: ring.safetensors");

    let mut cmd = sb.cmd(&["models", "--model-paths", p]);
    let out = cmd
        .env("HF_HOME", sb.path().join("hf"))
        .output()
        .expect("runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("latentflow/tiny-shapes").contains("SD1"), "{table}");
    assert!(line("ring.safetensors").contains("LoRA"), "{table}");
}

/// Mirrors `src` into `dst` as symlinks to content files in `blobs` (the hub cache layout).
fn link_tree(src: &Path, dst: &Path, blobs: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_default();
    std::fs::create_dir_all(blobs).unwrap_or_default();
    for e in std::fs::read_dir(src).expect("model folder").flatten() {
        let p = e.path();
        let target = dst.join(e.file_name());
        if p.is_dir() {
            link_tree(&p, &target, blobs);
        } else {
            let blob = blobs.join(format!(
                "{}-{}",
                e.file_name().to_string_lossy(),
                std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
            ));
            std::fs::copy(&p, &blob).unwrap_or_default();
            std::os::unix::fs::symlink(&blob, &target).unwrap_or_default();
        }
    }
}

fn write_png_with_text(path: &Path, chunks: &[(&str, &str)]) {
    let file = std::fs::File::create(path).expect("create png");
    let mut enc = png::Encoder::new(file, 8, 8);
    enc.set_color(png::ColorType::Rgb);
    for (k, v) in chunks {
        enc.add_text_chunk(k.to_string(), v.to_string())
            .expect("text chunk");
    }
    let mut w = enc.write_header().expect("header");
    w.write_image_data(&[128u8; 8 * 8 * 3]).expect("data");
    w.finish().expect("finish");
}

fn png_text(path: &Path) -> BTreeMap<String, String> {
    let file = std::fs::File::open(path).expect("open png");
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png");
    let info = reader.info();
    let mut out = BTreeMap::new();
    for c in &info.uncompressed_latin1_text {
        out.insert(c.keyword.clone(), c.text.clone());
    }
    for c in &info.utf8_text {
        out.insert(c.keyword.clone(), c.get_text().unwrap_or_default());
    }
    out
}
