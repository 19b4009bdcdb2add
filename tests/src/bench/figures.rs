//! The opsd-only figures: no-op transitions, leader failover, a new node
//! catching up with a full cluster, and a node holding many resources
//! (restart-to-serving time and memory). Each drives real opsd processes
//! through the public API, like an operator or a client would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opsd_tests::api::resources_client::ResourcesClient;
use opsd_tests::api::{
    resource_event, CreateResourceRequest, DoRequest, GetResourceRequest, PutRequest, WatchResourceRequest,
};
use opsd_tests::resources as res;
use opsd_tests::{client, kinds, Cluster, Options, FORM_TIMEOUT};
use tonic::transport::Channel;
use tonic::Code;

use super::load::{self, System, Tally};

/// What the transition run measured.
#[derive(Debug, Default)]
pub struct Transitions {
    /// Transitions completed (Do answered and the resource at rest again) within the window.
    pub completed: u64,
    /// Completions per second.
    pub per_s: f64,
    /// Median latency from sending the Do to seeing the resource at rest, ms.
    pub p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
    /// Do calls or waits that failed.
    pub errors: u64,
    /// Do calls refused as "run in flight" right after the watch showed the
    /// resource at rest, and retried (the latency includes the retries).
    pub refused: u64,
    /// The first failure, to say what went wrong.
    pub first_error: Option<String>,
}

/// Waits on `watch` for the resource to rest at a version after `index`
/// (a run finished after the Do at `index`). Returns false if the stream
/// ended or failed (the caller re-reads).
pub(super) async fn rested_after(
    watch: &mut tonic::Streaming<opsd_tests::api::ResourceEvent>,
    index: u64,
) -> Result<bool, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), watch.message()).await {
            Err(_) => return Err("no resource event within 30 s".into()),
            Ok(Err(e)) if e.code() == Code::Aborted => return Ok(false),
            Ok(Err(e)) => return Err(format!("watch: {:?}: {}", e.code(), e.message())),
            Ok(Ok(None)) => return Ok(false),
            Ok(Ok(Some(ev))) => {
                if let Some(resource_event::Event::Resource(r)) = ev.event {
                    if r.version > index && !r.working && r.active_run_id.is_empty() {
                        return Ok(true);
                    }
                }
            }
        }
    }
}

/// Opens a watch of one resource and reads its first message (the resource as it is).
pub(super) async fn open_watch(
    client: &mut opsd_client::ResourcesApi,
    kind: &str,
    name: &str,
) -> Result<tonic::Streaming<opsd_tests::api::ResourceEvent>, String> {
    let mut s = client
        .watch(WatchResourceRequest {
            kind: kind.into(),
            name: name.into(),
        })
        .await
        .map_err(|e| format!("watch {kind}/{name}: {:?}: {}", e.code(), e.message()))?
        .into_inner();
    s.message()
        .await
        .map_err(|e| format!("watch {kind}/{name}: first message: {e}"))?;
    Ok(s)
}

/// Whether the resource rests now at a version after `index` (a linearizable read).
async fn rests_after(
    client: &mut opsd_client::ResourcesApi,
    kind: &str,
    name: &str,
    index: u64,
) -> Result<bool, String> {
    let r = client
        .get(GetResourceRequest {
            kind: kind.into(),
            name: name.into(),
            stale: false,
        })
        .await
        .map_err(|e| format!("get {kind}/{name}: {:?}: {}", e.code(), e.message()))?
        .into_inner();
    Ok(r.version > index && !r.working && r.active_run_id.is_empty())
}

