//! The `latentflow` command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use latentflow::exec::{EventSink, Executor, JsonLinesSink, RunOptions, RunStatus};
use latentflow::graph::{parse_set_value, validate_bytes, Overrides, Validated};
use latentflow::plugins::{Discovery, Refusal, Registry};
use latentflow::{bench, dot, foreign, isolate, models, provenance, schema, ui, watch};

// mimalloc: graph parsing and validation allocate many small objects. Plugins keep their own
// allocators; everything that crosses the ABI is released by the library that made it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes: distinct for invalid graphs, node failures, plugin problems and cancellation.
mod exit {
    pub const ERROR: u8 = 1;
    pub const INVALID_GRAPH: u8 = 3;
    pub const NODE_FAILED: u8 = 4;
    pub const PLUGIN: u8 = 5;
    pub const CANCELLED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "latentflow",
    version,
    about = "Run diffusion pipelines written as YAML graphs of plugin nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Extra plugin folder or library (repeatable); also searched: the executable's folder,
    /// ./plugins and LATENTFLOW_PLUGIN_PATH.
    #[arg(long = "plugins", global = true, value_name = "DIR")]
    plugins: Vec<PathBuf>,

    /// Show debug logs and full plugin loader reports.
    #[arg(short, long, global = true)]
    verbose: bool,

    /// Print only errors.
    #[arg(short, long, global = true)]
    quiet: bool,

    /// Emit machine-readable events on standard output.
    #[arg(long, global = true, value_enum)]
    events: Option<EventFormat>,

    /// Run every plugin in a worker process of its own, so that a crash inside a plugin fails
    /// its node instead of the host. A folder holding a `.latentflow-isolate` file isolates the
    /// plugins in it.
    #[arg(long, global = true)]
    isolate: bool,

    /// Run this plugin isolated (its file name without `lib` and extension; repeatable).
    #[arg(long = "isolate-plugin", global = true, value_name = "NAME")]
    isolate_plugin: Vec<String>,

    /// Memory limit of each plugin worker (`512M`, `4G`; default: 3/4 of physical memory).
    #[arg(long = "isolate-memory", global = true, value_name = "SIZE", value_parser = parse_size)]
    isolate_memory: Option<u64>,

    /// Model folders to find models in by name: a file in ComfyUI's `extra_model_paths.yaml`
    /// format (repeatable; also read: LATENTFLOW_MODEL_PATHS, `:`-separated).
    #[arg(long = "model-paths", global = true, value_name = "FILE")]
    model_paths: Vec<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    latentflow::limits::parse_size(s).ok_or_else(|| format!("`{s}` is not a size like 512M or 4G"))
}

