//! The one client harness both systems are driven with: `clients` closed-loop
//! workers (each sends its next request as soon as the last is answered),
//! sharing one HTTP/2 connection per [`CLIENTS_PER_CONN`] workers, all to the
//! leader, on random keys of a fixed key space with 256-byte values. Only
//! requests that start after the warm-up and end before the deadline count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opsd_proto::v1::settings_client::SettingsClient;
use tonic::transport::Channel;

use super::etcd::pb::kv_client::KvClient;
use super::etcd::pb::{PutRequest as EtcdPut, RangeRequest};

/// Workers per HTTP/2 connection: 1, 16, 64 and 256 clients use 1, 1, 4
/// and 16 connections, for opsd and etcd alike.
pub const CLIENTS_PER_CONN: usize = 16;
/// The size of every value written.
pub const VALUE_BYTES: usize = 256;
/// How long one request may take before the worker gives up on it (and counts an error).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a row does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// opsd `Settings.Put` / etcd `KV.Put`.
    Put,
    /// A linearizable read: opsd `Settings.Get` with `stale = false` / etcd
    /// `KV.Range` of one key, linearizable (etcd's default).
    Get,
}

impl Workload {
    /// The name in the table and in `results.json`.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
        }
    }
}

/// Which system a row drives, by the leader's client address.
#[derive(Clone, Copy, Debug)]
pub enum System {
    /// An opsd node's client API.
    Opsd(std::net::SocketAddr),
    /// An etcd member's client URL.
    Etcd(std::net::SocketAddr),
}

/// What one row measured.
#[derive(Clone, Debug, Default)]
pub struct RowResult {
    /// Requests answered successfully within the measured window.
    pub ok: u64,
    /// Requests that failed (any error) within the window.
    pub errors: u64,
    /// The first error seen, to say what went wrong.
    pub first_error: Option<String>,
    /// Successful requests per second.
    pub ops_per_s: f64,
    /// Median latency of successful requests, ms.
    pub p50_ms: f64,
    /// 99th-percentile latency of successful requests, ms.
    pub p99_ms: f64,
}

/// What one closed-loop worker (or all of them, merged) saw: the latencies
/// of calls sent and answered within the measured window, the failures
/// within it, and the first failure seen at all, to say what went wrong.
#[derive(Debug, Default)]
pub struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    /// Records a call sent at `sent` and answered now with `outcome`; it
    /// counts if both ends fall within `start..=end`. Returns the failure's
    /// presence, so that the worker can pause instead of hammering a failing
    /// system in a tight loop.
    pub fn record(&mut self, (start, end): (Instant, Instant), sent: Instant, outcome: Result<(), String>) -> bool {
        let done = Instant::now();
        let counted = sent >= start && done <= end;
        match outcome {
            Ok(()) => {
                if counted {
                    self.latencies_us
                        .push((done - sent).as_micros().min(u32::MAX as u128) as u32);
                }
                false
            }
            Err(e) => {
                self.errors += u64::from(counted);
                self.first_error.get_or_insert(e);
                true
            }
        }
    }

    /// A worker that failed before its first call: one error, saying why.
    pub fn failed(why: String) -> Tally {
        Tally {
            errors: 1,
            first_error: Some(why),
            ..Tally::default()
        }
    }

    /// Adds another worker's tally to this one.
    pub fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// The figures of a window `measure` long.
    pub fn into_row(mut self, measure: Duration) -> RowResult {
        self.latencies_us.sort_unstable();
        let all = &self.latencies_us;
        RowResult {
            ok: all.len() as u64,
            errors: self.errors,
            ops_per_s: all.len() as f64 / measure.as_secs_f64(),
            p50_ms: percentile_ms(all, 0.50),
            p99_ms: percentile_ms(all, 0.99),
            first_error: self.first_error,
        }
    }
}

/// A per-worker random number generator (xorshift64*): cheap, and enough to spread keys.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The key with number `i`: the same bytes in both systems.
pub fn key(i: u64) -> String {
    format!("bench/k{i:06}")
}

/// A 256-byte printable value (opsd values are UTF-8), different per seed.
pub fn value(seed: u64) -> String {
    let mut rng = Rng::new(seed);
    (0..VALUE_BYTES)
        .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
        .collect()
}

/// A channel to `addr` with the client timeout: TLS with its cluster's CA
/// when the harness knows one, else plain HTTP/2.
pub fn channel(addr: std::net::SocketAddr) -> Channel {
    opsd_tests::access::endpoint(&addr.to_string())
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .connect_lazy()
}

/// The per-system client a worker holds.
#[derive(Clone)]
enum Client {
    Opsd(opsd_client::SettingsApi),
    Etcd(KvClient<Channel>),
}

