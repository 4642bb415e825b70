//! The sampling loop (`samplers.sample`) driving a denoiser from another plugin (testkit's
//! analytic point-mass denoiser) through the ABI's object handles.

use latentflow_tests::{read_safetensors_f32, Sandbox};

const KINDS: [&str; 8] = [
    "ddim", "ddpm", "euler", "euler_a", "lms", "dpmpp_2m", "unipc", "lcm",
];

/// The point-mass denoiser at 0.5, its conditioning and an empty 24×16 latent.
const POINT: &str = "nodes:\n  model: {type: test.point_denoiser, params: {c: 0.5}}\n  pos: {type: test.conditioning}\n  empty: {type: core.empty_latent, params: {width: 24, height: 16}}\n";

/// The point-mass denoiser at 0.75, a known latent and a mask over its left half.
const INPAINT: &str = r#"
nodes:
  model: {type: test.point_denoiser, params: {c: 0.75}}
  pos: {type: test.conditioning}
  known: {type: core.noise_latent, params: {width: 32, height: 16, seed: 4}}
  left: {type: core.rect_mask, params: {width: 32, height: 16, x: 0, y: 0, rect_width: 16, rect_height: 16}}
"#;

fn sandbox() -> Sandbox {
    Sandbox::with_plugins(&["lf_fixture_testkit"])
}

/// Writes and runs a graph quietly; it must succeed.
fn run_ok(sb: &Sandbox, name: &str, yaml: &str) {
    sb.graph("run", name, yaml, &["-q"]).expect_code(0);
}

fn values(sb: &Sandbox, file: &str) -> Vec<f32> {
    read_safetensors_f32(&sb.output(file)).1
}

#[test]
fn every_sampler_lands_on_the_point_through_the_abi() {
    let sb = sandbox();
    let mut g = String::from(POINT);
    for k in KINDS {
        let steps = if k == "lcm" { 4 } else { 12 };
        g.push_str(&format!(
            "  s_{k}: {{type: samplers.sample, inputs: {{model: model, positive: pos, latent: empty}}, params: {{kind: {k}, steps: {steps}, cfg: 1.0, seed: 3}}}}\n  w_{k}: {{type: core.save_tensor, inputs: {{tensor: s_{k}.latent}}, params: {{filename: {k}.safetensors}}}}\n"
        ));
    }
    run_ok(&sb, "all.yaml", &g);
    for k in KINDS {
        let v = values(&sb, &format!("{k}.safetensors"));
        assert_eq!(v.len(), 4 * 2 * 3);
        // DDIM with Stable Diffusion's set_alpha_to_one = false ends at ᾱ_0, not 1: a residual
        // of σ_min ≈ 0.029 times the last noise estimate remains. The others land exactly.
        let tol = if k == "ddim" { 0.1 } else { 2e-3 };
        assert!(v.iter().all(|x| (x - 0.5).abs() < tol), "{k}: {v:?}");
        if k == "ddim" {
            assert!(
                v.iter().any(|x| (x - 0.5).abs() > 1e-3),
                "ddim should keep its σ_min residual"
            );
        }
    }
}

