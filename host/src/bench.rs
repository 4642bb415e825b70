//! `latentflow bench`: validation, dispatch, plugin load and hot-reload timings on generated graphs.
//!
//! Uses the trivial `core.int` / `core.add_int` nodes of the core plugin so that the numbers
//! measure the runtime, not the nodes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::exec::{Event, EventSink, Executor, NullSink, RunOptions};
use crate::graph::{validate, Overrides};
use crate::plugins::{loader, Discovery, Registry};
use crate::watch;

/// Options of `latentflow bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Largest validation graph (nodes).
    #[arg(long, default_value_t = 100_000)]
    pub max_nodes: usize,
    /// Length of the dispatch chain.
    #[arg(long, default_value_t = 10_000)]
    pub chain: usize,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The core plugin is missing.
    #[error("the core plugin (liblatentflow_core) was not found next to the executable or on the plugin path")]
    NoCore,
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// A chain graph of `n` nodes: `core.int` followed by `n - 1` `core.add_int`.
pub fn chain_yaml(n: usize) -> String {
    let mut s = String::with_capacity(n * 64);
    s.push_str("version: 1\nnodes:\n  n0:\n    type: core.int\n    params: {value: 1}\n");
    for i in 1..n {
        let _ = writeln!(
            s,
            "  n{i}:\n    type: core.add_int\n    inputs: {{a: n{}.value}}\n    params: {{add: 1}}",
            i - 1
        );
    }
    s
}

/// The same chain as JSON (the fast path for machine-generated graphs).
pub fn chain_json(n: usize) -> String {
    let mut s = String::with_capacity(n * 80);
    s.push_str(
        "{\"version\": 1, \"nodes\": {\"n0\": {\"type\": \"core.int\", \"params\": {\"value\": 1}}",
    );
    for i in 1..n {
        let _ = write!(
            s,
            ", \"n{i}\": {{\"type\": \"core.add_int\", \"inputs\": {{\"a\": \"n{}.value\"}}, \"params\": {{\"add\": 1}}}}",
            i - 1
        );
    }
    s.push_str("}}");
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn core_path(discovery: &Discovery) -> Result<PathBuf, BenchError> {
    discovery
        .files()
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("latentflow_core"))
        })
        .ok_or(BenchError::NoCore)
}