#[derive(Clone, Copy, ValueEnum)]
enum EventFormat {
    /// Newline-delimited JSON, one event per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate and run a graph (a .yaml file, or a PNG written by core.save_image).
    Run(RunArgs),
    /// Run a graph, then re-run it whenever it or a plugin library changes.
    Watch(WatchArgs),
    /// Check a graph without running anything; reports every problem.
    Validate(GraphArgs),
    /// List the node types of the loaded plugins.
    Nodes {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a graph as Graphviz.
    Graph {
        #[command(flatten)]
        graph: GraphArgs,
        /// Graphviz `dot` output (the only format so far).
        #[arg(long, default_value_t = true)]
        dot: bool,
    },
    /// Print the JSON Schema of graph files (with the loaded node types).
    Schema,
    /// Measure validation, dispatch, plugin load and reload speed.
    Bench(bench::BenchArgs),
    /// Convert a ComfyUI workflow (UI or API format JSON, or a PNG ComfyUI wrote) into a graph.
    Import {
        /// The workflow.
        workflow: PathBuf,
        /// Write the graph here (default: standard output).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Serve an HTTP/WebSocket API (LatentFlow's and a ComfyUI-compatible subset) over a
    /// persistent job queue.
    Serve(ServeArgs),
    /// Take jobs from a NATS JetStream server (queued by `serve --nats`) and run them.
    Worker(WorkerArgs),
    /// List the compute devices: the CPU and the GPU adapters the device service can open.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the models found in the Hugging Face cache and the model folders.
    Models {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct GraphArgs {
    /// The graph file.
    graph: PathBuf,
    /// Override graph inputs: NAME=VALUE, repeatable, several after one `--set`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Run seed (default: the graph's `seed`, else 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Print diagnostics as JSON (validate).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    graph: GraphArgs,
    /// Print, per node, whether it ran or was cached and why.
    #[arg(long)]
    explain: bool,
    /// Folder for output files.
    #[arg(long, default_value = "output")]
    output_dir: PathBuf,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Cancel the remaining nodes as soon as one fails.
    #[arg(long)]
    fail_fast: bool,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on (anything but loopback needs --token).
    #[arg(long, default_value = "127.0.0.1:8188")]
    listen: std::net::SocketAddr,
    /// Bearer token every request must carry (also read from LATENTFLOW_TOKEN).
    #[arg(long, env = "LATENTFLOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Folder for the job queue (jobs.sqlite), uploads (input/) and outputs (output/).
    #[arg(long, default_value = "latentflow-data")]
    data_dir: PathBuf,
    /// Result cache budget across jobs, in MiB.
    #[arg(long, default_value_t = 4096)]
    cache_mib: usize,
    /// Finished jobs kept in history.
    #[arg(long, default_value_t = 1000)]
    history: usize,
    /// Largest request body (graphs, uploads), in MiB.
    #[arg(long, default_value_t = 64)]
    max_body_mib: usize,
    /// Worker threads per run (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// A graph file for the browser view to show and redraw whenever it is saved.
    #[arg(long, value_name = "FILE")]
    graph: Option<PathBuf>,
    /// Queue jobs on this NATS JetStream server for `latentflow worker`s instead of running
    /// them here (also read from LATENTFLOW_NATS).
    #[arg(long, value_name = "URL", env = "LATENTFLOW_NATS")]
    nats: Option<String>,
}

#[derive(Args, Clone)]
struct WorkerArgs {
    /// The NATS JetStream server (`nats://HOST:PORT`; also read from LATENTFLOW_NATS).
    #[arg(long, value_name = "URL", env = "LATENTFLOW_NATS")]
    nats: String,
    /// The pool whose jobs this worker takes (jobs go to a pool whose workers have the
    /// plugins they need, or the one asked for).
    #[arg(long, default_value = "default")]
    pool: String,
    /// This worker's id in heartbeats and job records (default: HOST-PID).
    #[arg(long)]
    id: Option<String>,
    /// Folder for uploads fetched from the farm (input/) and outputs (output/).
    #[arg(long, default_value = "latentflow-worker")]
    data_dir: PathBuf,
    /// Result cache budget across jobs, in MiB.
    #[arg(long, default_value_t = 4096)]
    cache_mib: usize,
    /// Worker threads per run (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds a job may go without a progress acknowledgement before it is redelivered
    /// (set when the pool's consumer is created).
    #[arg(long, default_value_t = 30.0)]
    ack_wait: f64,
    /// Deliveries of a job before it goes to the dead-letter stream (set when the pool's
    /// consumer is created).
    #[arg(long, default_value_t = 5)]
    max_deliver: i64,
}

#[derive(Args, Clone)]
struct WatchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Result cache budget in MiB.
    #[arg(long, default_value_t = 4096)]
    cache_mib: usize,
    /// Stop after this many runs.
    #[arg(long, hide = true)]
    exit_after: Option<usize>,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == isolate::WORKER_ARG) {
        init_tracing(false, false);
        return ExitCode::from(isolate::worker_main(&args[2..]));
    }
    let cli = Cli::parse_from(split_set_values(std::env::args_os()));
    init_tracing(cli.verbose, cli.quiet);
    match real_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Rewrites `--set A=1 B=2` as `--set A=1 --set B=2`. A run of values after `--set` ends at the
/// first word without `=`, so `run --set steps=4 graph.yaml` reads `graph.yaml` as the graph
/// (a greedy multi-value option would take it as a third value and report no graph).
fn split_set_values(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut in_set = false;
    let mut rest_positional = false;
    for arg in args {
        if rest_positional {
            out.push(arg);
            continue;
        }
        let text = arg.to_string_lossy();
        if text == "--" {
            rest_positional = true;
            in_set = false;
        } else if text == "--set" || text.starts_with("--set=") {
            in_set = true;
        } else if in_set && !text.starts_with('-') && text.contains('=') {
            if out.last().is_some_and(|last: &OsString| last != "--set") {
                out.push("--set".into());
            }
        } else if !(in_set && out.last().is_some_and(|last: &OsString| last == "--set")) {
            // The value right after `--set` is its own, with or without `=` (clap then reports
            // it); anything else ends the run.
            in_set = false;
        }
        out.push(arg);
    }
    out
}

fn init_tracing(verbose: bool, quiet: bool) {
    let default = if verbose {
        "debug"
    } else if quiet {
        "error"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATENTFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn real_main(cli: Cli) -> Result<u8> {
    if !cli.model_paths.is_empty() {
        let mut all = cli.model_paths.clone();
        if let Some(env) = std::env::var_os("LATENTFLOW_MODEL_PATHS") {
            all.extend(std::env::split_paths(&env));
        }
        let joined = std::env::join_paths(all).context("--model-paths")?;
        // Set before any thread starts and before the locations are first read.
        std::env::set_var("LATENTFLOW_MODEL_PATHS", joined);
    }
    if let Command::Models { json } = cli.command {
        return list_models(json);
    }
    if let Command::Devices { json } = cli.command {
        return list_devices(json);
    }
    let mut discovery = Discovery::standard(&cli.plugins);
    discovery.isolate = isolate::Policy {
        all: cli.isolate,
        names: cli.isolate_plugin.clone(),
        memory: cli.isolate_memory,
    };
    let (registry, refusals) = Registry::load(&discovery);
    let conflicts = report_refusals(&refusals, cli.verbose, cli.quiet);
    let events: Arc<dyn EventSink> = match (cli.events, cli.quiet) {
        (Some(EventFormat::Json), _) => Arc::new(JsonLinesSink),
        (None, true) => Arc::new(ui::Quiet),
        (None, false) => Arc::new(ui::Ui::new()),
    };
    match cli.command {
        Command::Nodes { json } => {
            print_nodes(&registry, json)?;
            Ok(0)
        }
        Command::Schema => {
            emit(&(serde_json::to_string_pretty(&schema::graph_schema(&registry))? + "\n"))?;
            Ok(0)
        }
        Command::Bench(args) => {
            bench::run(&args, &discovery)?;
            Ok(0)
        }
        Command::Models { .. } | Command::Devices { .. } => Ok(0),
        _ if conflicts => Ok(exit::PLUGIN),
        Command::Import {
            workflow,
            output,
            force,
        } => import(&workflow, output.as_deref(), force, &registry, cli.quiet),
        Command::Validate(args) => {
            let v = load_and_validate(&args, &registry)?;
            if args.json {
                emit(&(serde_json::to_string_pretty(&v.diagnostics)? + "\n"))?;
            } else {
                print_diagnostics(&v);
                if v.plan.is_some() && !cli.quiet {
                    eprintln!("{}: valid", args.graph.display());
                }
            }
            Ok(if v.plan.is_some() {
                0
            } else {
                exit::INVALID_GRAPH
            })
        }
        Command::Graph { graph, .. } => {
            let v = load_and_validate(&graph, &registry)?;
            print_diagnostics(&v);
            match v.plan {
                Some(plan) => {
                    emit(&dot::to_dot(&plan))?;
                    Ok(0)
                }
                None => Ok(exit::INVALID_GRAPH),
            }
        }
        Command::Run(args) => run(&args, &registry, events, cli.verbose),
        Command::Serve(args) => {
            let mut plugin_dirs = discovery.dirs.clone();
            plugin_dirs.extend(discovery.exe_dir.clone());
            let cfg = latentflow::serve::ServeConfig {
                listen: args.listen,
                token: args.token.filter(|t| !t.is_empty()),
                data_dir: args.data_dir,
                cache_bytes: args.cache_mib << 20,
                history_limit: args.history.max(1),
                max_body: args.max_body_mib.max(1) << 20,
                threads: args.threads,
                plugin_dirs,
                graph: args.graph,
                nats: args.nats.map(latentflow::farm::FarmConfig::new),
            };
            latentflow::serve::serve(cfg, registry)?;
            Ok(0)
        }
        Command::Worker(args) => {
            if !(args.ack_wait.is_finite() && args.ack_wait >= 1.0) {
                anyhow::bail!("--ack-wait: give at least 1 second");
            }
            if args.max_deliver < 1 {
                anyhow::bail!("--max-deliver: give at least 1");
            }
            let mut farm = latentflow::farm::FarmConfig::new(args.nats);
            farm.ack_wait = Duration::from_secs_f64(args.ack_wait);
            farm.max_deliver = args.max_deliver;
            let cfg = latentflow::farm::WorkerConfig {
                farm,
                pool: args.pool,
                id: args.id,
                data_dir: args.data_dir,
                cache_bytes: args.cache_mib << 20,
                threads: args.threads,
            };
            latentflow::farm::work(cfg, registry)?;
            Ok(0)
        }
        Command::Watch(args) => {
            let opts = run_options(&args.run, Arc::clone(&events))?;
            install_ctrlc(&opts.cancel);
            let cfg = watch::WatchConfig {
                graph: args.run.graph.graph.clone(),
                overrides: overrides(&args.run.graph)?,
                discovery,
                run: opts,
                cache_bytes: args.cache_mib << 20,
                exit_after: args.exit_after,
                settle: Duration::from_millis(60),
                explain: args.run.explain,
            };
            watch::watch(cfg, registry)?;
            Ok(0)
        }
    }
}

/// Prints refusals; returns whether any was a conflict (which makes runs ambiguous).
fn report_refusals(refusals: &[Refusal], verbose: bool, quiet: bool) -> bool {
    let mut conflict = false;
    for r in refusals {
        match r {
            Refusal::Conflict { .. } => {
                conflict = true;
                eprintln!("error: {r}");
            }
            Refusal::Load(e) => {
                if !quiet {
                    eprintln!("warning: {r}");
                }
                if verbose {
                    if let Some(d) = &e.detail {
                        eprintln!("{d}");
                    }
                }
            }
        }
    }
    conflict
}

fn overrides(args: &GraphArgs) -> Result<Overrides> {
    let mut set = Vec::new();
    for s in &args.set {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set {s}: expected NAME=VALUE");
        };
        set.push((k.trim().to_string(), parse_set_value(v)));
    }
    Ok(Overrides {
        set,
        seed: args.seed,
    })
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// The graph text of `path`: a graph file, a PNG (ours, ComfyUI's or A1111's), an animated
/// GIF, APNG or WebP of ours, or a ComfyUI workflow JSON.
fn read_graph(path: &Path, args: &GraphArgs) -> Result<Vec<u8>> {
    let model_set = args
        .set
        .iter()
        .any(|s| s.split_once('=').is_some_and(|(k, _)| k.trim() == "model"));
    if has_extension(path, "mp4") {
        anyhow::bail!(
            "{} is an MP4, which carries no graph (video.save embeds it in GIF, APNG and WebP files): run the graph file, or save a .webp",
            path.display()
        );
    }
    let converted = if has_extension(path, "png") || has_extension(path, "apng") {
        foreign::from_png(path, model_set).map_err(anyhow::Error::msg)?
    } else if has_extension(path, "gif") || has_extension(path, "webp") {
        foreign::Converted {
            text: provenance::graph_from_video(path).map_err(anyhow::Error::msg)?,
            notes: Vec::new(),
        }
    } else {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let comfy = has_extension(path, "json")
            && serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|j| latentflow_interop::comfy::is_workflow(&j));
        if !comfy {
            return Ok(bytes);
        }
        let text = String::from_utf8_lossy(&bytes);
        foreign::from_comfy(&text, path).map_err(anyhow::Error::msg)?
    };
    for n in &converted.notes {
        eprintln!("{n}");
    }
    Ok(converted.text.into_bytes())
}

fn load_and_validate(args: &GraphArgs, registry: &Registry) -> Result<Validated> {
    let bytes = read_graph(&args.graph, args)?;
    Ok(validate_bytes(
        &args.graph,
        &bytes,
        registry,
        &overrides(args)?,
    ))
}

fn print_diagnostics(v: &Validated) {
    for d in &v.diagnostics {
        eprintln!("{d}");
    }
    let errors = v.diagnostics.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        eprintln!(
            "{errors} error{} found; nothing was run",
            if errors == 1 { "" } else { "s" }
        );
    }
}

fn run_options(args: &RunArgs, events: Arc<dyn EventSink>) -> Result<RunOptions> {
    let mut opts = RunOptions::new(events);
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("cannot create output folder {}", args.output_dir.display()))?;
    opts.output_dir = args
        .output_dir
        .canonicalize()
        .unwrap_or_else(|_| args.output_dir.clone());
    if let Some(t) = args.threads {
        opts.threads = t.max(1);
    }
    opts.fail_fast = args.fail_fast;
    Ok(opts)
}

fn install_ctrlc(cancel: &Arc<AtomicBool>) {
    let flag = Arc::clone(cancel);
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            std::process::exit(exit::CANCELLED as i32);
        }
        eprintln!("cancelling… (press Ctrl-C again to quit at once)");
    });
}

