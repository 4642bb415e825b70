//! The worker's side: load one plugin library and serve the host's requests, one thread per
//! connection.

use std::cell::RefCell;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::thread::ThreadId;

use latentflow_plugin_api::abi_stable::library::lib_header_from_path;
use latentflow_plugin_api::abi_stable::sabi_trait::TD_Opaque;
use latentflow_plugin_api::abi_stable::std_types::{RStr, RString};
use latentflow_plugin_api::abi_value::{from_abi_vec, to_abi_vec};
use latentflow_plugin_api::{
    HostRef, HostServices, HostServices_TO, LogLevel, NodeError, PluginModRef,
};

use super::conn::{recv_frame, Conn};
use super::peer::{decode, Peer, Side};
use super::session::{self, Serve};
use super::wire::Body;
use super::wire::{Facts, Flat, Request, WireError};

/// The first argument that makes the binary a worker.
pub const WORKER_ARG: &str = "__plugin-worker";

thread_local! {
    /// The connection this thread serves; calls into the host from this thread go over it.
    static CURRENT: RefCell<Option<Arc<Conn>>> = const { RefCell::new(None) };
}

struct Worker {
    me: Weak<Worker>,
    module: Result<PluginModRef, String>,
    peer: Peer,
}

/// Runs a worker: `args` are what follows [`WORKER_ARG`] (`LIBRARY`).
/// Standard input is the control socket on which the host hands over connections. Returns the
/// exit code.
pub fn worker_main(args: &[OsString]) -> u8 {
    // Die with the host, even when it is killed.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        return 1;
    }
    let Some(library) = args.first().map(PathBuf::from) else {
        eprintln!("usage: latentflow {WORKER_ARG} LIBRARY");
        return 2;
    };
    super::raise_file_limit();
    let module = lib_header_from_path(&library)
        .and_then(|h| h.init_root_module::<PluginModRef>())
        .map_err(|e| {
            let text = e.to_string();
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("cannot load the library")
                .to_string()
        });
    let worker = Arc::new_cyclic(|me| Worker {
        me: me.clone(),
        module,
        peer: Peer::default(),
    });
    let control = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("no control socket: {e}");
            return 2;
        }
    };
    loop {
        let Ok((_, fds)) = recv_frame(&control) else {
            return 0; // The host is gone.
        };
        for fd in fds {
            let worker = Arc::clone(&worker);
            let conn = Arc::new(Conn::new(UnixStream::from(fd)));
            std::thread::spawn(move || worker.serve_connection(conn));
        }
    }
}

impl Worker {
    fn serve_connection(&self, conn: Arc<Conn>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(Arc::clone(&conn)));
        loop {
            let Ok((body, fds)) = session::recv(&conn, &self.peer) else {
                return;
            };
            if let Body::Request(req) = body {
                let (reply, out) = self.serve(&conn, None, req, fds);
                if session::send(&conn, &self.peer, Body::Reply(reply), &out).is_err() {
                    return;
                }
            }
        }
    }

    fn module(&self) -> Result<PluginModRef, NodeError> {
        self.module.clone().map_err(NodeError::failed)
    }

    fn handle(
        &self,
        conn: &Conn,
        req: Request,
        fds: Vec<OwnedFd>,
        out: &mut Vec<OwnedFd>,
    ) -> Result<Vec<Flat>, NodeError> {
        let side: Arc<dyn Side> = self
            .me
            .upgrade()
            .ok_or_else(|| NodeError::failed("the worker is stopping"))?;
        match req {
            Request::Manifest => {
                let json = (self.module()?.manifest())().into_result()?;
                Ok(vec![Flat::Str(json.into())])
            }
            Request::Stats => {
                let s = (self.module()?.stats())();
                Ok(vec![
                    Flat::Int(s.bytes_copied_in as i64),
                    Flat::Int(s.tensors_exported as i64),
                    Flat::Int(s.tensors_reused as i64),
                ])
            }
            Request::Infer { type_id, params } => {
                let json =
                    (self.module()?.infer())(type_id.as_str().into(), params.as_str().into())
                        .into_result()?;
                Ok(vec![Flat::Str(json.into())])
            }
            Request::CreateNode { type_id, params } => {
                let node =
                    (self.module()?.create_node())(type_id.as_str().into(), params.as_str().into())
                        .into_result()?;
                Ok(vec![Flat::Int(self.peer.export_node(node) as i64)])
            }
            Request::RunNode {
                node,
                facts,
                inputs,
            } => {
                let instance = self
                    .peer
                    .node(node)
                    .ok_or_else(|| NodeError::invalid(format!("no node instance {node}")))?;
                let inputs = decode(&side, inputs, fds)?;
                let remote = RemoteHost::new(conn, self, facts);
                let host = HostServices_TO::from_ptr(&remote, TD_Opaque);
                let values = instance.run(host, to_abi_vec(inputs)).into_result()?;
                self.peer.encode(&from_abi_vec(values)?, out)
            }
            Request::CallObject {
                object,
                facts,
                method,
                args,
            } => {
                let handle = self
                    .peer
                    .object(object)
                    .ok_or_else(|| NodeError::invalid(format!("no object {object}")))?;
                let args = decode(&side, args, fds)?;
                let remote = RemoteHost::new(conn, self, facts);
                let host = HostServices_TO::from_ptr(&remote, TD_Opaque);
                let values = handle.call(host, &method, args)?;
                self.peer.encode(&values, out)
            }
            other => Err(NodeError::invalid(format!(
                "the host asked a worker for {other:?}, which only the host answers"
            ))),
        }
    }
}

