//! The clients that write while the faults happen. Two kinds, because each
//! catches what the other cannot:
//!
//! - **writers** put unique keys (`u/W/SEQ`), one at a time, never retrying:
//!   every acknowledged one must survive, and a writer now and then reads
//!   back a key it had acknowledged (a stale read would miss it);
//! - **CAS clients** read one of a few shared keys (`s/K`) and
//!   compare-and-set it to a new unique value at the revision they read,
//!   through any node: contention on a handful of keys is what makes a
//!   linearizability check mean something.
//!
//! Each picks a node at random for every call, so followers forward, paused
//! and partitioned nodes time out, and killed ones refuse connections. Every
//! call is recorded in the [`History`] with its outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic::Code;

use super::history::{self, Call, History, Outcome};
use super::rng::Rng;
use crate::api::{GetRequest, PutRequest};
use crate::Clients;

/// How long one client call may take before the client gives up (and the
/// outcome becomes unknown): past the daemon's write timeout (5 s), so the
/// daemon's own answer usually arrives first.
pub const OP_TIMEOUT: Duration = Duration::from_secs(8);

/// The largest answer a client accepts: a `List` of everything a long run
/// wrote is larger than gRPC's default 4 MiB.
pub const MAX_MESSAGE: usize = 256 << 20;

/// The key prefix of the writers' unique keys.
pub const UNIQUE_PREFIX: &str = "u/";

/// The key prefix of the shared compare-and-set keys.
pub const SHARED_PREFIX: &str = "s/";

