//! The data plane: listeners, round robin over healthy backends, health
//! probes, byte counts, and draining the connections of an old cluster. It
//! is driven by a desired set of [`Route`]s ([`Balancer::apply`]), which
//! [`super::follow`] derives from the applied state; tests give it routes
//! directly.
//!
//! Health, per backend of the active cluster: a probe (the service's
//! `health` check) right away and then every `health.interval`; two failures
//! in a row mark it down, one success marks it up again. A connection that
//! cannot be made marks the backend down at once and the next backend is
//! tried, so a client never sees a dead backend while another one is up. If
//! every backend is down, each is tried in turn anyway (a health check that
//! is wrong must not take a working service down).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ops::MachineAddr;
use crate::verify::Check;

/// How long a load balancer waits for a backend to accept a connection
/// before it marks it down and tries the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a listener that could not bind its port tries again.
pub const BIND_RETRY: Duration = Duration::from_secs(2);

/// Failed health checks in a row that mark a backend down.
pub const DOWN_AFTER: u32 = 2;

/// What one service should look like on this node: the desired state the
/// data plane converges to.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The service's name.
    pub name: String,
    /// The port to listen on.
    pub port: u16,
    /// How backends are checked.
    pub health: Check,
    /// How long connections to a replaced backend may go on.
    pub drain: Duration,
    /// The active cluster (`None`: no backends yet).
    pub active: Option<String>,
    /// The active cluster's machines.
    pub backends: Vec<MachineAddr>,
}

/// A backend as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReport {
    /// Its cluster.
    pub cluster: String,
    /// Its index.
    pub index: u64,
    /// HOST:PORT.
    pub address: String,
    /// Up or down.
    pub healthy: bool,
    /// A machine of an earlier cluster, draining.
    pub draining: bool,
    /// Connections open now.
    pub open: u64,
    /// Connections made.
    pub total: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// The last health check's or connection's detail.
    pub detail: String,
}

/// A service as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceReport {
    /// The service's name.
    pub name: String,
    /// Its port.
    pub port: u16,
    /// Listening now.
    pub listening: bool,
    /// Why it does not listen.
    pub bind_error: Option<String>,
    /// The active cluster.
    pub active: Option<String>,
    /// Active backends, then draining ones.
    pub backends: Vec<BackendReport>,
}

/// This node's load balancer as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReport {
    /// The node's id.
    pub node_id: u64,
    /// The host clients reach the load balancer at.
    pub host: String,
    /// The services, by name.
    pub services: Vec<ServiceReport>,
}

/// This node's load balancer. Cheap to clone.
#[derive(Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    /// The host listeners bind.
    bind_host: String,
    /// The host clients use (the bind host, unless it is unspecified).
    host: String,
    services: Mutex<BTreeMap<String, Served>>,
    /// Bumped whenever a listener's state changes, for waiters.
    changed: watch::Sender<u64>,
    stop: CancellationToken,
}

/// One service being served.
struct Served {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    port: u16,
    listen: Mutex<Listen>,
    pool: Mutex<Pool>,
    /// Fires when the service is no longer served here: the listener, the
    /// probes and every connection end.
    stop: CancellationToken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Listen {
    Binding,
    Listening,
    Failed(String),
}

struct Pool {
    active: Option<String>,
    health: Check,
    drain: Duration,
    backends: Vec<Arc<Backend>>,
    draining: Vec<Arc<Backend>>,
    next: usize,
}

struct Backend {
    cluster: String,
    index: u64,
    address: String,
    healthy: AtomicBool,
    fails: AtomicU32,
    detail: Mutex<String>,
    open: AtomicU64,
    total: AtomicU64,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    /// Stops its health probe.
    probing: Mutex<CancellationToken>,
    /// Closes its connections (the drain ended, or the service is gone).
    retire: CancellationToken,
}

/// Locks a mutex; a panic elsewhere while it was held leaves plain data,
/// still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backend {
    fn new(cluster: &str, m: &MachineAddr, parent: &CancellationToken) -> Arc<Backend> {
        Arc::new(Backend {
            cluster: cluster.to_string(),
            index: m.index,
            address: m.address.clone(),
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            detail: Mutex::new(String::new()),
            open: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: Arc::new(AtomicU64::new(0)),
            probing: Mutex::new(CancellationToken::new()),
            retire: parent.child_token(),
        })
    }

