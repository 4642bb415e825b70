//! What one process shares with another: its table of exported objects and node instances,
//! proxies for the other side's objects, and the conversion of values to and from the wire.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use latentflow_plugin_api::{
    HostRef, NodeBox, NodeError, ObjectHandle, ObjectImpl, Record, Reply, Value,
};

use super::shm;
use super::wire::{Facts, Flat, Request, WireObject};

/// The deepest value either side rebuilds from the wire.
pub const MAX_DEPTH: usize = 64;

/// One side of a connection between two processes.
pub trait Side: Send + Sync {
    /// The table of what this side shares with the other.
    fn peer(&self) -> &Peer;

    /// Sends `req` to the other side and waits for the reply; `host` answers the other side's
    /// requests meanwhile.
    fn request(
        &self,
        host: Option<&HostRef<'_>>,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(Vec<Flat>, Vec<OwnedFd>), NodeError>;
}

/// Something this side exported.
enum Export {
    Object(ObjectHandle),
    Node(Arc<NodeBox>),
}

/// The objects and nodes this side shares with one other process.
pub struct Peer {
    token: u64,
    exports: Mutex<HashMap<u64, Export>>,
    next: AtomicU64,
    releases: Mutex<Vec<u64>>,
    alive: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static TOKENS: AtomicU64 = AtomicU64::new(1);

impl Default for Peer {
    fn default() -> Self {
        Peer {
            token: TOKENS.fetch_add(1, Ordering::Relaxed),
            exports: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            releases: Mutex::new(Vec::new()),
            alive: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Peer {
    fn export(&self, e: Export) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.exports).insert(id, e);
        id
    }

    /// Shares a node instance; returns its id.
    pub fn export_node(&self, node: NodeBox) -> u64 {
        self.export(Export::Node(Arc::new(node)))
    }

    /// A node instance this side exported.
    pub fn node(&self, id: u64) -> Option<Arc<NodeBox>> {
        match lock(&self.exports).get(&id) {
            Some(Export::Node(n)) => Some(Arc::clone(n)),
            _ => None,
        }
    }

    /// An object this side exported.
    pub fn object(&self, id: u64) -> Option<ObjectHandle> {
        match lock(&self.exports).get(&id) {
            Some(Export::Object(o)) => Some(o.clone()),
            _ => None,
        }
    }

    /// Forgets exports the other side released.
    pub fn released(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let mut exports = lock(&self.exports);
        for id in ids {
            exports.remove(id);
        }
    }

    /// Notes that a proxy for the other side's `id` is gone; sent with the next message.
    pub fn release_later(&self, id: u64) {
        lock(&self.releases).push(id);
    }

    /// Releases to send with the next message.
    pub fn take_releases(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.releases))
    }

    /// Whether the other side is still there.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Marks the other side gone: its proxies fail, and values holding them are dead.
    pub fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
        lock(&self.exports).clear();
    }

    /// Puts `values` on the wire, pushing tensor memory onto `fds`.
    pub fn encode(&self, values: &[Value], fds: &mut Vec<OwnedFd>) -> Result<Vec<Flat>, NodeError> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            self.encode_one(v, &mut out, fds)?;
        }
        Ok(out)
    }

    fn encode_one(
        &self,
        v: &Value,
        out: &mut Vec<Flat>,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<(), NodeError> {
        match v {
            Value::None => out.push(Flat::None),
            Value::Bool(b) => out.push(Flat::Bool(*b)),
            Value::Int(i) => out.push(Flat::Int(*i)),
            Value::Float(f) => out.push(Flat::Float(*f)),
            Value::Str(s) => out.push(Flat::Str(s.clone())),
            Value::List(items) => {
                out.push(Flat::List(count(items.len())?));
                for item in items {
                    self.encode_one(item, out, fds)?;
                }
            }
            Value::Record(r) => {
                count(r.fields.len())?;
                out.push(Flat::Record(
                    r.kind.clone(),
                    r.fields.iter().map(|(k, _)| k.clone()).collect(),
                ));
                for (_, item) in &r.fields {
                    self.encode_one(item, out, fds)?;
                }
            }
            Value::Tensor(t) => out.push(Flat::Tensor(
                shm::export(t, fds).map_err(NodeError::invalid)?,
            )),
            Value::Object(o) => {
                let theirs = lock(&PROXIES)
                    .get(&o.identity())
                    .filter(|p| p.token == self.token)
                    .map(|p| p.id);
                out.push(Flat::Object(match theirs {
                    Some(id) => WireObject {
                        id,
                        yours: true,
                        interface: String::new(),
                        family: String::new(),
                        describe: String::new(),
                    },
                    None => WireObject {
                        interface: o.interface(),
                        family: o.family(),
                        describe: o.describe(),
                        id: self.export(Export::Object(o.clone())),
                        yours: false,
                    },
                }));
            }
            other => {
                return Err(NodeError::invalid(format!(
                    "a value of a kind isolated plugins cannot pass yet: {other:?}"
                )))
            }
        }
        Ok(())
    }
}

