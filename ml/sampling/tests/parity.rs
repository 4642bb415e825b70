//! Parity with diffusers 0.42.1: every fixture in `tests/fixtures/schedulers` (written by
//! `tools/reference/make_scheduler_fixtures.py`) is replayed with the same fake model and the
//! same injected noise; timesteps, σ and the latent after every step must match.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use latentflow_sampling::schedulers::{Config, Flow, Kind, Prediction, Scheduler, Spacing};
use safetensors::SafeTensors;
use serde_json::Value as Json;

/// Kinds whose fixtures exist but whose Rust implementation has not landed yet.
const PENDING: &[&str] = &[];

fn fixtures() -> Vec<PathBuf> {
    latentflow_testutil::files_with_ext(
        &latentflow_testutil::fixtures().join("schedulers"),
        "safetensors",
    )
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).expect(name);
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f64s(st: &SafeTensors, name: &str) -> Vec<f64> {
    let t = st.tensor(name).expect(name);
    t.data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn tensor(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, v.len(), &Device::Cpu).expect("tensor")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec1::<f32>().expect("values")
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let max_ref = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64))
        / max_ref
}

fn fake_eps(x: &[f32], t: f64) -> Vec<f32> {
    let c = (0.1 * (t / 100.0).sin()) as f32;
    x.iter().map(|v| 0.9 * v + c).collect()
}

struct Case {
    kind: String,
    cfg: Config,
    steps: usize,
}

fn case(meta: &std::collections::HashMap<String, String>) -> Case {
    let cfg_json: Json = serde_json::from_str(&meta["config"]).expect("config");
    let step_kwargs: Json = serde_json::from_str(&meta["step_kwargs"]).expect("step kwargs");
    let kind_name = meta["kind"].clone();
    let eta = step_kwargs["eta"].as_f64().unwrap_or(0.0);
    let kind = Kind::parse(&kind_name, eta)
        .unwrap_or_else(|| panic!("fixture of unknown kind `{kind_name}`"));
    let mut cfg = Config::sd(kind);
    if cfg_json["prediction_type"] == "v_prediction" {
        cfg.prediction = Prediction::V;
    }
    cfg.spacing = cfg_json["timestep_spacing"]
        .as_str()
        .and_then(Spacing::parse);
    cfg.karras = cfg_json["use_karras_sigmas"].as_bool().unwrap_or(false);
    if cfg_json["prediction_type"] == "flow_prediction" || kind == Kind::FlowEuler {
        cfg.prediction = Prediction::Flow;
        cfg.flow = Some(Flow {
            shift: cfg_json["shift"]
                .as_f64()
                .or(cfg_json["flow_shift"].as_f64())
                .unwrap_or(1.0),
            mu: meta
                .get("mu")
                .filter(|m| !m.is_empty())
                .map(|m| m.parse().expect("mu")),
            uniform: meta.get("grid").map(String::as_str) == Some("flux"),
        });
    }
    Case {
        kind: kind_name,
        cfg,
        steps: meta["steps"].parse().expect("steps"),
    }
}

/// Whether diffusers drew noise at this step (Euler only with `s_churn` > 0, never here).
fn python_draws(kind: &str, step: usize, steps: usize, t: f64, eta: f64) -> bool {
    match kind {
        "euler_a" => true,
        "ddim" => eta > 0.0,
        "ddpm" => t > 0.0,
        "lcm" => step + 1 < steps,
        _ => false,
    }
}

#[test]
fn schedulers_match_diffusers_step_by_step() {
    let files = fixtures();
    assert!(
        files.len() >= 60,
        "expected the scheduler fixtures, found {}",
        files.len()
    );
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).expect("read fixture");
        let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("metadata");
        let meta = metadata.metadata().clone().expect("fixture metadata");
        if PENDING.contains(&meta["kind"].as_str()) {
            continue;
        }
        let st = SafeTensors::deserialize(&bytes).expect("fixture");
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let c = case(&meta);
        let eta = match c.cfg.kind {
            Kind::Ddim { eta } => eta,
            _ => 0.0,
        };
        let mut sched = Scheduler::new(c.cfg.clone(), c.steps).expect("scheduler");

        let ts = f64s(&st, "timesteps");
        if ts.len() != sched.timesteps().len()
            || ts
                .iter()
                .zip(sched.timesteps())
                .any(|(a, b)| (a - b).abs() > 1e-3)
        {
            failures.push(format!(
                "{name}: timesteps {:?} != reference {ts:?}",
                sched.timesteps()
            ));
            continue;
        }
        if st.tensor("sigmas").is_ok() {
            let sig = f64s(&st, "sigmas");
            if sched.sigmas().len() != sig.len()
                || sig
                    .iter()
                    .zip(sched.sigmas())
                    .any(|(a, b)| (a - b).abs() > 1e-5 * a.abs().max(1.0))
            {
                failures.push(format!(
                    "{name}: sigmas {:?} != reference {sig:?}",
                    sched.sigmas()
                ));
                continue;
            }
        }
        let init = f64s(&st, "init_noise_sigma")[0];
        if (init - sched.init_noise_sigma()).abs() > 1e-5 * init.max(1.0) {
            failures.push(format!(
                "{name}: init_noise_sigma {} != {init}",
                sched.init_noise_sigma()
            ));
            continue;
        }

        let n_el: usize = 24;
        let x_t = f32s(&st, "x_T");
        let latents = f32s(&st, "latents");
        let noise = st.tensor("noise").ok().map(|_| f32s(&st, "noise"));
        let mut x: Vec<f32> = x_t
            .iter()
            .map(|v| v * sched.init_noise_sigma() as f32)
            .collect();
        let mut drawn = 0usize;
        for step in 0..c.steps {
            let t = sched.timesteps()[step];
            let model_in = values(&sched.scale_model_input(&tensor(&x)).expect("scale"));
            let eps = fake_eps(&model_in, t);
            let z = if python_draws(&c.kind, step, c.steps, t, eta) {
                let all = noise.as_ref().expect("recorded noise");
                let z = all[drawn * n_el..(drawn + 1) * n_el].to_vec();
                drawn += 1;
                Some(z)
            } else {
                None
            };
            let z = z.as_deref().map(tensor);
            x = values(
                &sched
                    .step(&tensor(&eps), &tensor(&x), z.as_ref())
                    .expect("step"),
            );
            let reference = &latents[step * n_el..(step + 1) * n_el];
            let err = rel_err(&x, reference);
            if err > 1e-5 {
                failures.push(format!(
                    "{name}: step {step} (t={t}) relative error {err:.3e}"
                ));
                break;
            }
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    assert!(checked >= 97, "only {checked} cases checked");
}
