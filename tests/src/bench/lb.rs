//! The load-balancer figures: what the built-in load balancer costs a
//! client, and how soon a swap reaches every node.
//!
//! A 3-node opsd cluster whose load balancers serve on `127.0.0.2`, `.3` and
//! `.4`; two one-machine clusters of the test backend (`opsd-test-backend`),
//! `web-v1` and `web-v2`, each with an HTTP check on its own answer; and
//! `service/web` in front of `web-v1`. Then:
//!
//! - **throughput**: 64 closed-loop clients, each on its own kept-alive
//!   HTTP/1.1 connection, send `GET /` for the measured window, first
//!   straight to web-v1's one machine, then through node 1's load balancer
//!   (which proxies to that same machine), so the difference is the load
//!   balancer alone. Requests per second and p99, and their ratio. Then the
//!   same through HAProxy (Debian's, in TCP mode, its default threads), a
//!   peer proxy measured in the same run on the same cores, if installed.
//! - **swap propagation**: `swaps` swaps, alternately to web-v2 and back to
//!   web-v1 (`Resources.Do` of `swap` with `cluster`); each is acknowledged
//!   when `Resources.Watch` shows the service at rest again; from then,
//!   every node's load balancer is polled with fresh connections until it
//!   answers with the new cluster. The time is the slowest node's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opsd_tests::api::resources_client::ResourcesClient;
use opsd_tests::api::{DoRequest, GetResourceRequest};
use opsd_tests::service::{self, Bed, KeepAlive};

use super::figures::{open_watch, rested_after};
use super::load::{RowResult, Tally};

/// Concurrent connections of the throughput rows.
pub const CONNECTIONS: usize = 64;

/// What the load-balancer part measured.
#[derive(Debug, Default)]
pub struct LbFigures {
    /// Straight to the backend.
    pub direct: RowResult,
    /// Through a node's load balancer to the same backend.
    pub through_lb: RowResult,
    /// Through HAProxy to the same backend; `None` if HAProxy is missing.
    pub haproxy: Option<RowResult>,
    /// For each swap, from its acknowledgement to the last node routing new
    /// connections to the new cluster.
    pub swaps: Vec<Duration>,
}

impl LbFigures {
    /// Requests per second through the load balancer over straight to the
    /// backend: 1.0 means the load balancer costs nothing; 0 if the direct
    /// row did nothing.
    pub fn ratio(&self) -> f64 {
        if self.direct.ops_per_s > 0.0 {
            self.through_lb.ops_per_s / self.direct.ops_per_s
        } else {
            0.0
        }
    }
}

/// `connections` closed-loop clients on kept-alive connections to `addr`,
/// each sending `GET /` as soon as its last answer came; latencies of the
/// requests sent after `warmup` and answered within the next `measure`. A
/// client whose connection fails counts an error and reconnects.
pub async fn http_row(addr: SocketAddr, connections: usize, warmup: Duration, measure: Duration) -> RowResult {
    let start = Instant::now() + warmup;
    let end = start + measure;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut conn: Option<KeepAlive> = None;
            while Instant::now() < end {
                let sent = Instant::now();
                let outcome = match conn.as_mut() {
                    Some(c) => c.get().await.map(drop),
                    None => match KeepAlive::connect(addr, "/").await {
                        Ok(mut c) => {
                            let r = c.get().await.map(drop);
                            conn = Some(c);
                            r
                        }
                        Err(e) => Err(e),
                    },
                };
                if outcome.is_err() {
                    conn = None;
                }
                if tally.record((start, end), sent, outcome) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await.expect("an HTTP client task panicked"));
    }
    all.into_row(measure)
}