fn run(
    args: &RunArgs,
    registry: &Registry,
    events: Arc<dyn EventSink>,
    verbose: bool,
) -> Result<u8> {
    let v = load_and_validate(&args.graph, registry)?;
    print_diagnostics(&v);
    let Some(plan) = v.plan else {
        return Ok(exit::INVALID_GRAPH);
    };
    let mut opts = run_options(args, events)?;
    opts.metadata = provenance::metadata(&plan, registry);
    install_ctrlc(&opts.cancel);
    let mut exec = Executor::new(None);
    let report = exec.run(&plan, &opts);
    if args.explain {
        eprint!("{}", latentflow::exec::explain(&report));
    }
    if verbose {
        for p in registry.plugins() {
            let s = p.stats();
            eprintln!(
                "plugin {} {}: {} bytes copied in, {} tensors exported without copy",
                p.name, p.version, s.bytes_copied_in, s.tensors_exported
            );
        }
    }
    Ok(match report.status {
        RunStatus::Ok => 0,
        RunStatus::Failed => exit::NODE_FAILED,
        RunStatus::Cancelled => exit::CANCELLED,
    })
}

fn import(
    workflow: &Path,
    output: Option<&Path>,
    force: bool,
    registry: &Registry,
    quiet: bool,
) -> Result<u8> {
    let converted = if has_extension(workflow, "png") {
        match provenance::embedded(workflow).map_err(anyhow::Error::msg)? {
            provenance::Embedded::ComfyPrompt(t) | provenance::Embedded::ComfyWorkflow(t) => {
                foreign::from_comfy(&t, workflow)
            }
            _ => bail!(
                "{} carries no ComfyUI workflow (no `prompt` or `workflow` text chunk)",
                workflow.display()
            ),
        }
    } else {
        let text = std::fs::read_to_string(workflow)
            .with_context(|| format!("cannot read {}", workflow.display()))?;
        foreign::from_comfy(&text, workflow)
    };
    let converted = match converted {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("nothing was written");
            return Ok(exit::INVALID_GRAPH);
        }
    };
    if !quiet {
        for n in &converted.notes {
            eprintln!("{n}");
        }
    }
    // Check the graph where it will live (relative paths resolve from there).
    let at = output.map(Path::to_path_buf).unwrap_or_else(|| {
        std::env::current_dir()
            .unwrap_or_default()
            .join("imported.yaml")
    });
    let v = validate_bytes(
        &at,
        converted.text.as_bytes(),
        registry,
        &Overrides::default(),
    );
    match output {
        Some(out) => {
            if out.exists() && !force {
                bail!("{} exists; pass --force to replace it", out.display());
            }
            let dir = out
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            std::io::Write::write_all(&mut tmp, converted.text.as_bytes())?;
            tmp.persist(out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if !quiet {
                eprintln!("wrote {}", out.display());
            }
        }
        None => emit(&converted.text)?,
    }
    if v.plan.is_none() {
        for d in &v.diagnostics {
            eprintln!("{d}");
        }
        eprintln!(
            "the graph was converted completely but does not validate here yet (above); set the missing models with --set or LATENTFLOW_MODEL_PATHS"
        );
        return Ok(exit::INVALID_GRAPH);
    }
    Ok(0)
}