#[test]
fn flow_samplers_land_on_the_point_and_others_refuse_a_flow_model() {
    let sb = sandbox();
    let mut g = POINT.replace("test.point_denoiser", "test.flow_point_denoiser");
    // flow_euler with SD3's shift, with Flux's dynamic shift on its own σ, and DPM-Solver++ and
    // UniPC on their flow grids.
    let runs = [
        ("flow_euler", "shift: 3.0"),
        (
            "flux",
            "kind: flow_euler, dynamic_shift: true, flow_grid: flux",
        ),
        ("dpmpp_2m", "shift: 3.0"),
        ("unipc", "shift: 3.0"),
    ];
    for (name, extra) in runs {
        let kind = if extra.contains("kind:") {
            String::new()
        } else {
            format!("kind: {name}, ")
        };
        g.push_str(&format!(
            "  s_{name}: {{type: samplers.sample, inputs: {{model: model, positive: pos, latent: empty}}, params: {{{kind}{extra}, steps: 12, cfg: 1.0, seed: 3}}}}\n  w_{name}: {{type: core.save_tensor, inputs: {{tensor: s_{name}.latent}}, params: {{filename: {name}.safetensors}}}}\n"
        ));
    }
    run_ok(&sb, "flow.yaml", &g);
    for (name, _) in runs {
        let v = values(&sb, &format!("{name}.safetensors"));
        assert_eq!(v.len(), 4 * 2 * 3);
        // flow_euler's timesteps are σ·1000 exactly; the multistep solvers truncate them to
        // integers, so the model's σ is off by up to 1/1000 at each step.
        let tol = if name.starts_with("flow") || name == "flux" {
            1e-4
        } else {
            1e-2
        };
        assert!(v.iter().all(|x| (x - 0.5).abs() < tol), "{name}: {v:?}");
    }
    // A sampler without a flow grid says so; and flow_euler refuses an ε-prediction model.
    let ddim = format!(
        "{}  s: {{type: samplers.sample, inputs: {{model: model, positive: pos, latent: empty}}, params: {{kind: ddim, steps: 4, cfg: 1.0}}}}\n",
        POINT.replace("test.point_denoiser", "test.flow_point_denoiser")
    );
    sb.graph("run", "ddim.yaml", &ddim, &["-q"])
        .expect_code(4)
        .stderr_has("ddim has no flow-matching grid");
    let eps = format!(
        "{POINT}  s: {{type: samplers.sample, inputs: {{model: model, positive: pos, latent: empty}}, params: {{kind: flow_euler, steps: 4, cfg: 1.0}}}}\n"
    );
    sb.graph("run", "eps.yaml", &eps, &["-q"])
        .expect_code(4)
        .stderr_has("flow_euler steps a flow-matching velocity, and this model predicts epsilon");
}

#[test]
fn guidance_extrapolates_from_negative_to_positive() {
    let sb = sandbox();
    let yaml = r#"
nodes:
  model: {type: test.point_denoiser, params: {c: 0.5}}
  pos: {type: test.conditioning, params: {value: 0.1}}
  neg: {type: test.conditioning, params: {value: 0.0}}
  empty: {type: core.empty_latent, params: {width: 16, height: 16}}
  s: {type: samplers.sample, inputs: {model: model, positive: pos, negative: neg, latent: empty}, params: {kind: dpmpp_2m, steps: 10, cfg: 7.5}}
  w: {type: core.save_tensor, inputs: {tensor: s.latent}, params: {filename: cfg.safetensors}}
"#;
    run_ok(&sb, "cfg.yaml", yaml);
    // The guided point is c_neg + 7.5 (c_pos − c_neg) = 0.5 + 7.5 × 0.1.
    assert!(values(&sb, "cfg.safetensors")
        .iter()
        .all(|x| (x - 1.25).abs() < 2e-3));
}

