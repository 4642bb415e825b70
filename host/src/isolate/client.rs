//! The host's side: one worker process per isolated plugin, started again after a crash.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use latentflow_plugin_api::abi_stable::sabi_trait::TD_Opaque;
use latentflow_plugin_api::abi_stable::std_types::{RResult, RStr, RString, RVec};
use latentflow_plugin_api::abi_value::{from_abi_vec, to_abi_vec, AbiValue};
use latentflow_plugin_api::{
    HostRef, HostServices, HostServices_TO, LogLevel, Node, NodeBox, NodeError, Node_TO,
    PluginStats, Value,
};

use super::conn::{send_frame, Conn};
use super::peer::{decode, facts, holds_dead_objects, Peer, Side};
use super::session::{self, Broken, Serve};
use super::wire::{Facts, Flat, Request, WireError};
use super::WORKER_ARG;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A plugin whose library runs in a worker process.
pub struct Isolated {
    library: PathBuf,
    shown: PathBuf,
    memory: Option<u64>,
    current: Mutex<Option<Arc<Process>>>,
    starts: AtomicU64,
    /// Node runs share the worker; a run retried after a crash has it alone.
    solo: RwLock<()>,
}

impl std::fmt::Debug for Isolated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Isolated")
            .field("library", &self.shown)
            .field("starts", &self.starts.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Isolated {
    /// Starts a worker for the library at `library` (a private copy; `shown` is the path users
    /// know), limited to `memory` bytes of data segment.
    pub fn start(library: &Path, shown: &Path, memory: Option<u64>) -> Result<Arc<Self>, String> {
        super::raise_file_limit();
        let me = Arc::new(Isolated {
            library: library.to_path_buf(),
            shown: shown.to_path_buf(),
            memory,
            current: Mutex::new(None),
            starts: AtomicU64::new(0),
            solo: RwLock::new(()),
        });
        me.process()?;
        Ok(me)
    }

    /// The live worker, started now if there is none or the last one died.
    fn process(&self) -> Result<Arc<Process>, String> {
        let mut current = lock(&self.current);
        if let Some(p) = current.as_ref().filter(|p| p.peer.is_alive()) {
            return Ok(Arc::clone(p));
        }
        let p = Process::spawn(&self.library, &self.shown, self.memory)?;
        self.starts.fetch_add(1, Ordering::Relaxed);
        *current = Some(Arc::clone(&p));
        Ok(p)
    }

    fn ask(&self, req: Request) -> Result<Vec<Flat>, NodeError> {
        let p = self.process().map_err(NodeError::failed)?;
        let (values, _fds) = p.request(None, req, Vec::new())?;
        Ok(values)
    }

    fn ask_text(&self, req: Request) -> Result<String, NodeError> {
        match self.ask(req)?.into_iter().next() {
            Some(Flat::Str(s)) => Ok(s),
            _ => Err(NodeError::failed(
                "the plugin's worker gave an unreadable answer",
            )),
        }
    }

    /// The plugin's manifest JSON.
    pub fn manifest(&self) -> Result<String, NodeError> {
        self.ask_text(Request::Manifest)
    }

    /// Output types refined from parameters, as JSON.
    pub fn infer(&self, type_id: &str, params: &str) -> Result<String, NodeError> {
        self.ask_text(Request::Infer {
            type_id: type_id.into(),
            params: params.into(),
        })
    }

    /// The plugin's tensor counters (zeros when the worker cannot tell).
    pub fn stats(&self) -> PluginStats {
        let zero = PluginStats {
            bytes_copied_in: 0,
            tensors_exported: 0,
            tensors_reused: 0,
        };
        match self.ask(Request::Stats).as_deref() {
            Ok([Flat::Int(a), Flat::Int(b), Flat::Int(c)]) => PluginStats {
                bytes_copied_in: *a as u64,
                tensors_exported: *b as u64,
                tensors_reused: *c as u64,
            },
            _ => zero,
        }
    }

    /// A node instance in the worker, made there on its first run (and made again in a new
    /// worker after a crash).
    pub fn create_node(
        self: &Arc<Self>,
        type_id: &str,
        params: &str,
    ) -> Result<NodeBox, NodeError> {
        Ok(Node_TO::from_value(
            RemoteNode {
                plugin: Arc::clone(self),
                type_id: type_id.into(),
                params: params.into(),
                made: Mutex::new(None),
            },
            TD_Opaque,
        ))
    }

    fn make(&self, type_id: &str, params: &str) -> Result<(Arc<Process>, u64), Failure> {
        let p = self
            .process()
            .map_err(|m| Failure::Error(NodeError::failed(m)))?;
        let req = Request::CreateNode {
            type_id: type_id.into(),
            params: params.into(),
        };
        let (values, _) = p
            .send_request(None, req, Vec::new())
            .map_err(|(e, ticket)| p.failure(e, ticket))?;
        match values.as_slice() {
            [Flat::Int(id)] => Ok((p, *id as u64)),
            _ => Err(Failure::Error(NodeError::failed(
                "the plugin's worker gave an unreadable answer",
            ))),
        }
    }
}

/// One worker process.
struct Process {
    me: Weak<Process>,
    /// The memory limit, and what the worker held when the watchdog stopped it (0: it did not).
    memory: Option<u64>,
    over: Arc<AtomicU64>,
    shown: PathBuf,
    child: Mutex<Child>,
    control: Mutex<UnixStream>,
    pool: Mutex<Vec<Conn>>,
    peer: Peer,
    output: Arc<Mutex<VecDeque<String>>>,
    output_done: Mutex<Option<mpsc::Receiver<()>>>,
    crash: Mutex<Option<String>>,
    /// Requests under way, and how many were when the worker crashed.
    in_flight: AtomicUsize,
    in_flight_at_crash: AtomicUsize,
    /// Requests started, and how many had when the worker crashed.
    tickets: AtomicU64,
    tickets_at_crash: AtomicU64,
}

/// Lines of worker output kept for the crash message.
const TAIL: usize = 8;

impl Process {
    fn spawn(library: &Path, shown: &Path, memory: Option<u64>) -> Result<Arc<Process>, String> {
        let exe = match std::env::var_os("LATENTFLOW_WORKER_EXE") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find the latentflow binary to start a worker: {e}"))?,
        };
        let fail =
            |e: std::io::Error| format!("cannot start a worker for {}: {e}", shown.display());
        let (control, theirs) = UnixStream::pair().map_err(fail)?;
        let (reader, writer) = std::io::pipe().map_err(fail)?;
        let mut cmd = Command::new(exe);
        cmd.arg(WORKER_ARG).arg(library);
        cmd.stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(writer.try_clone().map_err(fail)?)
            .stderr(writer);
        let child = spawn_from_a_lasting_thread(cmd).map_err(fail)?;

        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (done_tx, done_rx) = mpsc::channel();
        let sink = Arc::clone(&output);
        let name = shown
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                tracing::debug!(target: "worker", plugin = %name, "{line}");
                let mut tail = lock(&sink);
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            let _ = done_tx.send(());
        });
        let over = Arc::new(AtomicU64::new(0));
        if let Some(limit) = memory {
            watch_memory(child.id(), limit, Arc::clone(&over));
        }
        Ok(Arc::new_cyclic(|me| Process {
            memory,
            over,
            me: me.clone(),
            shown: shown.to_path_buf(),
            child: Mutex::new(child),
            control: Mutex::new(control),
            pool: Mutex::new(Vec::new()),
            peer: Peer::default(),
            output,
            output_done: Mutex::new(Some(done_rx)),
            crash: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            in_flight_at_crash: AtomicUsize::new(0),
            tickets: AtomicU64::new(0),
            tickets_at_crash: AtomicU64::new(0),
        }))
    }

    fn arc(&self) -> Option<Arc<dyn Side>> {
        self.me.upgrade().map(|p| p as Arc<dyn Side>)
    }

    /// A connection for one conversation: an idle one, or a new one handed to the worker.
    fn connection(&self) -> Result<Conn, std::io::Error> {
        if let Some(c) = lock(&self.pool).pop() {
            return Ok(c);
        }
        let (mine, theirs) = Conn::pair()?;
        send_frame(&lock(&self.control), b"", &[OwnedFd::from(theirs)])?;
        Ok(mine)
    }

    /// The crash message, waiting briefly for the worker to finish dying.
    fn crashed(&self, why: &Broken) -> NodeError {
        let mut crash = lock(&self.crash);
        if crash.is_none() {
            self.in_flight_at_crash
                .store(self.in_flight.load(Ordering::Acquire), Ordering::Release);
            self.tickets_at_crash
                .store(self.tickets.load(Ordering::Acquire), Ordering::Release);
            self.peer.mark_dead();
            let status = self.reap(why);
            if let Some(rx) = lock(&self.output_done).take() {
                let _ = rx.recv_timeout(Duration::from_secs(1));
            }
            let last = lock(&self.output)
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| {
                    let l: String = l.trim().chars().take(300).collect();
                    format!("; its last output: {l}")
                })
                .unwrap_or_default();
            *crash = Some(format!(
                "the isolated plugin {} crashed: its worker {status}{last}; the next run starts a new worker",
                self.shown.display()
            ));
        }
        NodeError::failed(crash.clone().unwrap_or_default())
    }

    /// Waits up to two seconds for the worker to exit (killing it otherwise) and says how it
    /// ended.
    fn reap(&self, why: &Broken) -> String {
        let mut child = lock(&self.child);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let held = self.over.load(Ordering::Acquire);
                    if held > 0 {
                        return format!(
                            "went over its memory limit of {} (it held {}) and was stopped",
                            mib(self.memory.unwrap_or(0)),
                            mib(held)
                        );
                    }
                    return describe_exit(status);
                }
                Ok(None) if Instant::now() < deadline && matches!(why, Broken::Io(_)) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return format!("broke the protocol and was stopped ({why})");
                }
            }
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `cmd` from a thread that lives as long as the process. The worker asks the kernel to
/// kill it when its parent goes, and "parent" means the thread that started it: a worker
/// started from an executor thread would die with that thread. The command (holding our copies
/// of the child's ends of its pipes) is dropped once the child runs, so its output can end.
fn spawn_from_a_lasting_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: std::sync::OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("latentflow-worker-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .ok();
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    lock(spawner)
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the worker spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the worker spawner thread is gone"))?
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// Kills worker `pid` when its resident memory goes over `limit`, noting what it held in `over`.
/// Polls every 10 ms, so a fast allocation can overshoot by what it touches in that time.
fn watch_memory(pid: u32, limit: u64, over: Arc<AtomicU64>) {
    let statm = PathBuf::from(format!("/proc/{pid}/statm"));
    let page = rustix::param::page_size() as u64;
    // Signal through a pidfd, so that a recycled pid is never hit.
    let Some(target) = rustix::process::Pid::from_raw(pid as i32)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
    else {
        tracing::warn!("cannot watch the memory of plugin worker {pid}");
        return;
    };
    std::thread::spawn(move || loop {
        let Ok(text) = std::fs::read_to_string(&statm) else {
            return; // Gone.
        };
        let resident = text
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_mul(page);
        if resident == 0 {
            return; // A zombie: it has exited.
        }
        if resident > limit {
            over.store(resident, Ordering::Release);
            let _ = rustix::process::pidfd_send_signal(&target, rustix::process::Signal::KILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    });
}

/// `was killed by SIGSEGV (segmentation fault)`, `exited with status 3`.
fn describe_exit(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let (name, what) = match sig {
            4 => ("SIGILL", "illegal instruction"),
            6 => ("SIGABRT", "aborted"),
            7 => ("SIGBUS", "bus error"),
            8 => ("SIGFPE", "arithmetic exception"),
            9 => ("SIGKILL", "killed, often by the out-of-memory killer"),
            11 => ("SIGSEGV", "segmentation fault"),
            15 => ("SIGTERM", "terminated"),
            _ => ("a signal", "signal"),
        };
        if name == "a signal" {
            return format!("was killed by signal {sig}");
        }
        return format!("was killed by {name} ({what})");
    }
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => "ended".into(),
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let mut child = lock(&self.child);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Side for Process {
    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn request(
        &self,
        host: Option<&HostRef<'_>>,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(Vec<Flat>, Vec<OwnedFd>), NodeError> {
        self.send_request(host, req, fds).map_err(|(e, _)| e)
    }
}

impl Process {
    /// What an error of a request means: a crash this request may not have caused (another
    /// request was under way, or this one started after the worker died), a crash it caused, or
    /// the node's own error.
    fn failure(&self, error: NodeError, ticket: u64) -> Failure {
        if self.peer.is_alive() {
            return Failure::Error(error);
        }
        let shared = ticket > self.tickets_at_crash.load(Ordering::Acquire)
            || self.in_flight_at_crash.load(Ordering::Acquire) > 1;
        Failure::Crashed { shared, error }
    }

    /// [`Side::request`], also giving, on failure, the request's ticket for [`Self::failure`].
    fn send_request(
        &self,
        host: Option<&HostRef<'_>>,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(Vec<Flat>, Vec<OwnedFd>), (NodeError, u64)> {
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let result = self.send_counted(host, req, fds);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        result.map_err(|e| (e, ticket))
    }

    fn send_counted(
        &self,
        host: Option<&HostRef<'_>>,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(Vec<Flat>, Vec<OwnedFd>), NodeError> {
        if !self.peer.is_alive() {
            return Err(self.crashed(&Broken::Protocol("gone".into())));
        }
        let conn = self
            .connection()
            .map_err(|e| self.crashed(&Broken::Io(e)))?;
        match session::call(&conn, &self.peer, self, host, req, fds) {
            Ok(answer) => {
                lock(&self.pool).push(conn);
                answer.map_err(NodeError::from)
            }
            Err(broken) => Err(self.crashed(&broken)),
        }
    }
}

impl Serve for Process {
    fn serve(
        &self,
        _conn: &Conn,
        host: Option<&HostRef<'_>>,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> (Result<Vec<Flat>, WireError>, Vec<OwnedFd>) {
        let mut out = Vec::new();
        let reply = match req {
            Request::CallObject {
                object,
                facts,
                method,
                args,
            } => self.call_object(host, object, facts, &method, args, fds, &mut out),
            Request::Progress {
                done,
                total,
                message,
            } => Ok(vec![Flat::Bool(host.is_some_and(|h| {
                h.progress(done, total, message.as_str().into())
            }))]),
            Request::IsCancelled => Ok(vec![Flat::Bool(host.is_some_and(|h| h.is_cancelled()))]),
            Request::RunMetadata => Ok(vec![Flat::Str(
                host.map(|h| h.run_metadata().into())
                    .unwrap_or_else(|| "{}".into()),
            )]),
            other => Err(NodeError::invalid(format!(
                "a worker asked the host for {other:?}, which only a worker answers"
            ))),
        };
        (reply.map_err(WireError::from), out)
    }
}

impl Process {
    #[allow(clippy::too_many_arguments)]
    fn call_object(
        &self,
        host: Option<&HostRef<'_>>,
        object: u64,
        facts: Facts,
        method: &str,
        args: Vec<Flat>,
        fds: Vec<OwnedFd>,
        out: &mut Vec<OwnedFd>,
    ) -> Result<Vec<Flat>, NodeError> {
        let side = self
            .arc()
            .ok_or_else(|| NodeError::failed("the worker is gone"))?;
        let handle = self.peer.object(object).ok_or_else(|| {
            NodeError::invalid(format!("the worker called an unknown object {object}"))
        })?;
        let args = decode(&side, args, fds)?;
        let detached = Detached { facts };
        let values = match host {
            Some(h) => handle.call(HostServices_TO::from_ptr(h, TD_Opaque), method, args)?,
            None => handle.call(
                HostServices_TO::from_ptr(&detached, TD_Opaque),
                method,
                args,
            )?,
        };
        self.peer.encode(&values, out)
    }
}

/// Host services for an object call that is not nested in a node call.
struct Detached {
    facts: Facts,
}

impl HostServices for Detached {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let msg = message.as_str();
        match level {
            LogLevel::Error => tracing::error!(target: "plugin", "{msg}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", "{msg}"),
            _ => tracing::debug!(target: "plugin", "{msg}"),
        }
    }
    fn progress(&self, _done: u64, _total: u64, _message: RStr<'_>) -> bool {
        false
    }
    fn is_cancelled(&self) -> bool {
        false
    }
    fn seed(&self) -> u64 {
        self.facts.seed
    }
    fn node_id(&self) -> RString {
        self.facts.node_id.as_str().into()
    }
    fn run_metadata(&self) -> RString {
        "{}".into()
    }
    fn output_dir(&self) -> RString {
        self.facts.output_dir.as_str().into()
    }
    fn alloc_limit(&self) -> u64 {
        self.facts.alloc_limit
    }

    fn gpu(&self) -> crate::devices::GpuResult {
        crate::devices::gpu_unavailable_isolated()
    }
}

/// A node instance living in a worker.
struct RemoteNode {
    plugin: Arc<Isolated>,
    type_id: String,
    params: String,
    made: Mutex<Option<(Arc<Process>, u64)>>,
}

impl RemoteNode {
    /// The instance in the live worker, made again if the worker it was made in died.
    fn instance(&self) -> Result<(Arc<Process>, u64), Failure> {
        let mut made = lock(&self.made);
        if let Some((p, id)) = made.as_ref() {
            if p.peer.is_alive() {
                return Ok((Arc::clone(p), *id));
            }
        }
        let fresh = self.plugin.make(&self.type_id, &self.params)?;
        *made = Some((Arc::clone(&fresh.0), fresh.1));
        Ok(fresh)
    }

    fn run_remote(
        &self,
        host: HostRef<'_>,
        inputs: RVec<AbiValue>,
    ) -> Result<RVec<AbiValue>, NodeError> {
        let inputs = from_abi_vec(inputs)?;
        let first = {
            let _shared = self.plugin.solo.read().unwrap_or_else(|e| e.into_inner());
            self.attempt(&host, &inputs)
        };
        let values = match first {
            // The worker crashed while it ran other calls too: this one may be innocent. Run it
            // again in a fresh worker, alone, unless its inputs died with the old worker.
            Err(Failure::Crashed { shared: true, .. }) if !holds_dead_objects(&inputs) => {
                tracing::debug!(node = %host.node_id(), "retrying alone after a worker crash");
                let _alone = self.plugin.solo.write().unwrap_or_else(|e| e.into_inner());
                self.attempt(&host, &inputs).map_err(Failure::into_error)?
            }
            other => other.map_err(Failure::into_error)?,
        };
        Ok(to_abi_vec(values))
    }

    fn attempt(&self, host: &HostRef<'_>, inputs: &[Value]) -> Result<Vec<Value>, Failure> {
        let (p, id) = self.instance()?;
        let side = p
            .arc()
            .ok_or_else(|| Failure::Error(NodeError::failed("the worker is gone")))?;
        let mut fds = Vec::new();
        let flat = p.peer.encode(inputs, &mut fds).map_err(Failure::Error)?;
        let req = Request::RunNode {
            node: id,
            facts: facts(host),
            inputs: flat,
        };
        let (out, fds) = p
            .send_request(Some(host), req, fds)
            .map_err(|(e, ticket)| p.failure(e, ticket))?;
        decode(&side, out, fds).map_err(Failure::Error)
    }
}

/// How a node run in a worker failed.
enum Failure {
    /// The worker crashed; `shared` when other calls were under way in it.
    Crashed { shared: bool, error: NodeError },
    /// The node reported an error.
    Error(NodeError),
}

impl Failure {
    fn into_error(self) -> NodeError {
        match self {
            Failure::Crashed { error, .. } | Failure::Error(error) => error,
        }
    }
}

impl Node for RemoteNode {
    fn run(&self, host: HostRef<'_>, inputs: RVec<AbiValue>) -> RResult<RVec<AbiValue>, NodeError> {
        latentflow_plugin_api::sdk::guard(|| self.run_remote(host, inputs)).into()
    }
}

impl Drop for RemoteNode {
    fn drop(&mut self) {
        if let Some((p, id)) = lock(&self.made).take() {
            p.peer.release_later(id);
        }
    }
}