fn count(n: usize) -> Result<u32, NodeError> {
    u32::try_from(n).map_err(|_| NodeError::invalid("a list too long for an isolated plugin"))
}

/// Rebuilds values from the wire; `side` makes proxies for the other side's objects.
pub fn decode(
    side: &Arc<dyn Side>,
    flat: Vec<Flat>,
    fds: Vec<OwnedFd>,
) -> Result<Vec<Value>, NodeError> {
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut items = flat.into_iter();
    let mut out = Vec::new();
    while let Some(first) = items.next() {
        out.push(decode_one(side, first, &mut items, &mut fds, 0)?);
    }
    Ok(out)
}

fn decode_one(
    side: &Arc<dyn Side>,
    item: Flat,
    rest: &mut std::vec::IntoIter<Flat>,
    fds: &mut [Option<OwnedFd>],
    depth: usize,
) -> Result<Value, NodeError> {
    if depth > MAX_DEPTH {
        return Err(NodeError::invalid(format!(
            "a value nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let next = |rest: &mut std::vec::IntoIter<Flat>, fds: &mut [Option<OwnedFd>]| {
        let item = rest
            .next()
            .ok_or_else(|| NodeError::invalid("a value cut short on the wire"))?;
        decode_one(side, item, rest, fds, depth + 1)
    };
    Ok(match item {
        Flat::None => Value::None,
        Flat::Bool(b) => Value::Bool(b),
        Flat::Int(i) => Value::Int(i),
        Flat::Float(f) => Value::Float(f),
        Flat::Str(s) => Value::Str(s),
        Flat::List(n) => {
            let mut items = Vec::with_capacity((n as usize).min(rest.len()));
            for _ in 0..n {
                items.push(next(rest, fds)?);
            }
            Value::List(items)
        }
        Flat::Record(kind, names) => {
            let mut record = Record::new(&kind);
            for name in names {
                let v = next(rest, fds)?;
                record.fields.push((name, v));
            }
            Value::Record(record)
        }
        Flat::Tensor(w) => Value::Tensor(shm::import(&w, fds).map_err(NodeError::invalid)?),
        Flat::Object(o) if o.yours => Value::Object(
            side.peer()
                .object(o.id)
                .ok_or_else(|| NodeError::invalid(format!("no object {} here", o.id)))?,
        ),
        Flat::Object(o) => Value::Object(proxy(side, o)),
    })
}

/// What the process knows about each proxy it holds, by object identity.
struct ProxyInfo {
    token: u64,
    id: u64,
    alive: Arc<AtomicBool>,
}

static PROXIES: LazyLock<Mutex<HashMap<usize, ProxyInfo>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Whether `values` hold an object of a process that is gone (a crashed worker): such values
/// must not be served from a cache.
pub fn holds_dead_objects(values: &[Value]) -> bool {
    fn walk(v: &Value, proxies: &HashMap<usize, ProxyInfo>) -> bool {
        match v {
            Value::Object(o) => proxies
                .get(&o.identity())
                .is_some_and(|p| !p.alive.load(Ordering::Acquire)),
            Value::List(items) => items.iter().any(|i| walk(i, proxies)),
            Value::Record(r) => r.fields.iter().any(|(_, i)| walk(i, proxies)),
            _ => false,
        }
    }
    let proxies = lock(&PROXIES);
    if proxies.is_empty() {
        return false;
    }
    values.iter().any(|v| walk(v, &proxies))
}

/// An object of the other process.
struct RemoteObject {
    side: Arc<dyn Side>,
    id: u64,
    interface: String,
    family: String,
    describe: String,
    key: Arc<AtomicUsize>,
}

fn proxy(side: &Arc<dyn Side>, o: WireObject) -> ObjectHandle {
    let key = Arc::new(AtomicUsize::new(0));
    let handle = ObjectHandle::new(RemoteObject {
        side: Arc::clone(side),
        id: o.id,
        interface: o.interface,
        family: o.family,
        describe: o.describe,
        key: Arc::clone(&key),
    });
    key.store(handle.identity(), Ordering::Relaxed);
    lock(&PROXIES).insert(
        handle.identity(),
        ProxyInfo {
            token: side.peer().token,
            id: o.id,
            alive: Arc::clone(&side.peer().alive),
        },
    );
    handle
}

/// The facts of a call, read from its host services.
pub fn facts(host: &HostRef<'_>) -> Facts {
    Facts {
        seed: host.seed(),
        node_id: host.node_id().into(),
        output_dir: host.output_dir().into(),
        alloc_limit: host.alloc_limit(),
    }
}

impl ObjectImpl for RemoteObject {
    fn interface(&self) -> String {
        self.interface.clone()
    }

    fn family(&self) -> String {
        self.family.clone()
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn call(&self, host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        let peer = self.side.peer();
        let mut fds = Vec::new();
        let flat = peer.encode(&args, &mut fds)?;
        let req = Request::CallObject {
            object: self.id,
            facts: facts(&host),
            method: method.to_string(),
            args: flat,
        };
        let reply = self.side.request(Some(&host), req, fds);
        // The arguments (objects among them) stay alive until the other side has read them.
        drop(args);
        let (out, fds) = reply?;
        decode(&self.side, out, fds)
    }
}

impl Drop for RemoteObject {
    fn drop(&mut self) {
        lock(&PROXIES).remove(&self.key.load(Ordering::Relaxed));
        self.side.peer().release_later(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolate::wire::{Body, Envelope};
    use latentflow_plugin_api::Tensor;

    /// A side with no other process behind it.
    struct Alone(Peer);

    impl Side for Alone {
        fn peer(&self) -> &Peer {
            &self.0
        }
        fn request(
            &self,
            _host: Option<&HostRef<'_>>,
            _req: Request,
            _fds: Vec<OwnedFd>,
        ) -> Result<(Vec<Flat>, Vec<OwnedFd>), NodeError> {
            Err(NodeError::failed("nobody there"))
        }
    }

    #[test]
    fn values_round_trip_and_objects_come_home() {
        let side: Arc<dyn Side> = Arc::new(Alone(Peer::default()));
        let t = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3]).expect("tensor");
        let values = vec![
            Value::List(vec![
                Value::Int(-3),
                Value::Float(f64::NAN),
                Value::Str("é".into()),
            ]),
            Value::Record(Record::new("R").with("t", Value::Tensor(t))),
            Value::None,
        ];
        let mut fds = Vec::new();
        let flat = side.peer().encode(&values, &mut fds).expect("encode");
        let back = decode(&side, flat, fds).expect("decode");
        assert_eq!(back.len(), 3);
        let Value::List(items) = &back[0] else {
            panic!("a list")
        };
        assert_eq!(items[0].as_int(), Some(-3));
        assert!(items[1].as_float().is_some_and(f64::is_nan));
        let Value::Record(r) = &back[1] else {
            panic!("a record")
        };
        let t = r.get("t").and_then(Value::as_tensor).expect("tensor");
        assert_eq!(t.to_f32_vec().expect("read"), vec![1.0, 2.0, 3.0]);

        // A proxy for the other side's object goes back as theirs, not as a new export.
        let remote = proxy(
            &side,
            WireObject {
                id: 7,
                yours: false,
                interface: "Box".into(),
                family: String::new(),
                describe: "a box".into(),
            },
        );
        let flat = side
            .peer()
            .encode(&[Value::Object(remote.clone())], &mut Vec::new())
            .expect("encode");
        assert!(matches!(&flat[0], Flat::Object(o) if o.yours && o.id == 7));
        assert!(!holds_dead_objects(&[Value::Object(remote.clone())]));
        side.peer().mark_dead();
        assert!(holds_dead_objects(&[Value::List(vec![Value::Object(
            remote.clone()
        )])]));
        drop(remote);
        assert_eq!(side.peer().take_releases(), vec![7]);
    }

    #[test]
    fn deep_or_truncated_values_are_refused() {
        let side: Arc<dyn Side> = Arc::new(Alone(Peer::default()));
        let deep: Vec<Flat> = (0..10_000).map(|_| Flat::List(1)).collect();
        let err = decode(&side, deep, Vec::new()).expect_err("too deep");
        assert!(err.message.contains("deeper"), "{}", err.message);
        let cut = vec![Flat::List(3), Flat::Int(1)];
        assert!(decode(&side, cut, Vec::new()).is_err());
        let orphan = vec![Flat::Object(WireObject {
            id: 99,
            yours: true,
            interface: String::new(),
            family: String::new(),
            describe: String::new(),
        })];
        assert!(decode(&side, orphan, Vec::new()).is_err());
    }

    #[test]
    fn random_bytes_never_decode_into_a_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let side: Arc<dyn Side> = Arc::new(Alone(Peer::default()));
        let valid = Envelope {
            releases: vec![1, 2],
            body: Body::Reply(Ok(vec![Flat::List(2), Flat::Int(1), Flat::Str("x".into())])),
        }
        .encode()
        .expect("encode");
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            bytes.truncate((next() as usize) % (bytes.len() + 1));
            if let Ok(Envelope {
                body: Body::Reply(Ok(flat)),
                ..
            }) = Envelope::decode(&bytes)
            {
                let _ = decode(&side, flat, Vec::new());
            }
        }
    }
}