#[test]
fn img2img_runs_the_strength_fraction_of_the_schedule() {
    let sb = sandbox();
    let yaml = r#"
nodes:
  model: {type: test.point_denoiser, params: {c: -0.25}}
  pos: {type: test.conditioning}
  start: {type: core.noise_latent, params: {width: 16, height: 16, seed: 9}}
  s: {type: samplers.sample, inputs: {model: model, positive: pos, latent: start}, params: {kind: euler, steps: 10, strength: 0.6, cfg: 1.0}}
  w: {type: core.save_tensor, inputs: {tensor: s.latent}, params: {filename: i2i.safetensors}}
"#;
    let r = sb.graph("run", "i2i.yaml", yaml, &["--events", "json"]);
    r.expect_code(0);
    let totals: Vec<u64> = r
        .events()
        .iter()
        .filter(|e| e["event"] == "progress" && e["node"] == "s")
        .map(|e| e["total"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        !totals.is_empty() && totals.iter().all(|&t| t == 6),
        "{totals:?}"
    );
    assert!(values(&sb, "i2i.safetensors")
        .iter()
        .all(|x| (x + 0.25).abs() < 2e-3));
}

#[test]
fn inpainting_keeps_the_known_region_and_fills_the_mask() {
    let sb = sandbox();
    let yaml = INPAINT.to_string()
        + r#"  s: {type: samplers.sample, inputs: {model: model, positive: pos, latent: known, mask: left}, params: {kind: euler, steps: 10, cfg: 1.0}}
  w: {type: core.save_tensor, inputs: {tensor: s.latent}, params: {filename: out.safetensors}}
  wk: {type: core.save_tensor, inputs: {tensor: known}, params: {filename: known.safetensors}}
"#;
    run_ok(&sb, "inpaint.yaml", &yaml);
    let (out, known) = (
        values(&sb, "out.safetensors"),
        values(&sb, "known.safetensors"),
    );
    // Latent 1×4×2×4: columns 0–1 are masked (repaint), 2–3 known.
    for (i, (o, k)) in out.iter().zip(&known).enumerate() {
        if i % 4 < 2 {
            assert!((o - 0.75).abs() < 2e-3, "masked element {i}: {o}");
        } else {
            assert_eq!(o, k, "known element {i} must be kept exactly");
        }
    }
}

#[test]
fn a_sampler_refuses_a_handle_that_is_not_a_denoiser() {
    let sb = sandbox();
    let yaml = "nodes:\n  m: {type: test.make_scaler}\n  pos: {type: test.conditioning}\n  e: {type: core.empty_latent}\n  s: {type: samplers.sample, inputs: {model: m, positive: pos, latent: e}}\n";
    sb.refuses(yaml, "expects Denoiser, but `m.scaler` is Scaler");
}

#[test]
fn every_sampler_predicts_the_point_as_x0_so_its_hallucination_score_is_zero() {
    let sb = sandbox();
    let mut g = String::from(POINT);
    for k in KINDS {
        g.push_str(&format!(
            "  s_{k}: {{type: samplers.sample, inputs: {{model: model, positive: pos, latent: empty}}, params: {{kind: {k}, steps: 12, cfg: 1.0, seed: 3, record_steps: true}}}}\n  h_{k}: {{type: samplers.hallucination_score, inputs: {{x0: s_{k}.x0}}, params: {{last_k: 5}}}}\n  w_{k}: {{type: core.save_tensor, inputs: {{tensor: h_{k}}}, params: {{filename: {k}.safetensors}}}}\n  x_{k}: {{type: core.save_tensor, inputs: {{tensor: s_{k}.x0}}, params: {{filename: x0_{k}.safetensors}}}}\n"
        ));
    }
    run_ok(&sb, "x0.yaml", &g);
    for k in KINDS {
        let x0 = values(&sb, &format!("x0_{k}.safetensors"));
        assert_eq!(x0.len(), 12 * 4 * 2 * 3, "{k}");
        assert!(x0.iter().all(|v| (v - 0.5).abs() < 1e-3), "{k}: x̂0 {x0:?}");
        let s = values(&sb, &format!("{k}.safetensors"));
        assert!(s.iter().all(|v| *v < 1e-7), "{k}: scores {s:?}");
    }
}

#[test]
fn samples_between_the_modes_of_a_mixture_score_higher_than_samples_on_them() {
    // 1-D mixture of points at 1, 2, 3; 600 samples with 1000 DDPM steps, as in the paper; a
    // tempered denoiser (soft responsibilities) interpolates
    // between modes as a learned one does (Aithal et al. 2024). Samples that end between the
    // modes had a restless x̂0 over the last steps: their mean score is far above the others'.
    let sb = sandbox();
    let yaml = r#"
nodes:
  model: {type: test.mixture_denoiser, params: {means: "1,2,3", std: 0.0, temper: 0.3}}
  pos: {type: test.conditioning}
  empty: {type: core.empty_latent, params: {width: 8, height: 8, channels: 1, batch: 600}}
  s: {type: samplers.sample, inputs: {model: model, positive: pos, latent: empty}, params: {kind: ddpm, steps: 1000, cfg: 1.0, seed: 11, record_steps: true}}
  h: {type: samplers.hallucination_score, inputs: {x0: s.x0}, params: {last_k: 10}}
  w: {type: core.save_tensor, inputs: {tensor: h}, params: {filename: scores.safetensors}}
  x: {type: core.save_tensor, inputs: {tensor: s.latent}, params: {filename: samples.safetensors}}
"#;
    run_ok(&sb, "gmm.yaml", yaml);
    let scores = values(&sb, "scores.safetensors");
    let samples = values(&sb, "samples.safetensors");
    assert_eq!((scores.len(), samples.len()), (600, 600));
    let off_mode = |v: f32| {
        [1.0f32, 2.0, 3.0]
            .iter()
            .map(|m| (v - m).abs())
            .fold(f32::MAX, f32::min)
    };
    let (mut on, mut between) = (Vec::new(), Vec::new());
    for (s, x) in scores.iter().zip(&samples) {
        match off_mode(*x) {
            d if d < 0.15 => on.push(*s),
            d if d > 0.3 => between.push(*s),
            _ => {}
        }
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    eprintln!(
        "between modes: mean score {} (n={}); on modes: {} (n={})",
        mean(&between),
        between.len(),
        mean(&on),
        on.len()
    );
    assert!(
        on.len() > 100 && !between.is_empty(),
        "{} on modes, {} between",
        on.len(),
        between.len()
    );
    assert!(
        mean(&between) > 5.0 * mean(&on),
        "between {} (n={}) vs on modes {} (n={})",
        mean(&between),
        between.len(),
        mean(&on),
        on.len()
    );
}

#[test]
fn the_inpainting_blend_as_a_hook_equals_the_mask_input() {
    let sb = sandbox();
    let yaml = INPAINT.to_string()
        + r#"  blend: {type: samplers.inpaint_blend, inputs: {latent: known, mask: left}}
  by_mask: {type: samplers.sample, inputs: {model: model, positive: pos, latent: known, mask: left}, params: {kind: euler_a, steps: 8, cfg: 1.0, seed: 9}}
  by_hook: {type: samplers.sample, inputs: {model: model, positive: pos, latent: known, hooks: blend}, params: {kind: euler_a, steps: 8, cfg: 1.0, seed: 9}}
  w1: {type: core.save_tensor, inputs: {tensor: by_mask.latent}, params: {filename: mask.safetensors}}
  w2: {type: core.save_tensor, inputs: {tensor: by_hook.latent}, params: {filename: hook.safetensors}}
"#;
    run_ok(&sb, "hook.yaml", &yaml);
    assert_eq!(
        values(&sb, "mask.safetensors"),
        values(&sb, "hook.safetensors")
    );
}

#[test]
fn feeding_one_familys_conditioning_to_another_familys_model_is_refused_before_running() {
    let sb = sandbox();
    let model = latentflow_tests::workspace_root().join("tests/fixtures/tiny-sd");
    let yaml = format!(
        "nodes:\n  ckpt: {{type: sd.load_checkpoint, params: {{path: {}}}}}\n  cond: {{type: test.family_conditioning, params: {{dim: 32}}}}\n  e: {{type: core.empty_latent}}\n  s: {{type: samplers.sample, inputs: {{model: ckpt.model, positive: cond, latent: e}}}}\n",
        model.display()
    );
    sb.graph("validate", "families.yaml", &yaml, &[])
        .expect_code(3)
        .stderr_has("families.yaml:5:")
        .stderr_has("family=sd1")
        .stderr_has("family=sdxl");
}