/// No-op transitions at `workers` concurrent resources through the node at
/// `addr` (the leader: only it runs steps). Each worker owns one resource,
/// watches it (`Resources.Watch`), and loops: Do `go`, wait until the watch
/// shows it at rest in `done` again. Completions per second and the latency
/// from Do to rest are measured after `warmup`, for `measure`.
pub async fn transitions(addr: &str, workers: usize, warmup: Duration, measure: Duration) -> Transitions {
    res::apply_kind(addr, kinds::NOOP)
        .await
        .expect("applying the no-op kind");
    let sock: std::net::SocketAddr = addr.parse().expect("a node's client address is HOST:PORT");
    let conns = workers.div_ceil(load::CLIENTS_PER_CONN).max(1);
    let calls: Vec<Channel> = (0..conns).map(|_| load::channel(sock)).collect();
    // Watches stay open for the whole run: their channels have no request timeout.
    let streams: Vec<Channel> = (0..conns)
        .map(|_| opsd_tests::access::endpoint(addr).tcp_nodelay(true).connect_lazy())
        .collect();
    let start = Instant::now() + warmup + Duration::from_secs(2);
    let end = start + measure;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut c = ResourcesClient::with_interceptor(calls[w % conns].clone(), opsd_tests::access::credentials(addr));
        let mut s =
            ResourcesClient::with_interceptor(streams[w % conns].clone(), opsd_tests::access::credentials(addr));
        tasks.push(tokio::spawn(async move {
            let (kind, name) = ("noop", format!("t{w:04}"));
            let (mut tally, mut refused) = (Tally::default(), 0u64);
            let created = c
                .create(CreateResourceRequest {
                    kind: kind.into(),
                    name: name.clone(),
                    spec: None,
                    labels: Default::default(),
                    reason: "bench".into(),
                })
                .await;
            if let Err(e) = created {
                return (Tally::failed(format!("create {kind}/{name}: {e}")), 0);
            }
            let mut watch = match open_watch(&mut s, kind, &name).await {
                Ok(w) => w,
                Err(e) => return (Tally::failed(e), 0),
            };
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let mut change = Err(tonic::Status::unknown("not sent"));
                for _ in 0..1000 {
                    change = c
                        .r#do(DoRequest {
                            kind: kind.into(),
                            name: name.clone(),
                            event: "go".into(),
                            args: Default::default(),
                            reason: String::new(),
                        })
                        .await;
                    // The watch can show the resource at rest before the engine's actor has seen
                    // it, and the actor then refuses the event as "in flight": a client retries.
                    match &change {
                        Err(e) if e.code() == Code::FailedPrecondition && e.message().contains("in flight") => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        _ => break,
                    }
                }
                let outcome = match change {
                    Err(e) => Err(format!("do {kind}/{name} go: {:?}: {}", e.code(), e.message())),
                    Ok(change) => {
                        let index = change.into_inner().index;
                        let mut outcome = rested_after(&mut watch, index).await;
                        // A watch that ended (it fell behind): re-watch, then re-read, so nothing is missed.
                        while let Ok(false) = outcome {
                            outcome = match open_watch(&mut s, kind, &name).await {
                                Err(e) => Err(e),
                                Ok(w) => {
                                    watch = w;
                                    match rests_after(&mut c, kind, &name, index).await {
                                        Ok(true) => Ok(true),
                                        Ok(false) => rested_after(&mut watch, index).await,
                                        Err(e) => Err(e),
                                    }
                                }
                            };
                        }
                        outcome.map(drop)
                    }
                };
                if tally.record((start, end), sent, outcome) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            (tally, refused)
        }));
    }
    let (mut all, mut refused) = (Tally::default(), 0);
    for t in tasks {
        let (tally, worker_refused) = t.await.expect("a transition worker panicked");
        all.merge(tally);
        refused += worker_refused;
    }
    let row = all.into_row(measure);
    Transitions {
        completed: row.ok,
        per_s: row.ops_per_s,
        p50_ms: row.p50_ms,
        p99_ms: row.p99_ms,
        errors: row.errors,
        refused,
        first_error: row.first_error,
    }
}

/// The machine's bare spawn rate: `sh -c true` run and waited for, in a
/// loop, by two workers per core for `measure` (at least 2 s), so every core
/// is busy; spawns completed per second. The reference of the transitions.
pub fn spawn_rate(measure: Duration) -> f64 {
    let measure = measure.max(Duration::from_secs(2));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let started = Instant::now();
    let workers: Vec<_> = (0..2 * cores)
        .map(|_| {
            std::thread::spawn(move || {
                let mut done = 0u64;
                while started.elapsed() < measure {
                    let ok = std::process::Command::new("sh")
                        .args(["-c", "true"])
                        .status()
                        .is_ok_and(|s| s.success());
                    done += u64::from(ok);
                }
                done
            })
        })
        .collect();
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    done as f64 / started.elapsed().as_secs_f64()
}