/// Clients of the node at `addr` for the nemesis: short connect timeout,
/// [`OP_TIMEOUT`] per call, HTTP/2 keepalive so that a connection into a
/// partition is noticed as broken within seconds, and large answers allowed.
pub fn connect(addr: &str) -> Clients {
    let channel = crate::access::endpoint(addr)
        .connect_timeout(Duration::from_secs(1))
        .timeout(OP_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy();
    let mut clients = Clients::from_channel(addr, channel, crate::access::credentials(addr));
    clients.settings = clients.settings.max_decoding_message_size(MAX_MESSAGE);
    clients.resources = clients.resources.max_decoding_message_size(MAX_MESSAGE);
    clients
}

/// The client addresses of the current members, which clients pick from;
/// the nemesis updates it when membership changes. Cheap to clone.
#[derive(Clone, Default)]
pub struct Targets(Arc<RwLock<Vec<String>>>);

impl Targets {
    /// Replaces the addresses.
    pub fn set(&self, addrs: Vec<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// One address at random, if there is any.
    pub fn pick(&self, rng: &mut Rng) -> Option<String> {
        let addrs = self.0.read().unwrap_or_else(|e| e.into_inner());
        (!addrs.is_empty()).then(|| rng.pick(&addrs).clone())
    }
}

/// What every client task shares.
#[derive(Clone)]
pub struct Ctx {
    /// Where operations are recorded.
    pub history: Arc<History>,
    /// Where to send them.
    pub targets: Targets,
    /// Set to end the workload.
    pub stop: Arc<AtomicBool>,
    /// The run's generator; each client forks its own stream.
    pub rng: Rng,
    /// Makes values unique across the runs of one process (e.g. `c3`).
    pub label: String,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A client's connections, one per node, kept across calls.
#[derive(Default)]
struct Pool(HashMap<String, Clients>);

impl Pool {
    fn get(&mut self, addr: &str) -> &mut Clients {
        self.0.entry(addr.to_string()).or_insert_with(|| connect(addr))
    }
}

/// The running client tasks.
pub struct Workload {
    tasks: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Workload {
    /// Starts `writers` unique-key writers and `cas_clients` compare-and-set
    /// clients over `shared_keys` shared keys.
    pub fn start(ctx: &Ctx, writers: usize, cas_clients: usize, shared_keys: usize) -> Workload {
        let mut tasks = Vec::new();
        for w in 0..writers {
            tasks.push(tokio::spawn(writer(w, ctx.clone())));
        }
        for c in 0..cas_clients {
            tasks.push(tokio::spawn(cas_client(writers + c, shared_keys.max(1), ctx.clone())));
        }
        Workload {
            tasks,
            stop: ctx.stop.clone(),
        }
    }

    /// Adds another task that ends with the workload (the resource driver).
    pub fn add(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Asks every client to stop and waits for the calls in flight to end
    /// (each is bounded by [`OP_TIMEOUT`]). Returns the clients that did not
    /// end in time, which would be a bug of the harness.
    pub async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let mut stuck = 0;
        for t in self.tasks {
            match tokio::time::timeout(OP_TIMEOUT * 3, t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("a nemesis client panicked: {e}"),
                Err(_) => stuck += 1,
            }
        }
        stuck
    }
}

/// A linearizable read of `key` through `addr`, recorded. Returns what it
/// read (`Some(None)`: absent) or `None` if it failed.
pub async fn read(ctx: &Ctx, client: usize, clients: &mut Clients, key: &str) -> Option<Option<(String, u64)>> {
    let start = ctx.history.now();
    let result = clients
        .settings
        .get(GetRequest {
            key: key.to_string(),
            stale: false,
            ..Default::default()
        })
        .await;
    let end = ctx.history.now();
    let outcome = match result {
        Ok(r) => Outcome::Read {
            value: r.into_inner().setting.map(|s| (s.value, s.mod_revision)),
        },
        Err(e) if e.code() == Code::NotFound && std::error::Error::source(&e).is_none() => {
            Outcome::Read { value: None }
        }
        Err(e) => Outcome::Failed {
            why: history::describe(&e),
        },
    };
    let value = match &outcome {
        Outcome::Read { value } => Some(value.clone()),
        _ => None,
    };
    ctx.history
        .record(client, &clients.addr, key, Call::Read, start, end, outcome);
    value
}

/// A put (`expected: None`) or compare-and-set of `key` through `addr`, recorded.
async fn write(
    ctx: &Ctx,
    client: usize,
    clients: &mut Clients,
    key: &str,
    value: String,
    expected: Option<u64>,
) -> Outcome {
    let start = ctx.history.now();
    let result = clients
        .settings
        .put(PutRequest {
            key: key.to_string(),
            value: value.clone(),
            expected_revision: expected,
            ..Default::default()
        })
        .await;
    let end = ctx.history.now();
    let outcome = match result {
        Ok(r) => {
            let r = r.into_inner();
            Outcome::Written {
                revision: r.revision,
                previous: r.previous.map(|s| (s.value, s.mod_revision)),
            }
        }
        Err(e) => history::write_failure(&e),
    };
    let call = match expected {
        Some(expected) => Call::Cas { expected, value },
        None => Call::Put { value },
    };
    ctx.history
        .record(client, &clients.addr, key, call, start, end, outcome.clone());
    outcome
}

async fn writer(w: usize, ctx: Ctx) {
    let mut rng = ctx.rng.fork(1000 + w as u64);
    let mut pool = Pool::default();
    let mut acked: Vec<String> = Vec::new();
    let mut seq = 0u64;
    while !ctx.stopped() {
        let Some(addr) = ctx.targets.pick(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let clients = pool.get(&addr);
        if !acked.is_empty() && rng.chance(0.1) {
            let key = rng.pick(&acked).clone();
            if read(&ctx, w, clients, &key).await.is_none() {
                tokio::time::sleep(rng.between(Duration::from_millis(20), Duration::from_millis(100))).await;
            }
            continue;
        }
        let key = format!("{UNIQUE_PREFIX}{w}/{seq:07}");
        let value = format!("{}.w{w}.{seq}", ctx.label);
        seq += 1;
        match write(&ctx, w, clients, &key, value, None).await {
            Outcome::Written { .. } => acked.push(key),
            _ => tokio::time::sleep(rng.between(Duration::from_millis(20), Duration::from_millis(100))).await,
        }
    }
}

async fn cas_client(c: usize, shared_keys: usize, ctx: Ctx) {
    let mut rng = ctx.rng.fork(2000 + c as u64);
    let mut pool = Pool::default();
    let mut seq = 0u64;
    while !ctx.stopped() {
        let key = format!("{SHARED_PREFIX}{}", rng.index(shared_keys));
        let Some(addr) = ctx.targets.pick(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(current) = read(&ctx, c, pool.get(&addr), &key).await else {
            tokio::time::sleep(rng.between(Duration::from_millis(20), Duration::from_millis(100))).await;
            continue;
        };
        let expected = current.map(|(_, r)| r).unwrap_or(0);
        let value = format!("{}.c{c}.{seq}", ctx.label);
        seq += 1;
        // Often through another node than the read: forwarding races too.
        let addr = ctx.targets.pick(&mut rng).unwrap_or(addr);
        match write(&ctx, c, pool.get(&addr), &key, value, Some(expected)).await {
            Outcome::Written { .. } | Outcome::Refused { .. } => {
                tokio::time::sleep(rng.between(Duration::ZERO, Duration::from_millis(20))).await
            }
            _ => tokio::time::sleep(rng.between(Duration::from_millis(20), Duration::from_millis(100))).await,
        }
    }
}