/// Does `swap` with `cluster` to `service/web` through `addr` and waits
/// (on a watch) until the service rests again, serving `cluster`. Returns
/// the moment that was seen: the swap's acknowledgement.
async fn swap_to(addr: &str, cluster: &str) -> Result<Instant, String> {
    let channel = opsd_tests::access::endpoint(addr).tcp_nodelay(true).connect_lazy();
    let mut client = ResourcesClient::with_interceptor(channel, opsd_tests::access::credentials(addr));
    let mut watch = open_watch(&mut client, "service", "web").await?;
    let change = client
        .r#do(DoRequest {
            kind: "service".into(),
            name: "web".into(),
            event: "swap".into(),
            args: [("cluster".to_string(), cluster.to_string())].into_iter().collect(),
            reason: "bench: swap".into(),
        })
        .await
        .map_err(|e| format!("do service/web swap cluster={cluster}: {:?}: {}", e.code(), e.message()))?
        .into_inner();
    if !rested_after(&mut watch, change.index).await? {
        return Err("the watch of service/web ended before the swap finished".into());
    }
    let acked = Instant::now();
    let r = client
        .get(GetResourceRequest {
            kind: "service".into(),
            name: "web".into(),
            stale: false,
        })
        .await
        .map_err(|e| format!("get service/web: {e}"))?
        .into_inner();
    let outputs = opsd_tests::resources::json_of(r.outputs.as_ref());
    if r.state != "serving" || outputs["active"] != cluster {
        return Err(format!(
            "the swap to {cluster} did not take: service/web is {} with outputs {outputs}",
            r.state
        ));
    }
    Ok(acked)
}

/// Runs the whole part (see the module's doc); `Err` says why it could not.
pub async fn measure(warmup: Duration, measure: Duration, swaps: usize) -> Result<LbFigures, String> {
    service::lb_hosts(3)?;
    let bed = Bed::start("opsd-bench lb", 3)
        .await
        .ok_or("the load balancer hosts are not available")?;
    bed.backend_image("backend").await;
    let v1 = bed.running_cluster("web-v1", "backend", 1).await;
    bed.running_cluster("web-v2", "backend", 1).await;
    bed.create_service("web", "web-v1").await;

    let direct = http_row(v1[0].address, CONNECTIONS, warmup, measure).await;
    eprintln!(
        "[bench] HTTP straight to the backend, {CONNECTIONS} connections: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        direct.ops_per_s, direct.p50_ms, direct.p99_ms, direct.errors
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let through_lb = http_row(bed.lb(1), CONNECTIONS, warmup, measure).await;
    eprintln!(
        "[bench] HTTP through the load balancer, {CONNECTIONS} connections: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        through_lb.ops_per_s, through_lb.p50_ms, through_lb.p99_ms, through_lb.errors
    );

    let haproxy = match Haproxy::start(v1[0].address) {
        Ok(proxy) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let row = http_row(proxy.addr, CONNECTIONS, warmup, measure).await;
            eprintln!(
                "[bench] HTTP through HAProxy, {CONNECTIONS} connections: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                row.ops_per_s, row.p50_ms, row.p99_ms, row.errors
            );
            Some(row)
        }
        Err(why) => {
            eprintln!("[bench] HTTP through HAProxy: not measured: {why}");
            None
        }
    };

    let lbs = bed.lbs(&[0, 1, 2]);
    let mut times = Vec::new();
    for k in 0..swaps {
        let to = if k % 2 == 0 { "web-v2" } else { "web-v1" };
        let leader = bed.cluster.leader().await;
        let addr = bed.cluster.node(leader).client_addr();
        let acked = swap_to(&addr, to).await?;
        let per_node = service::switch_times(&lbs, to, acked, Duration::from_secs(30)).await;
        let slowest = per_node.iter().copied().max().unwrap_or_default();
        eprintln!(
            "[bench] swap {}/{swaps} to {to}: every node routed new connections to it {} ms after the acknowledgement ({:?})",
            k + 1,
            slowest.as_millis(),
            per_node.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
        );
        times.push(slowest);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(LbFigures {
        direct,
        through_lb,
        haproxy,
        swaps: times,
    })
}

/// HAProxy in TCP mode in front of one backend, on a port of 127.0.0.1 of
/// its own, killed when dropped.
struct Haproxy {
    addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(backend: SocketAddr) -> Result<Haproxy, String> {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or("haproxy is not installed (.ci/bench-deps installs it)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("haproxy.cfg");
        let text = format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  \
             timeout server 60s\nfrontend bench\n  bind {addr}\n  default_backend web\nbackend web\n  \
             server m0 {backend}\n"
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let child = std::process::Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("{bin}: {e}"))?;
        let proxy = Haproxy { addr, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(format!("haproxy did not listen on {addr} within 5 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