/// Kills the leader with SIGKILL `kills` times; each time measures from the
/// kill to the first acknowledged write, with writers retrying continuously
/// (two per surviving node, each sending its next write as soon as the last
/// one failed). After each, the killed node is restarted and caught up, and
/// the cluster agrees on a leader again before the next kill.
pub async fn failover(cluster: &Cluster, kills: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    let seq = Arc::new(AtomicU64::new(0));
    for k in 0..kills {
        let leader = cluster.leader().await;
        let survivors: Vec<String> = cluster
            .serving()
            .into_iter()
            .filter(|&i| i != leader)
            .map(|i| cluster.node(i).client_addr())
            .collect();
        // Connect before the kill, so the measurement is of opsd, not of TCP set-up.
        let clients: Vec<opsd_client::SettingsApi> = survivors
            .iter()
            .flat_map(|a| [a.clone(), a.clone()])
            .map(|a| client::connect_with(&a, Some(Duration::from_secs(10))).settings)
            .collect();
        for c in &clients {
            let _ = c
                .clone()
                .get(opsd_tests::api::GetRequest {
                    key: "failover/none".into(),
                    stale: true,
                    ..Default::default()
                })
                .await;
        }
        let acked = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let killed_at = Instant::now();
        cluster.node(leader).kill9();
        let mut writers = Vec::new();
        for mut c in clients {
            let (acked, tx, seq) = (acked.clone(), tx.clone(), seq.clone());
            writers.push(tokio::spawn(async move {
                while !acked.load(Ordering::SeqCst) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let put = c
                        .put(PutRequest {
                            key: format!("failover/k{n:06}"),
                            value: "x".into(),
                            expected_revision: None,
                            ..Default::default()
                        })
                        .await;
                    if put.is_ok() {
                        let _ = tx.send(Instant::now());
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        drop(tx);
        let first = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "kill {}: no write was acknowledged within 60 s of killing the leader",
                    k + 1
                )
            });
        acked.store(true, Ordering::SeqCst);
        for w in writers {
            w.abort();
        }
        let took = first - killed_at;
        eprintln!(
            "[bench] failover {}/{kills}: killed {} -> first acknowledged write after {} ms",
            k + 1,
            cluster.node(leader).name(),
            took.as_millis()
        );
        times.push(took);
        let node = cluster.node(leader);
        node.restart();
        node.wait_ready(FORM_TIMEOUT).await;
        cluster.wait_caught_up(leader, FORM_TIMEOUT).await;
        cluster.leader().await;
        // Let the restarted node settle (heartbeats, leases) before the next kill.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    times
}

/// What the join measured.
#[derive(Debug)]
pub struct Join {
    /// How long writing the keys took (256 writers, through the leader).
    pub fill: Duration,
    /// From starting the new node's process to its applied index equal to the leader's.
    pub catchup: Duration,
    /// The applied index it caught up to.
    pub index: u64,
}

/// Fills the cluster with `keys` keys (256-byte values), then starts a new
/// node that joins through the members and measures from its process start
/// until its applied index equals the leader's.
pub async fn join_catchup(cluster: &mut Cluster, keys: u64) -> Join {
    let leader = cluster.leader().await;
    let leader_addr: std::net::SocketAddr = cluster.node(leader).client_addr().parse().expect("HOST:PORT");
    let fill = load::fill(System::Opsd(leader_addr), 256, keys, |i| format!("join/k{i:06}")).await;
    eprintln!(
        "[bench] wrote {keys} keys in {fill:.1?} ({:.0}/s)",
        keys as f64 / fill.as_secs_f64()
    );
    let config = cluster.node_config();
    let started = Instant::now();
    let new = cluster.spawn(config);
    loop {
        let leader_applied = cluster
            .node(leader)
            .status()
            .await
            .map(|s| s.applied_index)
            .unwrap_or(u64::MAX);
        if let Ok(s) = cluster.node(new).status().await {
            if s.node_id != 0 && s.applied_index >= leader_applied {
                return Join {
                    fill,
                    catchup: started.elapsed(),
                    index: s.applied_index,
                };
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the new node did not catch up within 600 s; its log: {}",
            cluster.node(new).log_path().display()
        );
        assert!(
            cluster.node(new).is_running(),
            "the new node exited:\n{}",
            cluster.node(new).log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the many-resources run measured.
#[derive(Debug, Default)]
pub struct Resources {
    /// RSS of the fresh node, idle, before anything was written.
    pub idle_rss_mb: f64,
    /// Resources created (the target, unless the time budget ran out first).
    pub created: u64,
    /// How long creating them took.
    pub create_time: Duration,
    /// RSS right after creating them.
    pub rss_after_create_mb: f64,
    /// From starting the process again (after a graceful stop) to its first
    /// successful linearizable `Resources.Get`.
    pub restart_serving: Duration,
    /// RSS once serving after the restart, after a 5 s settle.
    pub rss_after_restart_mb: f64,
}

/// A fresh one-node cluster: its idle RSS; then `target` resources of a
/// stable-initial kind created through the API by 256 concurrent clients
/// (stopping early if `budget` runs out); its RSS; then a graceful stop and
/// a restart, timed until it serves a linearizable read, and its RSS then.
pub async fn many_resources(target: u64, budget: Duration) -> Resources {
    let cluster = Cluster::start(1, Options::default()).await;
    let node = cluster.node(0);
    let addr = node.client_addr();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut out = Resources {
        idle_rss_mb: node.rss_mb(),
        ..Default::default()
    };
    res::apply_kind(&addr, kinds::PARKED)
        .await
        .expect("applying the parked kind");

    let sock: std::net::SocketAddr = addr.parse().expect("HOST:PORT");
    let workers = 256;
    let channels: Vec<Channel> = (0..workers / load::CLIENTS_PER_CONN)
        .map(|_| load::channel(sock))
        .collect();
    let next = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + budget;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut c = ResourcesClient::with_interceptor(
            channels[w % channels.len()].clone(),
            opsd_tests::access::credentials(&addr),
        );
        let (next, created) = (next.clone(), created.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= target || Instant::now() >= deadline {
                    return;
                }
                let mut tries = 0;
                loop {
                    let r = c
                        .create(CreateResourceRequest {
                            kind: "parked".into(),
                            name: format!("r{i:06}"),
                            spec: Some(res::spec_struct(serde_json::json!({"owner": "bench", "size": "small"}))),
                            labels: Default::default(),
                            reason: "bench".into(),
                        })
                        .await;
                    match r {
                        Ok(_) => break,
                        // A retried create whose first attempt committed.
                        Err(e) if e.code() == Code::AlreadyExists => break,
                        Err(e) => {
                            tries += 1;
                            assert!(tries < 20, "creating r{i:06} failed 20 times; last: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                created.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let progress = {
        let created = created.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let n = created.load(Ordering::Relaxed);
                eprintln!(
                    "[bench] created {n} resources in {:.0?} ({:.0}/s)",
                    started.elapsed(),
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    for t in tasks {
        t.await.expect("a create worker panicked");
    }
    progress.abort();
    out.created = created.load(Ordering::Relaxed);
    out.create_time = started.elapsed();
    eprintln!(
        "[bench] created {} resources in {:.1?} ({:.0}/s)",
        out.created,
        out.create_time,
        out.created as f64 / out.create_time.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.rss_after_create_mb = node.rss_mb();

    let exit = node.terminate(Duration::from_secs(120)).await;
    assert!(
        exit.status.success(),
        "the node did not stop cleanly: {:?}",
        exit.status
    );
    let probe = format!("r{:06}", out.created.saturating_sub(1));
    let restarted = Instant::now();
    node.restart();
    loop {
        let mut c = client::connect_with(&addr, Some(Duration::from_secs(5))).resources;
        let got = c
            .get(GetResourceRequest {
                kind: "parked".into(),
                name: probe.clone(),
                stale: false,
            })
            .await;
        if got.is_ok() {
            out.restart_serving = restarted.elapsed();
            break;
        }
        assert!(
            node.is_running(),
            "the node exited after the restart:\n{}",
            node.log_tail(40)
        );
        assert!(
            restarted.elapsed() < Duration::from_secs(600),
            "the node did not serve within 600 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    out.rss_after_restart_mb = node.rss_mb();
    out
}
