//! One conversation on a connection: a request, the nested requests the other side makes while
//! it works on it, and the reply.

use std::io;
use std::os::fd::OwnedFd;

use latentflow_plugin_api::{HostRef, LogLevel};

use super::conn::Conn;
use super::peer::Peer;
use super::wire::{Body, Envelope, Flat, Request, WireError};

/// What went wrong on a connection.
#[derive(Debug)]
pub enum Broken {
    /// The connection failed (the other process is gone).
    Io(io::Error),
    /// The other side sent something that breaks the protocol.
    Protocol(String),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Io(e) => write!(f, "{e}"),
            Broken::Protocol(m) => f.write_str(m),
        }
    }
}

impl From<io::Error> for Broken {
    fn from(e: io::Error) -> Self {
        Broken::Io(e)
    }
}

/// A reply: values and their descriptors, or the error the other side reported.
pub type Answer = Result<(Vec<Flat>, Vec<OwnedFd>), WireError>;

/// What a side does with the other side's requests.
pub trait Serve {
    /// Answers one request. `host` is the host services of the call this request is nested in.
    fn serve(
        &self,
        conn: &Conn,
        host: Option<&HostRef<'_>>,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> (Result<Vec<Flat>, WireError>, Vec<OwnedFd>);
}

/// Sends `body` with the releases `peer` has gathered.
pub fn send(conn: &Conn, peer: &Peer, body: Body, fds: &[OwnedFd]) -> Result<(), Broken> {
    let env = Envelope {
        releases: peer.take_releases(),
        body,
    };
    let bytes = env.encode().map_err(Broken::Protocol)?;
    conn.send(&bytes, fds)?;
    Ok(())
}

/// Receives one message and applies its releases to `peer`.
pub fn recv(conn: &Conn, peer: &Peer) -> Result<(Body, Vec<OwnedFd>), Broken> {
    let (bytes, fds) = conn.recv()?;
    let env = Envelope::decode(&bytes).map_err(Broken::Protocol)?;
    peer.released(&env.releases);
    Ok((env.body, fds))
}

/// Sends `req` and waits for its reply, serving nested requests with `side` and `host`.
pub fn call(
    conn: &Conn,
    peer: &Peer,
    side: &dyn Serve,
    host: Option<&HostRef<'_>>,
    req: Request,
    fds: Vec<OwnedFd>,
) -> Result<Answer, Broken> {
    send(conn, peer, Body::Request(req), &fds)?;
    drop(fds);
    loop {
        let (body, fds) = recv(conn, peer)?;
        match body {
            Body::Reply(r) => return Ok(r.map(|values| (values, fds))),
            Body::Request(nested) => {
                let (reply, out) = side.serve(conn, host, nested, fds);
                send(conn, peer, Body::Reply(reply), &out)?;
            }
            Body::Log { level, message } => {
                if let Some(h) = host {
                    h.log(log_level(level), message.as_str().into());
                }
            }
        }
    }
}

/// A log level from its number on the wire.
pub fn log_level(n: u8) -> LogLevel {
    match n {
        0 => LogLevel::Error,
        1 => LogLevel::Warn,
        2 => LogLevel::Info,
        3 => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}