/// Runs every measurement and prints a Markdown table.
pub fn run(args: &BenchArgs, discovery: &Discovery) -> Result<(), BenchError> {
    let core = core_path(discovery)?;
    let scratch = std::env::temp_dir().join(format!("latentflow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| BenchError::Other(e.to_string()))?;
    let plugin_dir = scratch.join("plugins");
    std::fs::create_dir_all(&plugin_dir).map_err(|e| BenchError::Other(e.to_string()))?;
    let cache_dir = scratch.join("cache");

    // Plugin load: each copy differs by trailing bytes, so every load is a real dlopen.
    let mut load_ms = Vec::new();
    for rep in 0..args.reps {
        let copy = plugin_dir.join(format!(
            "liblatentflow_core_bench{rep}{}",
            std::env::consts::DLL_SUFFIX
        ));
        unique_copy(&core, &copy, rep as u64)?;
        let t = Instant::now();
        loader::load(&copy, &cache_dir).map_err(|e| BenchError::Other(e.to_string()))?;
        load_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let _ = std::fs::remove_file(&copy);
    }

    let only_core = Discovery {
        dirs: vec![core.clone()],
        exe_dir: None,
        cache_dir: cache_dir.clone(),
        isolate: Default::default(),
    };
    let (registry, _) = Registry::load(&only_core);
    let file = scratch.join("chain.yaml");

    println!("| measurement | result |\n|---|---|");
    println!(
        "| plugin load (core, fresh dlopen, median of {}) | {:.2} ms |",
        args.reps,
        median(load_ms)
    );

    for (format, generate) in [
        ("YAML", chain_yaml as fn(usize) -> String),
        ("JSON", chain_json),
    ] {
        let mut n = 1000;
        while n <= args.max_nodes {
            let text = generate(n);
            let mut times = Vec::new();
            // The first run pays for fresh memory (page faults); report it apart from warm runs.
            for _ in 0..args.reps.clamp(2, 5) + 1 {
                let t = Instant::now();
                let v = validate(&file, &text, &registry, &Overrides::default());
                times.push(t.elapsed().as_secs_f64() * 1e3);
                if v.plan.is_none() {
                    return Err(BenchError::Other(format!(
                        "generated graph invalid: {:?}",
                        v.diagnostics.first()
                    )));
                }
            }
            let first = times.remove(0);
            println!(
                "| validate {n}-node chain, {format} (parse + check) | {:.1} ms warm, {first:.1} ms first run |",
                median(times)
            );
            n *= 10;
        }
    }

    let yaml = chain_yaml(args.chain);
    let plan = validate(&file, &yaml, &registry, &Overrides::default())
        .plan
        .ok_or_else(|| BenchError::Other("chain graph invalid".into()))?;
    let mut opts = RunOptions::new(Arc::new(NullSink));
    opts.output_dir = scratch.clone();
    let mut cold = Vec::new();
    let mut cached = Vec::new();
    let mut nocache = Vec::new();
    for _ in 0..args.reps {
        let mut exec = Executor::new(Some(1 << 30));
        let r = exec.run(&plan, &opts);
        cold.push(r.ms * 1e3 / args.chain as f64);
        let r = exec.run(&plan, &opts);
        cached.push(r.ms * 1e3 / args.chain as f64);
        let mut plain = Executor::new(None);
        let r = plain.run(&plan, &opts);
        nocache.push(r.ms * 1e3 / args.chain as f64);
    }
    println!(
        "| dispatch per node, {}-node chain, cold (cache on) | {:.2} µs |",
        args.chain,
        median(cold)
    );
    println!(
        "| dispatch per node, {}-node chain, fully cached | {:.2} µs |",
        args.chain,
        median(cached)
    );
    println!(
        "| dispatch per node, {}-node chain, no cache (`latentflow run`) | {:.2} µs |",
        args.chain,
        median(nocache)
    );

    isolation_costs(&core, &scratch, args.reps)?;

    let reload = reload_latency(&core, &scratch, args.reps)?;
    println!(
        "| hot reload: library settled → re-run finished (median of {}) | {:.1} ms |",
        args.reps, reload
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// A latent of `mib` MiB (f32, 4 channels) scaled by `hops` nodes in a row: each hop moves it
/// out of the plugin and into the next node.
fn tensor_chain_yaml(mib: usize, hops: usize) -> String {
    // 4 channels × (side/8)² × 4 bytes = mib MiB.
    let side = ((mib << 20) as f64 / 16.0).sqrt() as usize * 8;
    let mut s = format!(
        "version: 1\nnodes:\n  t0:\n    type: core.empty_latent\n    params: {{width: {side}, height: {side}, channels: 4}}\n"
    );
    for i in 1..=hops {
        let _ = writeln!(
            s,
            "  t{i}:\n    type: core.latent_scale\n    inputs: {{latent: t{}}}\n    params: {{scale: 2.0}}",
            i - 1
        );
    }
    s
}

/// The cost of `--isolate`: per node call, and per MiB of tensor moved, against in-process.
fn isolation_costs(core: &Path, scratch: &Path, reps: usize) -> Result<(), BenchError> {
    let cache_dir = scratch.join("cache");
    let registry = |isolate: bool| {
        let discovery = Discovery {
            dirs: vec![core.to_path_buf()],
            exe_dir: None,
            cache_dir: cache_dir.clone(),
            isolate: crate::isolate::Policy {
                all: isolate,
                ..Default::default()
            },
        };
        Registry::load(&discovery).0
    };
    let (plain, isolated) = (registry(false), registry(true));
    if isolated
        .plugins()
        .first()
        .and_then(|p| p.isolated())
        .is_none()
    {
        return Err(BenchError::Other(
            "could not start an isolated core plugin".into(),
        ));
    }
    let file = scratch.join("isolation.yaml");
    let mut opts = RunOptions::new(Arc::new(NullSink));
    opts.output_dir = scratch.to_path_buf();
    let time = |registry: &Registry, yaml: &str| -> Result<f64, BenchError> {
        let plan = validate(&file, yaml, registry, &Overrides::default())
            .plan
            .ok_or_else(|| BenchError::Other("isolation graph invalid".into()))?;
        let mut times = Vec::new();
        for _ in 0..reps.max(3) {
            let mut exec = Executor::new(None);
            let r = exec.run(&plan, &opts);
            if r.counts().2 > 0 {
                return Err(BenchError::Other("isolation graph failed".into()));
            }
            times.push(r.ms);
        }
        Ok(median(times))
    };
    let n = 1000;
    let chain = chain_yaml(n);
    let (a, b) = (time(&plain, &chain)?, time(&isolated, &chain)?);
    println!(
        "| node call, {n}-node chain: in-process / isolated | {:.1} µs / {:.1} µs (+{:.1} µs per call) |",
        a * 1e3 / n as f64,
        b * 1e3 / n as f64,
        (b - a) * 1e3 / n as f64
    );
    for mib in [16, 64] {
        let hops = 4;
        let yaml = tensor_chain_yaml(mib, hops);
        let (a, b) = (time(&plain, &yaml)?, time(&isolated, &yaml)?);
        let moved = (mib * (hops + 1)) as f64;
        println!(
            "| {mib} MiB latent through {hops} nodes: in-process / isolated | {a:.1} ms / {b:.1} ms (+{:.2} ms per MiB moved) |",
            (b - a) / moved
        );
    }
    Ok(())
}

fn unique_copy(src: &Path, dst: &Path, salt: u64) -> Result<(), BenchError> {
    let mut bytes = std::fs::read(src).map_err(|e| BenchError::Other(e.to_string()))?;
    // Trailing bytes after the ELF image change the content hash without changing the code.
    bytes.extend_from_slice(&salt.to_le_bytes());
    bytes.extend_from_slice(&(std::process::id() as u64).to_le_bytes());
    bytes.extend_from_slice(&Instant::now().elapsed().as_nanos().to_le_bytes());
    let tmp = dst.with_extension("tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|_| std::fs::rename(&tmp, dst))
        .map_err(|e| BenchError::Other(e.to_string()))
}

struct Timestamps(Mutex<Vec<Instant>>);

impl EventSink for Timestamps {
    fn emit(&self, e: &Event) {
        if let Event::RunFinished { .. } = e {
            if let Ok(mut v) = self.0.lock() {
                v.push(Instant::now());
            }
        }
    }
    fn wants_detail(&self) -> bool {
        false
    }
}

fn reload_latency(core: &Path, scratch: &Path, reps: usize) -> Result<f64, BenchError> {
    let dir = scratch.join("watched");
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::Other(e.to_string()))?;
    let lib = dir.join(format!(
        "liblatentflow_core{}",
        std::env::consts::DLL_SUFFIX
    ));
    unique_copy(core, &lib, 1000)?;
    let graph = dir.join("g.yaml");
    std::fs::write(&graph, chain_yaml(10)).map_err(|e| BenchError::Other(e.to_string()))?;
    let discovery = Discovery {
        dirs: vec![dir.clone()],
        exe_dir: None,
        cache_dir: scratch.join("cache"),
        isolate: Default::default(),
    };
    let (registry, _) = Registry::load(&discovery);
    let stamps = Arc::new(Timestamps(Mutex::new(Vec::new())));
    let cancel = Arc::new(AtomicBool::new(false));
    let mut run = RunOptions::new(stamps.clone());
    run.cancel = Arc::clone(&cancel);
    run.output_dir = scratch.to_path_buf();
    let cfg = watch::WatchConfig {
        graph,
        overrides: Overrides::default(),
        discovery,
        run,
        cache_bytes: 1 << 30,
        exit_after: Some(reps + 1),
        settle: Duration::from_millis(60),
        explain: false,
    };
    let handle = std::thread::spawn(move || watch::watch(cfg, registry));
    let wait_runs = |k: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if stamps.0.lock().map(|v| v.len() >= k).unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    };
    if !wait_runs(1) {
        cancel.store(true, Ordering::Relaxed);
        return Err(BenchError::Other("watch did not start".into()));
    }
    // Give the watcher time to arm before the first change.
    std::thread::sleep(Duration::from_millis(200));
    let mut lat = Vec::new();
    for rep in 0..reps {
        unique_copy(core, &lib, 2000 + rep as u64)?;
        let settled = Instant::now();
        if !wait_runs(rep + 2) {
            cancel.store(true, Ordering::Relaxed);
            return Err(BenchError::Other("reload did not trigger a re-run".into()));
        }
        let finished = stamps.0.lock().map(|v| v[rep + 1]).unwrap_or(settled);
        lat.push(finished.duration_since(settled).as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(100));
    }
    cancel.store(true, Ordering::Relaxed);
    let _ = handle.join();
    Ok(median(lat))
}
