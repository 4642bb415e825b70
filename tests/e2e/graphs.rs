//! Every graph in `graphs/` validates and runs.

use latentflow_tests::{workspace_root, Sandbox};

#[test]
fn every_example_graph_runs() {
    let dir = workspace_root().join("graphs");
    let mut graphs: Vec<_> = std::fs::read_dir(&dir)
        .expect("graphs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    graphs.sort();
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
    let png = sb.path().join("output/compose.png");
    let decoder = png_size(&png);
    assert_eq!(decoder, (192, 128));
    assert!(sb.path().join("output/previews/preview.png").exists());
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
    let (shape, noise) =
        latentflow_tests::read_safetensors_f32(&sb.path().join("output/noise.safetensors"));
    assert_eq!(shape, vec![1, 4, 6, 8]);
    let (_, diff) =
        latentflow_tests::read_safetensors_f32(&sb.path().join("output/diff.safetensors"));
    // diff = 2 * (0.5 * noise + 0.5 * 0) - noise = 0
    assert!(diff.iter().all(|d| d.abs() < 1e-6));
    let mean = noise.iter().sum::<f32>() / noise.len() as f32;
    assert!(mean.abs() < 0.5 && noise.iter().any(|v| v.abs() > 0.5));
    // Same seed, same noise; another run seed changes only the `random` seed.
    let sb2 = Sandbox::new();
    sb2.run(&["run", g, "-q", "--seed", "99"]).expect_code(0);
    let (_, noise2) =
        latentflow_tests::read_safetensors_f32(&sb2.path().join("output/noise.safetensors"));
    assert_eq!(noise, noise2);
    let (_, r1) =
        latentflow_tests::read_safetensors_f32(&sb.path().join("output/random.safetensors"));
    let (_, r2) =
        latentflow_tests::read_safetensors_f32(&sb2.path().join("output/random.safetensors"));
    assert_ne!(r1, r2);
}