impl Serve for Worker {
    fn serve(
        &self,
        conn: &Conn,
        _host: Option<&HostRef<'_>>,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> (Result<Vec<Flat>, WireError>, Vec<OwnedFd>) {
        let mut out = Vec::new();
        let reply = self
            .handle(conn, req, fds, &mut out)
            .map_err(WireError::from);
        (reply, out)
    }
}

impl Side for Worker {
    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn request(
        &self,
        host: Option<&HostRef<'_>>,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(Vec<Flat>, Vec<OwnedFd>), NodeError> {
        let conn = CURRENT.with(|c| c.borrow().clone()).ok_or_else(|| {
            NodeError::failed(
                "an isolated plugin called an object of another plugin from a thread it started; \
                 in isolated mode, call objects from the thread that runs the node",
            )
        })?;
        match session::call(&conn, &self.peer, self, host, req, fds) {
            Ok(answer) => answer.map_err(NodeError::from),
            Err(_) => std::process::exit(0), // The host is gone.
        }
    }
}

/// The host services of one call, reached over the connection the call came on. Only the
/// thread that serves the call may use the connection: from other threads, logs go to the
/// worker's output and progress reports are dropped.
struct RemoteHost<'a> {
    conn: &'a Conn,
    worker: &'a Worker,
    facts: Facts,
    thread: ThreadId,
}

impl<'a> RemoteHost<'a> {
    fn new(conn: &'a Conn, worker: &'a Worker, facts: Facts) -> Self {
        RemoteHost {
            conn,
            worker,
            facts,
            thread: std::thread::current().id(),
        }
    }

    fn here(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    fn ask(&self, req: Request) -> Option<Flat> {
        if !self.here() {
            return None;
        }
        match session::call(
            self.conn,
            &self.worker.peer,
            self.worker,
            None,
            req,
            Vec::new(),
        ) {
            Ok(Ok((values, _))) => values.into_iter().next(),
            Ok(Err(_)) => None,
            Err(_) => std::process::exit(0),
        }
    }
}

impl HostServices for RemoteHost<'_> {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let body = Body::Log {
            level: level as u8,
            message: message.as_str().into(),
        };
        if !self.here() || session::send(self.conn, &self.worker.peer, body, &[]).is_err() {
            eprintln!("[{:?}] {}", level, message.as_str());
        }
    }

    fn progress(&self, done: u64, total: u64, message: RStr<'_>) -> bool {
        matches!(
            self.ask(Request::Progress {
                done,
                total,
                message: message.as_str().into(),
            }),
            Some(Flat::Bool(true))
        )
    }

    fn is_cancelled(&self) -> bool {
        matches!(self.ask(Request::IsCancelled), Some(Flat::Bool(true)))
    }

    fn seed(&self) -> u64 {
        self.facts.seed
    }

    fn node_id(&self) -> RString {
        self.facts.node_id.as_str().into()
    }

    fn run_metadata(&self) -> RString {
        match self.ask(Request::RunMetadata) {
            Some(Flat::Str(s)) => s.into(),
            _ => "{}".into(),
        }
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