    fn machine(&self) -> MachineAddr {
        MachineAddr {
            index: self.index,
            address: self.address.clone(),
        }
    }

    /// A failed probe: down after [`DOWN_AFTER`] in a row.
    fn probe_failed(&self, detail: String) {
        let fails = self.fails.fetch_add(1, Ordering::SeqCst) + 1;
        if fails >= DOWN_AFTER && self.healthy.swap(false, Ordering::SeqCst) {
            info!(backend = %self.address, cluster = %self.cluster, %detail, "load balancer: backend down");
        }
        *lock(&self.detail) = detail;
    }

    /// A connection that could not be made: down at once.
    fn connect_failed(&self, detail: String) {
        self.fails.store(DOWN_AFTER, Ordering::SeqCst);
        if self.healthy.swap(false, Ordering::SeqCst) {
            info!(backend = %self.address, cluster = %self.cluster, %detail, "load balancer: backend down");
        }
        *lock(&self.detail) = detail;
    }

    /// A passed probe: up.
    fn probe_passed(&self, detail: String) {
        self.fails.store(0, Ordering::SeqCst);
        if !self.healthy.swap(true, Ordering::SeqCst) {
            info!(backend = %self.address, cluster = %self.cluster, "load balancer: backend up");
        }
        *lock(&self.detail) = detail;
    }

    fn report(&self, draining: bool) -> BackendReport {
        BackendReport {
            cluster: self.cluster.clone(),
            index: self.index,
            address: self.address.clone(),
            healthy: self.healthy.load(Ordering::SeqCst),
            draining,
            open: self.open.load(Ordering::SeqCst),
            total: self.total.load(Ordering::SeqCst),
            bytes_in: self.bytes_in.load(Ordering::SeqCst),
            bytes_out: self.bytes_out.load(Ordering::SeqCst),
            detail: lock(&self.detail).clone(),
        }
    }
}

