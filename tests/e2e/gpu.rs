//! The GPU device service end to end: a graph of GPU nodes (lavapipe in CI; these fail, never
//! skip, without an adapter), its result against a CPU computation, and the refusals.

use latentflow_tests::{graph, read_safetensors_f32, Run, Sandbox};

/// GroupNorm (γ = 1, β = 0) + SiLU over N×C×H×W in f64.
fn group_norm_silu(x: &[f32], c: usize, hw: usize, groups: usize, eps: f64) -> Vec<f64> {
    let per = c / groups * hw;
    let mut out = vec![0.0; x.len()];
    for (g, chunk) in x.chunks(per).enumerate() {
        let mean = chunk.iter().map(|&v| f64::from(v)).sum::<f64>() / per as f64;
        let var = chunk
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / per as f64;
        for (j, &v) in chunk.iter().enumerate() {
            let y = (f64::from(v) - mean) / (var + eps).sqrt();
            out[g * per + j] = y / (1.0 + (-y).exp());
        }
    }
    out
}

/// softmax(x·xᵀ/√d)·x per channel, rows of length d.
fn self_attention(x: &[f64], rows: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    let scale = 1.0 / (d as f64).sqrt();
    for (ch, m) in x.chunks(rows * d).enumerate() {
        for i in 0..rows {
            let s: Vec<f64> = (0..rows)
                .map(|j| (0..d).map(|t| m[i * d + t] * m[j * d + t]).sum::<f64>() * scale)
                .collect();
            let max = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for t in 0..d {
                out[ch * rows * d + i * d + t] =
                    (0..rows).map(|j| e[j] / sum * m[j * d + t]).sum::<f64>();
            }
        }
    }
    out
}

#[test]
fn the_gpu_graph_matches_the_same_computation_on_the_cpu() {
    let sb = Sandbox::new();
    let g = graph("gpu_kernels.yaml");
    sb.run(&["run", g.to_str().unwrap_or_default(), "-q"])
        .expect_code(0);
    let (shape, x) = read_safetensors_f32(&sb.output("gpu_input.safetensors"));
    assert_eq!(shape, vec![1, 32, 8, 8]);
    let (rshape, got) = read_safetensors_f32(&sb.output("gpu_result.safetensors"));
    assert_eq!(rshape, shape);
    let normed = group_norm_silu(&x, 32, 64, 8, 1e-5);
    let attended = self_attention(&normed, 8, 8);
    let want: Vec<f64> = attended.iter().map(|v| 0.5 * v + 0.1).collect();
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&a, b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= 1e-5 * scale,
        "max difference {worst:e} (scale {scale:e})"
    );
}

const UPLOAD: &str = r#"
version: 1
nodes:
  noise:
    type: core.noise_latent
    params: {width: 16, height: 16}
  up:
    type: gpu.upload
    inputs: {tensor: noise}
  save:
    type: core.save_tensor
    inputs: {tensor: up}
"#;

#[test]
fn a_missing_adapter_is_refused_before_anything_runs_with_what_was_found() {
    let sb = Sandbox::new();
    let file = sb.write("g.yaml", UPLOAD);
    let out = sb
        .cmd(&["validate", file.to_str().unwrap_or_default()])
        .env("LATENTFLOW_WGPU_ADAPTER", "no-such-adapter")
        .output()
        .expect("latentflow runs");
    Run::from(out)
        .expect_code(3)
        .stderr_has("g.yaml:7:")
        .stderr_has("no-such-adapter")
        .stderr_has("found:")
        .stderr_has("LATENTFLOW_WGPU_ADAPTER");
}

#[test]
fn a_device_tensor_where_a_cpu_one_is_needed_fails_that_node_with_a_hint() {
    let sb = Sandbox::new();
    let r = sb.graph("run", "g.yaml", UPLOAD, &["-q"]);
    r.expect_code(4).stderr_has("gpu.download");
    assert!(!sb.output("tensor.safetensors").exists());
}

#[test]
fn devices_lists_the_cpu_and_the_adapter_in_use() {
    let sb = Sandbox::new();
    let r = sb.run(&["devices"]);
    r.expect_code(0).stdout_has("* cpu").stdout_has("* wgpu");
    let out = sb
        .cmd(&["devices", "--json"])
        .env("LATENTFLOW_WGPU_ADAPTER", "no-such-adapter")
        .output()
        .expect("latentflow runs");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(names.starts_with(&["cpu", "wgpu"]), "{names:?}");
    // The adapter exists but is not the one asked for.
    assert_eq!(list[1]["selected"], false);
    let readme = std::fs::read_to_string(latentflow_tests::workspace_root().join("README.md"))
        .expect("README");
    assert!(readme.contains("latentflow devices "));
    assert!(readme.contains("latentflow run graphs/gpu_kernels.yaml "));
}
