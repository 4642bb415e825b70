//! Support for the end-to-end tests: build the workspace once, then run the real `latentflow`
//! binary in throw-away folders with chosen plugins.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Builds every workspace member (plugins and fixtures included) once; returns the target folder.
pub fn target_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--quiet"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build --workspace failed");
        let base = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        base.join("debug")
    })
}

/// The `latentflow` binary.
pub fn bin() -> PathBuf {
    target_dir().join("latentflow")
}

pub use latentflow_testutil::files_with_ext;

/// A built library by crate lib name (`lf_fixture_testkit`, `latentflow_core`).
pub fn lib(name: &str) -> PathBuf {
    target_dir().join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// A graph in `graphs/`.
pub fn graph(name: &str) -> PathBuf {
    workspace_root().join("graphs").join(name)
}

/// A throw-away working folder with its own `plugins/`, output and plugin cache.
pub struct Sandbox {
    /// The folder (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    /// An empty sandbox.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins dir");
        Sandbox { dir }
    }

    /// A sandbox with these built libraries (crate lib names) installed as plugins.
    pub fn with_plugins(libs: &[&str]) -> Self {
        let sb = Sandbox::new();
        for l in libs {
            sb.add_plugin(l);
        }
        sb
    }

    /// The sandbox path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path under the sandbox's `output/`.
    pub fn output(&self, rel: &str) -> PathBuf {
        self.path().join("output").join(rel)
    }

    /// `latentflow validate` refuses the graph `yaml` (exit 3) with `needle` in its message.
    pub fn refuses(&self, yaml: &str, needle: &str) {
        self.graph("validate", "refused.yaml", yaml, &[])
            .expect_code(3)
            .stderr_has(needle);
    }

    /// Writes `yaml` as `name` and runs `latentflow <command> <file> <args…>`.
    pub fn graph(&self, command: &str, name: &str, yaml: &str, args: &[&str]) -> Run {
        let file = self.write(name, yaml);
        let file = file.to_string_lossy().into_owned();
        let mut all = vec![command, file.as_str()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Copies a built library into `plugins/` under `file_name` (atomically).
    pub fn add_plugin_as(&self, lib_name: &str, file_name: &str) -> PathBuf {
        let dst = self.path().join("plugins").join(file_name);
        let tmp = self.path().join(format!(".{file_name}.tmp"));
        std::fs::copy(lib(lib_name), &tmp).expect("copy plugin");
        std::fs::rename(&tmp, &dst).expect("rename plugin");
        dst
    }

    /// Copies a built library into `plugins/` under its own name.
    pub fn add_plugin(&self, lib_name: &str) -> PathBuf {
        let file = lib(lib_name)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.add_plugin_as(lib_name, &file)
    }

    /// Writes a file in the sandbox.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// A `latentflow` command running in the sandbox.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(self.path())
            .env("LATENTFLOW_CACHE_DIR", self.path().join(".plugin-cache"))
            .env_remove("LATENTFLOW_PLUGIN_PATH")
            .env_remove("RUST_BACKTRACE")
            // Model names resolve only in what the test sets up.
            .env_remove("LATENTFLOW_MODEL_PATHS")
            .env_remove("HF_HUB_CACHE")
            .env("HF_HOME", self.path().join("hf"));
        c
    }

    /// Runs `latentflow` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd(args).output().expect("latentflow runs");
        Run::from(out)
    }

    /// Starts `latentflow` with standard output collected line by line in the background.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("latentflow starts");
        let lines = collect_lines(child.stdout.take().expect("stdout"));
        let err_lines = collect_lines(child.stderr.take().expect("stderr"));
        Running {
            child,
            lines,
            err_lines,
        }
    }
}