fn list_devices(json: bool) -> Result<u8> {
    let devices = latentflow::devices::list();
    if json {
        emit(&(serde_json::to_string_pretty(&devices)? + "\n"))?;
        return Ok(0);
    }
    let mut text = String::new();
    for d in &devices {
        let mark = if d.selected { "*" } else { " " };
        text += &format!("{mark} {:<6} {}\n", d.name, d.detail);
    }
    if let Err(reason) = latentflow::devices::gpu() {
        text += &format!("  GPU device service unavailable: {reason}\n");
    }
    emit(&text)?;
    Ok(0)
}

fn list_models(json: bool) -> Result<u8> {
    let loc = models::locations().map_err(anyhow::Error::msg)?;
    let found = loc.list();
    let described: Vec<_> = found
        .iter()
        .map(|f| (f, latentflow_interop::locate::describe(&f.path)))
        .collect();
    if json {
        let rows: Vec<serde_json::Value> = described
            .iter()
            .map(|(f, d)| {
                let mut row = serde_json::json!({
                    "name": f.name,
                    "kind": f.kind,
                    "path": f.path,
                });
                match d {
                    Ok(info) => row["info"] = serde_json::to_value(info).unwrap_or_default(),
                    Err(e) => row["error"] = serde_json::Value::from(e.to_string()),
                }
                row
            })
            .collect();
        emit(&(serde_json::to_string_pretty(&rows)? + "\n"))?;
        return Ok(0);
    }
    if found.is_empty() {
        eprintln!(
            "no models found: the Hugging Face cache is {}; model folders come from --model-paths or LATENTFLOW_MODEL_PATHS (ComfyUI's extra_model_paths.yaml format)",
            loc.hf_cache
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_else(|| "not set".into())
        );
        return Ok(0);
    }
    let rows: Vec<[String; 6]> = described
        .iter()
        .map(|(f, d)| {
            let (family, size, dtype) = match d {
                Ok(i) => (i.family.clone(), human_size(i.bytes), i.dtype.clone()),
                Err(e) => (format!("unreadable: {e}"), String::new(), String::new()),
            };
            [
                f.name.clone(),
                f.kind.clone(),
                family,
                size,
                dtype,
                f.path.display().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "KIND", "FAMILY", "SIZE", "DTYPE", "PATH"].map(String::from);
    let mut width = [0usize; 5];
    for r in rows.iter().chain(std::iter::once(&header)) {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:<w4$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4]
        ));
    }
    emit(&out)?;
    Ok(0)
}

fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// Writes to standard output, treating a closed pipe (`| head`) as success.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_nodes(registry: &Registry, json: bool) -> Result<()> {
    use std::fmt::Write as _;
    if json {
        let list = latentflow::catalog::nodes_json(registry);
        return emit(&(serde_json::to_string_pretty(&list)? + "\n"));
    }
    let mut s = String::new();
    for t in registry.types() {
        let d = &t.desc;
        let _ = writeln!(
            s,
            "{}  ({} {}, v{})",
            d.type_id, t.plugin.name, t.plugin.version, d.version
        );
        if let Some(line) = d.doc.lines().next() {
            let _ = writeln!(s, "    {line}");
        }
        for p in d.inputs.iter() {
            let opt = if p.optional { " (optional)" } else { "" };
            let _ = writeln!(s, "    in   {:<14} {}{opt}  {}", p.name, p.ty, p.doc);
        }
        for p in d.outputs.iter() {
            let _ = writeln!(s, "    out  {:<14} {}  {}", p.name, p.ty, p.doc);
        }
        for p in d.params.iter() {
            let default = p
                .default
                .clone()
                .map(|d| format!(" = {d}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "    param {:<13} {}{default}  {}",
                p.name,
                p.kind.name(),
                p.doc
            );
        }
    }
    emit(&s)
}

#[cfg(test)]
mod tests {
    use super::split_set_values;
    use std::ffi::OsString;

    fn split(line: &str) -> Vec<String> {
        split_set_values(line.split(' ').map(OsString::from))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn several_values_after_one_set_become_separate_options() {
        assert_eq!(
            split("lf run g.yaml --set a=1 b=2 -q"),
            ["lf", "run", "g.yaml", "--set", "a=1", "--set", "b=2", "-q"]
        );
        assert_eq!(
            split("lf run --set a=1 b=x=y g.yaml --set c=3"),
            ["lf", "run", "--set", "a=1", "--set", "b=x=y", "g.yaml", "--set", "c=3"]
        );
        // A malformed value stays the option's, so clap or the override parser reports it.
        assert_eq!(
            split("lf run --set oops g.yaml"),
            ["lf", "run", "--set", "oops", "g.yaml"]
        );
        assert_eq!(
            split("lf run -- --set a=1"),
            ["lf", "run", "--", "--set", "a=1"]
        );
        assert_eq!(
            split("lf run --set=a=1 b=2 g.yaml"),
            ["lf", "run", "--set=a=1", "--set", "b=2", "g.yaml"]
        );
    }
}