impl Balancer {
    /// A load balancer of node `node_id` listening on `bind_host`; `host` is
    /// what clients use to reach it (the same, unless `bind_host` is an
    /// unspecified address). It serves nothing until routes are applied.
    pub fn new(node_id: u64, bind_host: &str, host: &str) -> Balancer {
        Balancer {
            inner: Arc::new(Inner {
                node_id,
                bind_host: bind_host.to_string(),
                host: host.to_string(),
                services: Mutex::new(BTreeMap::new()),
                changed: watch::channel(0).0,
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Converges to `routes`: services no longer routed stop (listener and
    /// connections closed), new ones start listening, and existing ones get
    /// their new backends (a new active cluster takes every new connection
    /// at once; the old one's open connections drain).
    pub fn apply(&self, routes: Vec<Route>) {
        if self.inner.stop.is_cancelled() {
            return;
        }
        let mut services = lock(&self.inner.services);
        let wanted: HashMap<&str, &Route> = routes.iter().map(|r| (r.name.as_str(), r)).collect();
        services.retain(|name, served| {
            let keep = wanted.get(name.as_str()).is_some_and(|r| r.port == served.port);
            if !keep {
                info!(service = %name, port = served.port, "load balancer: no longer serving");
                served.shared.stop.cancel();
            }
            keep
        });
        for route in &routes {
            let served = services.entry(route.name.clone()).or_insert_with(|| self.start(route));
            update_pool(&served.shared, route);
        }
        drop(services);
        self.inner.changed.send_modify(|n| *n += 1);
    }

    fn start(&self, route: &Route) -> Served {
        let shared = Arc::new(Shared {
            name: route.name.clone(),
            port: route.port,
            listen: Mutex::new(Listen::Binding),
            pool: Mutex::new(Pool {
                active: None,
                health: route.health.clone(),
                drain: route.drain,
                backends: Vec::new(),
                draining: Vec::new(),
                next: 0,
            }),
            stop: self.inner.stop.child_token(),
        });
        tokio::spawn(listen(self.inner.clone(), shared.clone()));
        Served {
            port: route.port,
            shared,
        }
    }

    /// Stops serving everything: listeners, probes and connections end.
    pub fn stop(&self) {
        self.inner.stop.cancel();
        lock(&self.inner.services).clear();
    }

    /// The node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// What this load balancer does now; only the service `only` if given.
    pub fn report(&self, only: Option<&str>) -> LocalReport {
        let services = lock(&self.inner.services);
        let services = services
            .values()
            .filter(|s| only.is_none_or(|n| n == s.shared.name))
            .map(|s| {
                let listen = lock(&s.shared.listen).clone();
                let pool = lock(&s.shared.pool);
                let backends = pool
                    .backends
                    .iter()
                    .map(|b| b.report(false))
                    .chain(
                        pool.draining
                            .iter()
                            .filter(|b| b.open.load(Ordering::SeqCst) > 0)
                            .map(|b| b.report(true)),
                    )
                    .collect();
                ServiceReport {
                    name: s.shared.name.clone(),
                    port: s.port,
                    listening: listen == Listen::Listening,
                    bind_error: match listen {
                        Listen::Failed(e) => Some(e),
                        _ => None,
                    },
                    active: pool.active.clone(),
                    backends,
                }
            })
            .collect();
        LocalReport {
            node_id: self.inner.node_id,
            host: self.inner.host.clone(),
            services,
        }
    }

    /// Changes whenever routes are applied or a listener binds or fails.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}

/// Gives a service its route's backends and settings.
fn update_pool(shared: &Arc<Shared>, route: &Route) {
    let mut pool = lock(&shared.pool);
    let health_changed = pool.health != route.health;
    pool.health = route.health.clone();
    pool.drain = route.drain;
    let same_cluster = pool.active == route.active;
    if !same_cluster {
        info!(service = %shared.name, from = ?pool.active, to = ?route.active, "load balancer: new connections go to the new cluster");
    }
    let cluster = route.active.clone().unwrap_or_default();
    let old = std::mem::take(&mut pool.backends);
    let mut kept = Vec::new();
    let mut gone = Vec::new();
    for b in old {
        let still = same_cluster
            && route
                .backends
                .iter()
                .any(|m| m.index == b.index && m.address == b.address);
        if still {
            kept.push(b);
        } else {
            gone.push(b);
        }
    }
    let mut backends = Vec::new();
    for m in route.backends.iter().filter(|_| route.active.is_some()) {
        match kept.iter().find(|b| b.index == m.index && b.address == m.address) {
            Some(b) => {
                if health_changed {
                    start_probe(shared, b, &route.health);
                }
                backends.push(b.clone());
            }
            None => {
                let b = Backend::new(&cluster, m, &shared.stop);
                start_probe(shared, &b, &route.health);
                backends.push(b);
            }
        }
    }
    pool.backends = backends;
    pool.active = route.active.clone();
    for b in gone {
        lock(&b.probing).cancel();
        pool.draining.push(b.clone());
        tokio::spawn(drain(shared.clone(), b, route.drain));
    }
}

/// Lets a replaced backend's connections go on for `drain`, then closes them.
/// With none open it is retired at once, under the pool's lock, so that a
/// connection being made to it either counts as open first or finds it
/// retired (see [`connect`]).
async fn drain(shared: Arc<Shared>, backend: Arc<Backend>, drain: Duration) {
    let idle = {
        let _pool = lock(&shared.pool);
        let idle = backend.open.load(Ordering::SeqCst) == 0 || drain.is_zero();
        if idle {
            backend.retire.cancel();
        }
        idle
    };
    if !idle {
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            _ = backend.retire.cancelled() => {}
        }
        let open = backend.open.load(Ordering::SeqCst);
        if open > 0 {
            info!(service = %shared.name, backend = %backend.address, open, "load balancer: drain timeout over; closing the connections left");
        }
        backend.retire.cancel();
    }
    lock(&shared.pool).draining.retain(|b| !Arc::ptr_eq(b, &backend));
}

/// (Re)starts a backend's health probe loop.
fn start_probe(shared: &Arc<Shared>, backend: &Arc<Backend>, check: &Check) {
    let token = shared.stop.child_token();
    let old = std::mem::replace(&mut *lock(&backend.probing), token.clone());
    old.cancel();
    let backend = backend.clone();
    let check = check.clone();
    tokio::spawn(async move {
        let machine = backend.machine();
        let env = BTreeMap::new();
        loop {
            // The probe keeps to the check's timeout.
            let outcome = tokio::select! {
                r = crate::verify::probe(&check, &machine, &env) => r,
                _ = token.cancelled() => return,
            };
            match outcome {
                Ok(detail) => backend.probe_passed(detail),
                Err(detail) => backend.probe_failed(detail),
            }
            tokio::select! {
                _ = tokio::time::sleep(check.interval.max(Duration::from_millis(50))) => {}
                _ = token.cancelled() => return,
            }
        }
    });
}

/// Binds the service's port (again every [`BIND_RETRY`] while that fails),
/// then accepts connections until the service stops.
async fn listen(inner: Arc<Inner>, shared: Arc<Shared>) {
    let addr = host_port(&inner.bind_host, shared.port);
    let listener = loop {
        let bound = tokio::select! {
            r = TcpListener::bind(&addr) => r,
            _ = shared.stop.cancelled() => return,
        };
        match bound {
            Ok(l) => break l,
            Err(e) => {
                let why = format!("cannot listen on {addr}: {e}");
                let first = {
                    let mut listen = lock(&shared.listen);
                    let first = *listen != Listen::Failed(why.clone());
                    *listen = Listen::Failed(why.clone());
                    first
                };
                if first {
                    warn!(service = %shared.name, "load balancer: {why}; trying again every {} s", BIND_RETRY.as_secs());
                    inner.changed.send_modify(|n| *n += 1);
                }
                tokio::select! {
                    _ = tokio::time::sleep(BIND_RETRY) => continue,
                    _ = shared.stop.cancelled() => return,
                }
            }
        }
    };
    *lock(&shared.listen) = Listen::Listening;
    inner.changed.send_modify(|n| *n += 1);
    info!(service = %shared.name, %addr, "load balancer: listening");
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.stop.cancelled() => return,
        };
        match accepted {
            Ok((client, peer)) => {
                debug!(service = %shared.name, %peer, "load balancer: accepted");
                tokio::spawn(proxy(shared.clone(), client));
            }
            Err(e) => {
                // Out of file descriptors and the like: pause, then go on.
                warn!(service = %shared.name, error = %e, "load balancer: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The backends to try for a new connection, in order: the healthy ones
/// round robin from the next one, then the ones marked down.
fn candidates(shared: &Shared) -> Vec<Arc<Backend>> {
    let mut pool = lock(&shared.pool);
    let (healthy, down): (Vec<_>, Vec<_>) = pool
        .backends
        .iter()
        .cloned()
        .partition(|b| b.healthy.load(Ordering::SeqCst));
    let start = if healthy.is_empty() {
        0
    } else {
        pool.next % healthy.len()
    };
    pool.next = pool.next.wrapping_add(1);
    let mut order: Vec<_> = healthy[start..].iter().chain(&healthy[..start]).cloned().collect();
    order.extend(down);
    order
}

/// Connects a client to a backend and copies bytes both ways until either
/// side closes, the backend's drain ends or the service stops.
async fn proxy(shared: Arc<Shared>, client: TcpStream) {
    let _ = client.set_nodelay(true);
    let Some((backend, upstream)) = connect(&shared).await else {
        debug!(service = %shared.name, "load balancer: no backend could take a connection; closing it");
        return;
    };
    let _ = upstream.set_nodelay(true);
    backend.total.fetch_add(1, Ordering::SeqCst);
    let mut client = Counted::new(client, backend.bytes_in.clone());
    let mut upstream = Counted::new(upstream, backend.bytes_out.clone());
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = backend.retire.cancelled() => {}
    }
    backend.open.fetch_sub(1, Ordering::SeqCst);
}

/// Connects to the first candidate backend that takes the connection,
/// which then counts as open on it. It counts from before the connect,
/// under the pool's lock: a swap's [`drain`] either sees it and waits, or
/// retired the backend first, and then the backend is skipped. If every
/// candidate was retired meanwhile (a swap between the pick and the
/// connect), the new pool is asked once more.
async fn connect(shared: &Shared) -> Option<(Arc<Backend>, TcpStream)> {
    for _round in 0..2 {
        let mut retired = false;
        for backend in candidates(shared) {
            {
                let _pool = lock(&shared.pool);
                if backend.retire.is_cancelled() {
                    retired = true;
                    continue;
                }
                backend.open.fetch_add(1, Ordering::SeqCst);
            }
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&backend.address));
            let result = tokio::select! {
                r = attempt => Some(r),
                _ = shared.stop.cancelled() => None,
            };
            match result {
                Some(Ok(Ok(stream))) => return Some((backend, stream)),
                Some(Ok(Err(e))) => backend.connect_failed(format!("connect: {e}")),
                Some(Err(_)) => {
                    backend.connect_failed(format!("connect: no answer within {} ms", CONNECT_TIMEOUT.as_millis()))
                }
                None => {}
            }
            backend.open.fetch_sub(1, Ordering::SeqCst);
            if shared.stop.is_cancelled() {
                return None;
            }
        }
        if !retired {
            break;
        }
    }
    None
}

/// `HOST:PORT`, bracketing an IPv6 host.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A stream that counts the bytes read from it.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    fn new(inner: S, read: Arc<AtomicU64>) -> Self {
        Counted { inner, read }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::verify::Probe;

    /// A backend that greets each connection with its name and a newline,
    /// then echoes what it reads.
    async fn backend(name: &str) -> (MachineAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = stopped.cancelled() => return,
                };
                let name = name.clone();
                tokio::spawn(async move {
                    conn.write_all(format!("{name}\n").as_bytes()).await.unwrap();
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (MachineAddr { index: 0, address }, stop)
    }

    /// A port nothing listens on.
    async fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn tcp_health(interval_ms: u64) -> Check {
        Check {
            name: "health".into(),
            probe: Probe::Tcp,
            timeout: Duration::from_millis(500),
            retries: 0,
            interval: Duration::from_millis(interval_ms),
        }
    }

    fn route(port: u16, cluster: &str, machines: &[MachineAddr], drain_ms: u64) -> Route {
        Route {
            name: "web".into(),
            port,
            health: tcp_health(100),
            drain: Duration::from_millis(drain_ms),
            active: Some(cluster.into()),
            backends: machines
                .iter()
                .enumerate()
                .map(|(i, m)| MachineAddr {
                    index: i as u64,
                    address: m.address.clone(),
                })
                .collect(),
        }
    }

    /// Waits until the service listens.
    async fn listening(lb: &Balancer) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lb.report(Some("web")).services.first().is_some_and(|s| s.listening) {
            assert!(Instant::now() < deadline, "not listening: {:?}", lb.report(None));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Connects through the load balancer and reads the backend's greeting.
    async fn greeting(port: u16) -> (String, BufReader<TcpStream>) {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
            .await
            .expect("a greeting within 5 s")
            .unwrap();
        (line.trim().to_string(), reader)
    }

    #[tokio::test]
    async fn connections_go_round_robin_and_bytes_are_counted() {
        let (a, _sa) = backend("a").await;
        let (b, _sb) = backend("b").await;
        let (c, _sc) = backend("c").await;
        let port = free_port().await;
        let lb = Balancer::new(1, "127.0.0.1", "127.0.0.1");
        lb.apply(vec![route(port, "v1", &[a, b, c], 1000)]);
        listening(&lb).await;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (name, mut conn) = greeting(port).await;
            conn.get_mut().write_all(b"ping\n").await.unwrap();
            let mut echo = String::new();
            conn.read_line(&mut echo).await.unwrap();
            assert_eq!(echo, "ping\n");
            seen.push(name);
        }
        assert_eq!(seen[..3], seen[3..], "round robin repeats: {seen:?}");
        let mut first = seen[..3].to_vec();
        first.sort();
        assert_eq!(first, ["a", "b", "c"]);
        // Counters settle once the copies have ended.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = lb.report(None);
        let service = &report.services[0];
        assert_eq!(service.active.as_deref(), Some("v1"));
        assert_eq!(service.backends.len(), 3);
        for b in &service.backends {
            assert_eq!(b.total, 2, "{b:?}");
            assert_eq!(b.open, 0, "{b:?}");
            assert_eq!(b.bytes_in, 10, "{b:?}");
            assert_eq!(b.bytes_out, 2 * (2 + 5), "{b:?}");
            assert!(b.healthy && !b.draining, "{b:?}");
        }
        lb.stop();
    }

    #[tokio::test]
    async fn a_dead_backend_is_skipped_marked_down_and_brought_back() {
        let (a, _sa) = backend("a").await;
        let dead_port = free_port().await;
        let dead = MachineAddr {
            index: 1,
            address: format!("127.0.0.1:{dead_port}"),
        };
        let port = free_port().await;
        let lb = Balancer::new(1, "127.0.0.1", "127.0.0.1");
        lb.apply(vec![route(port, "v1", &[a.clone(), dead.clone()], 1000)]);
        listening(&lb).await;
        // Every connection reaches the live backend: a client never sees the dead one.
        for _ in 0..4 {
            assert_eq!(greeting(port).await.0, "a");
        }
        let down = |lb: &Balancer| {
            lb.report(None).services[0]
                .backends
                .iter()
                .find(|b| b.index == 1)
                .map(|b| (b.healthy, b.detail.clone()))
                .unwrap()
        };
        let (healthy, detail) = down(&lb);
        assert!(!healthy, "the dead backend is down");
        assert!(detail.contains("connect"), "{detail}");
        // It comes back: one passed health check marks it up.
        let listener = TcpListener::bind(("127.0.0.1", dead_port)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !down(&lb).0 {
            assert!(Instant::now() < deadline, "the backend never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(listener);
        lb.stop();
    }

    #[tokio::test]
    async fn a_swap_sends_new_connections_to_the_new_cluster_and_drains_the_old() {
        let (a, _sa) = backend("old").await;
        let (b, _sb) = backend("new").await;
        let port = free_port().await;
        let lb = Balancer::new(1, "127.0.0.1", "127.0.0.1");
        lb.apply(vec![route(port, "v1", std::slice::from_ref(&a), 400)]);
        listening(&lb).await;
        let (name, mut old) = greeting(port).await;
        assert_eq!(name, "old");
        lb.apply(vec![route(port, "v2", std::slice::from_ref(&b), 400)]);
        // New connections go to the new cluster at once.
        assert_eq!(greeting(port).await.0, "new");
        // The open one goes on while the drain lasts...
        old.get_mut().write_all(b"still\n").await.unwrap();
        let mut echo = String::new();
        old.read_line(&mut echo).await.unwrap();
        assert_eq!(echo, "still\n");
        let report = lb.report(None);
        let draining: Vec<_> = report.services[0].backends.iter().filter(|b| b.draining).collect();
        assert_eq!(draining.len(), 1, "{report:?}");
        assert_eq!(draining[0].cluster, "v1");
        assert_eq!(draining[0].open, 1);
        // ...and is closed when it ends.
        let mut rest = String::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), old.read_line(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = lb.report(None);
        assert!(report.services[0].backends.iter().all(|b| !b.draining), "{report:?}");
        lb.stop();
    }

    #[tokio::test]
    async fn a_port_in_use_is_reported_and_a_removed_service_stops_listening() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let lb = Balancer::new(7, "127.0.0.1", "127.0.0.1");
        let mut changes = lb.changes();
        lb.apply(vec![route(port, "v1", &[], 0)]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let error = loop {
            if let Some(e) = lb.report(None).services[0].bind_error.clone() {
                break e;
            }
            assert!(Instant::now() < deadline);
            let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
        };
        assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
        assert!(!lb.report(None).services[0].listening);
        // Freed, the port is taken up on the next try.
        drop(taken);
        listening(&lb).await;
        // With no active cluster, a connection is accepted and closed.
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncReadExt::read(&mut conn, &mut buf),
        )
        .await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        // A service no longer routed closes its listener.
        lb.apply(Vec::new());
        assert!(lb.report(None).services.is_empty());
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(Instant::now() < deadline, "still listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lb.stop();
    }
}