impl Client {
    async fn call(&mut self, workload: Workload, key: String, value: &str) -> Result<(), String> {
        match (self, workload) {
            (Client::Opsd(c), Workload::Put) => c
                .put(opsd_proto::v1::PutRequest {
                    key,
                    value: value.to_string(),
                    expected_revision: None,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|e| format!("opsd put: {:?}: {}", e.code(), e.message())),
            (Client::Opsd(c), Workload::Get) => c
                .get(opsd_proto::v1::GetRequest {
                    key,
                    stale: false,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|e| format!("opsd get: {:?}: {}", e.code(), e.message())),
            (Client::Etcd(c), Workload::Put) => c
                .put(EtcdPut {
                    key: key.into_bytes(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|e| format!("etcd put: {:?}: {}", e.code(), e.message())),
            (Client::Etcd(c), Workload::Get) => {
                let r = c
                    .range(RangeRequest {
                        key: key.clone().into_bytes(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("etcd range: {:?}: {}", e.code(), e.message()))?
                    .into_inner();
                if r.kvs.is_empty() {
                    return Err(format!("etcd range: {key} not found"));
                }
                Ok(())
            }
        }
    }
}

/// Clients of `system`, one per worker, sharing one connection per [`CLIENTS_PER_CONN`].
fn clients(system: System, workers: usize) -> Vec<Client> {
    let conns = workers.div_ceil(CLIENTS_PER_CONN).max(1);
    let channels: Vec<Channel> = (0..conns)
        .map(|_| match system {
            System::Opsd(a) | System::Etcd(a) => channel(a),
        })
        .collect();
    (0..workers)
        .map(|i| {
            let ch = channels[i % conns].clone();
            match system {
                // Every request carries the cluster's admin token.
                System::Opsd(a) => Client::Opsd(SettingsClient::with_interceptor(
                    ch,
                    opsd_tests::access::credentials(&a.to_string()),
                )),
                System::Etcd(_) => Client::Etcd(KvClient::new(ch)),
            }
        })
        .collect()
}

/// The `p`-th percentile (0 to 1) of sorted latencies in microseconds, as ms.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64) * p).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// Drives `workload` at `system` with `workers` closed-loop clients over
/// random keys `0..keyspace`: `warmup` unmeasured, then `measure` measured.
pub async fn run_row(
    system: System,
    workload: Workload,
    workers: usize,
    keyspace: u64,
    warmup: Duration,
    measure: Duration,
) -> RowResult {
    let start = Instant::now() + warmup;
    let end = start + measure;
    drive(
        system,
        workload,
        workers,
        keyspace,
        (start, end),
        tokio::time::sleep_until(tokio::time::Instant::from_std(end)),
    )
    .await
    .into_row(measure)
}

/// Drives `workload` at `system` with `workers` closed-loop clients over
/// random keys `0..keyspace` until `stop` completes; calls within `window`
/// count.
pub async fn drive(
    system: System,
    workload: Workload,
    workers: usize,
    keyspace: u64,
    window: (Instant, Instant),
    stop: impl std::future::Future<Output = ()>,
) -> Tally {
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(workers);
    for (w, mut client) in clients(system, workers).into_iter().enumerate() {
        let stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(w as u64 + 1 + (keyspace << 20));
            let value = value(w as u64);
            let mut tally = Tally::default();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let k = key(rng.next() % keyspace);
                let outcome = client.call(workload, k, &value).await;
                if tally.record(window, sent, outcome) {
                    // A failing system is not hammered in a tight loop.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        }));
    }
    stop.await;
    stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await.expect("a load worker panicked"));
    }
    all
}

/// Writes keys `0..count` (named by `key_of`) once each, `workers` at a time,
/// through `system`, retrying failures; returns how long it took. For
/// preloading the keys the read rows read, and for filling a cluster.
pub async fn fill(
    system: System,
    workers: usize,
    count: u64,
    key_of: impl Fn(u64) -> String + Send + Sync + 'static,
) -> Duration {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let key_of = Arc::new(key_of);
    let mut tasks = Vec::new();
    for (w, mut client) in clients(system, workers).into_iter().enumerate() {
        let next = next.clone();
        let key_of = key_of.clone();
        tasks.push(tokio::spawn(async move {
            let value = value(w as u64 + 7919);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let mut tries = 0;
                while let Err(e) = client.call(Workload::Put, key_of(i), &value).await {
                    tries += 1;
                    assert!(
                        tries < 50,
                        "filling: writing key {} failed 50 times; last: {e}",
                        key_of(i)
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a fill worker panicked");
    }
    started.elapsed()
}