/// The lines of `stream`, collected by a background thread as they come.
fn collect_lines(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

/// A finished command.
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with the output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics with the output unless standard error contains `needle`.
    pub fn stderr_has(&self, needle: &str) -> &Self {
        has("standard error", &self.stderr, needle);
        self
    }

    /// Panics with the output unless standard output contains `needle`.
    pub fn stdout_has(&self, needle: &str) -> &Self {
        has("standard output", &self.stdout, needle);
        self
    }

    /// The first event named `name` (panics when there is none).
    pub fn event(&self, name: &str) -> serde_json::Value {
        self.events()
            .into_iter()
            .find(|e| e["event"] == name)
            .unwrap_or_else(|| panic!("no `{name}` event in\n{}", self.stdout))
    }

    /// The JSON events printed with `--events json`.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn has(what: &str, text: &str, needle: &str) {
    assert!(text.contains(needle), "{what} lacks {needle:?}:\n{text}");
}

/// A running command.
pub struct Running {
    /// The process.
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    err_lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// JSON events printed so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Standard error so far.
    pub fn stderr(&self) -> String {
        self.err_lines.lock().expect("lines").join("\n")
    }

    /// Waits until `pred` holds for the events, or panics after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.events()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out waiting for {what}\n--- events\n{:#?}\n--- stderr\n{}",
            self.events(),
            self.stderr()
        );
    }

    /// Number of `run_finished` events so far.
    pub fn runs(&self) -> usize {
        count(&self.events(), "run_finished")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Number of events named `name`.
pub fn count(events: &[serde_json::Value], name: &str) -> usize {
    events.iter().filter(|e| e["event"] == name).count()
}

/// Reads the first tensor of a `.safetensors` file as f32 values with its shape.
pub fn read_safetensors_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("read safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("header length")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header json");
    let name = header
        .as_object()
        .expect("header object")
        .keys()
        .find(|k| *k != "__metadata__")
        .expect("a tensor")
        .clone();
    read_safetensors_tensor(path, &name)
}

/// The f32 tensor `name` of a `.safetensors` file: shape and values.
pub fn read_safetensors_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("read safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("header length")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header json");
    let info = &header[name];
    assert_eq!(info["dtype"], "F32", "{name} in {}", path.display());
    let shape: Vec<usize> = info["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().unwrap_or(0) as usize)
        .collect();
    let off = info["data_offsets"].as_array().expect("offsets");
    let (a, b) = (
        off[0].as_u64().unwrap_or(0) as usize,
        off[1].as_u64().unwrap_or(0) as usize,
    );
    let data = bytes[8 + n + a..8 + n + b]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, data)
}

/// max|a − b| / max|b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let max = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    diff / max
}

/// Builds `examples/<name>` out of tree (a copy in a temporary folder, path dependencies pointed
/// at this checkout, this workspace's lock file) and returns the built library.
pub fn build_example(name: &str, lib_file: &str) -> PathBuf {
    let root = workspace_root();
    let example = root.join("examples").join(name);
    let work = tempfile::tempdir().expect("tempdir");
    let crate_dir = work.path().join(name);
    std::fs::create_dir_all(crate_dir.join("src")).expect("mkdir");
    for entry in std::fs::read_dir(example.join("src")).expect("example src") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), crate_dir.join("src").join(entry.file_name())).expect("copy");
    }
    let manifest = std::fs::read_to_string(example.join("Cargo.toml"))
        .expect("example Cargo.toml")
        .replace("../../", &format!("{}/", root.display()));
    std::fs::write(crate_dir.join("Cargo.toml"), manifest).expect("write Cargo.toml");
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock")).expect("lockfile");
    let target = target_dir()
        .parent()
        .map(|p| p.join("out-of-tree"))
        .unwrap_or_default();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&crate_dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "examples/{name} must build out of tree");
    target.join("debug").join(lib_file)
}

/// A PNG's width, height and RGB(A) bytes with the channel count.
pub fn read_png(path: &Path) -> (usize, usize, usize, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png data");
    buf.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    (info.width as usize, info.height as usize, channels, buf)
}
