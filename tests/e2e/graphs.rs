//! Every graph in `graphs/` validates and runs.

use latentflow_tests::{files_with_ext, read_safetensors_f32, workspace_root, Sandbox};

#[test]
fn every_example_graph_runs() {
    let graphs = files_with_ext(&workspace_root().join("graphs"), "yaml");
    assert!(!graphs.is_empty());
    for g in graphs {
        let sb = Sandbox::new();
        let path = g.to_string_lossy().into_owned();
        sb.run(&["validate", &path]).expect_code(0);
        let r = sb.run(&["run", &path, "--events", "json"]);
        r.expect_code(0);
        let events = r.events();
        let last = events.last().expect("events");
        assert_eq!(last["event"], "run_finished", "{path}");
        assert_eq!(last["status"], "ok", "{path}");
    }
}

#[test]
fn compose_graph_writes_the_expected_image() {
    let sb = Sandbox::new();
    let g = latentflow_tests::graph("compose.yaml");
    sb.run(&["run", g.to_str().unwrap_or_default(), "-q"])
        .expect_code(0);
    assert_eq!(png_size(&sb.output("compose.png")), (192, 128));
    assert!(sb.output("previews/preview.png").exists());
}

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let bytes = std::fs::read(path).expect("png");
    assert_eq!(&bytes[1..4], b"PNG");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap_or_default());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap_or_default());
    (w, h)
}

#[test]
fn latents_graph_is_seeded_and_correct() {
    let sb = Sandbox::new();
    let g = latentflow_tests::graph("latents.yaml");
    let g = g.to_str().unwrap_or_default();
    sb.run(&["run", g, "-q"]).expect_code(0);
    let read = |sb: &Sandbox, name: &str| read_safetensors_f32(&sb.output(name));
    let (shape, noise) = read(&sb, "noise.safetensors");
    assert_eq!(shape, vec![1, 4, 6, 8]);
    let (_, diff) = read(&sb, "diff.safetensors");
    // diff = 2 * (0.5 * noise + 0.5 * 0) - noise = 0
    assert!(diff.iter().all(|d| d.abs() < 1e-6));
    let mean = noise.iter().sum::<f32>() / noise.len() as f32;
    assert!(mean.abs() < 0.5 && noise.iter().any(|v| v.abs() > 0.5));
    // Same seed, same noise; another run seed changes only the `random` seed.
    let sb2 = Sandbox::new();
    sb2.run(&["run", g, "-q", "--seed", "99"]).expect_code(0);
    assert_eq!(noise, read(&sb2, "noise.safetensors").1);
    assert_ne!(
        read(&sb, "random.safetensors").1,
        read(&sb2, "random.safetensors").1
    );
}
