//! What the service scenarios and the load-balancer benchmark share: the
//! test backend (`opsd-test-backend`, the machines' program) and an image of
//! it, the load balancers' hosts and a port free on all of them, a tiny
//! HTTP/1.1 client (one request per connection, or kept alive), the machines
//! of a cluster as opsd reports them, and [`Traffic`]: clients that send
//! requests through every node's load balancer the whole time and record
//! every answer and failure.
//!
//! Everything stays on loopback: the load balancers listen on `127.0.0.2`,
//! `127.0.0.3`, ... and the machines on `127.x.y.z` ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::docs::shell_quote;

/// The test backend binary (see `src/bin/opsd-test-backend.rs`), from [`crate::bin_dir`].
pub fn backend_bin() -> std::path::PathBuf {
    crate::bin("opsd-test-backend")
}

/// The `start` command of an image whose machines run the test backend:
/// each answers `CLUSTER mINDEX` (e.g. `web-v1 m0`) on its `$PORT`, of
/// 127.0.0.1 and of every one of `hosts`: the nodes' advertise hosts, one of
/// which opsd records in the machine's address (a machine runs on whichever
/// node ran its cluster's step, and is not told that node's host).
pub fn backend_start(hosts: &[String]) -> String {
    let mut start = format!("exec {}", shell_quote(&backend_bin().display().to_string()));
    if !hosts.is_empty() {
        start.push_str(&format!(" --hosts {}", shell_quote(&hosts.join(","))));
    }
    start
}

/// The source directory of the backend image: a temp dir with a README (the
/// image copies it; the machines run the backend binary by absolute path).
pub fn backend_source() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("opsd-backend-src-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating the backend image's source dir: {e}"));
    let readme = dir.path().join("README");
    std::fs::write(&readme, "machines of this image run opsd-test-backend\n")
        .unwrap_or_else(|e| panic!("writing {}: {e}", readme.display()));
    dir
}

/// `n` load balancer hosts, `127.0.0.2` on: one per node, so that every
/// node's load balancer is a separate address. `Err` says why not (the
/// machine has only 127.0.0.1), for the skip helper.
pub fn lb_hosts(n: usize) -> Result<Vec<IpAddr>, String> {
    let hosts: Vec<IpAddr> = (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect();
    for h in &hosts {
        if let Err(e) = TcpListener::bind(SocketAddr::new(*h, 0)) {
            return Err(format!("cannot bind {h}, a load balancer host: {e}"));
        }
    }
    Ok(hosts)
}

/// A port free now on every one of `hosts`, below the ephemeral range, for
/// a service (every node's load balancer listens on it).
pub fn free_port(hosts: &[IpAddr]) -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()) << 7;
    for i in 0..512u64 {
        let port = 20000 + ((seed.wrapping_add(i.wrapping_mul(7919))) % 12000) as u16;
        if hosts
            .iter()
            .all(|h| TcpListener::bind(SocketAddr::new(*h, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {hosts:?} in 512 tries");
}

/// Splits an HTTP/1.1 response into its status code and body (the body is
/// what follows the head; the caller read the whole response).
fn split_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response ({} bytes): {text:?}", raw.len()))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// `GET path` on a fresh connection to `addr` (`Connection: close`), within
/// `timeout`: the body, trimmed, if the answer is 200; else what happened
/// (refused, reset, timed out, another status, an empty answer).
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
        if raw.is_empty() {
            return Err("closed without an answer".to_string());
        }
        match split_response(&raw)? {
            (200, body) => Ok(body.trim().to_string()),
            (status, body) => Err(format!("status {status}: {}", body.trim())),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r.map_err(|e| format!("{addr}: {e}")),
        Err(_) => Err(format!("{addr}: no answer within {timeout:?}")),
    }
}

/// One kept-alive HTTP/1.1 connection, for requests one after another
/// (the benchmark's closed-loop clients).
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl KeepAlive {
    /// Connects to `addr`; every request will be `GET path`.
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<KeepAlive, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(KeepAlive {
            stream,
            buf: Vec::with_capacity(4096),
            request: format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(),
        })
    }

    /// One request and its whole answer (by `Content-Length`); the body if
    /// the status is 200. After an `Err` the connection is unusable.
    pub async fn get(&mut self) -> Result<String, String> {
        self.stream
            .write_all(&self.request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let length = head
                    .split("\r\n")
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
                while self.buf.len() < end + 4 + length {
                    let n = self.stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("closed in the middle of an answer".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let rest = self.buf.split_off(end + 4 + length);
                let whole = std::mem::replace(&mut self.buf, rest);
                return match split_response(&whole)? {
                    (200, body) => Ok(body),
                    (status, body) => Err(format!("status {status}: {}", body.trim())),
                };
            }
            let n = self.stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed without an answer".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Waits until a fresh connection to `addr` answers with a body containing
/// `needle`; returns how long that took. Panics naming `what` and the last
/// answer after `timeout`.
pub async fn wait_answering(what: &str, addr: SocketAddr, needle: &str, timeout: Duration) -> Duration {
    crate::wait_until(what, timeout, Duration::from_millis(20), || async {
        let body = get(addr, "/", Duration::from_secs(2)).await?;
        body.contains(needle).then_some(()).ok_or(format!("answered {body:?}"))
    })
    .await
    .1
}

/// A machine of a cluster, as `outputs.machines` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    /// Its index in the cluster.
    pub index: u64,
    /// `HOST:PORT`, where it listens.
    pub address: SocketAddr,
    /// Its process id, if the provider records one (the local provider does).
    pub pid: Option<u32>,
}

/// The machines in a resource's outputs (`outputs.machines`, objects with
/// `index`, `address` and, for local machines, `pid`). Panics naming the
/// machine if one lacks an index or a valid address.
pub fn machines(outputs: &Value) -> Vec<Machine> {
    outputs["machines"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| Machine {
                    index: m["index"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("a machine without an index: {m}")),
                    address: m["address"]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| panic!("a machine without an address HOST:PORT: {m}")),
                    pid: m["pid"].as_u64().map(|p| p as u32),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One request [`Traffic`] sent: through which load balancer, when, and
/// what came back (the body, or why there was none).
#[derive(Clone, Debug)]
pub struct Sample {
    /// The index of the target (the node whose load balancer it went through).
    pub target: usize,
    /// When the connection was opened.
    pub sent: Instant,
    /// When the answer (or the failure) came.
    pub done: Instant,
    /// The body, or what went wrong.
    pub answer: Result<String, String>,
}

/// Clients that send `GET /` through each target (a node's load balancer)
/// the whole time, one task per target, a fresh connection per request,
/// recording every request. A target can be stopped on its own (before its
/// node is killed); [`Traffic::finish`] stops them all and returns what
/// they saw.
pub struct Traffic {
    targets: Vec<SocketAddr>,
    stops: Vec<Arc<AtomicBool>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Starts sending through every one of `targets`, pausing `pause`
    /// between requests of one target.
    pub fn start(targets: &[SocketAddr], pause: Duration) -> Traffic {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        for (i, addr) in targets.iter().copied().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let (stop2, samples2) = (stop.clone(), samples.clone());
            tasks.push(tokio::spawn(async move {
                while !stop2.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let answer = get(addr, "/", Duration::from_secs(5)).await;
                    let sample = Sample {
                        target: i,
                        sent,
                        done: Instant::now(),
                        answer,
                    };
                    samples2.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                    tokio::time::sleep(pause).await;
                }
            }));
            stops.push(stop);
        }
        Traffic {
            targets: targets.to_vec(),
            stops,
            samples,
            tasks,
        }
    }

    /// The targets, by index.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Stops sending through target `i` and waits until its last request is
    /// recorded (so that nothing is sent to it after this returns).
    pub async fn stop(&mut self, i: usize) {
        self.stops[i].store(true, Ordering::SeqCst);
        let task = std::mem::replace(&mut self.tasks[i], tokio::spawn(async {}));
        let _ = task.await;
    }

    /// Every request so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops every target and returns every request.
    pub async fn finish(mut self) -> Vec<Sample> {
        for i in 0..self.tasks.len() {
            self.stop(i).await;
        }
        self.samples()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for s in &self.stops {
            s.store(true, Ordering::SeqCst);
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Panics listing the failed requests (up to 10, with their target, when
/// they were sent relative to `origin`, and why) if there is any; `what`
/// says what was going on. Also requires at least one answer per target in
/// `targets`, so that a client that never ran does not pass for a clean one.
pub fn assert_no_failures(samples: &[Sample], targets: &[SocketAddr], origin: Instant, what: &str) {
    let failed: Vec<String> = samples
        .iter()
        .filter_map(|s| {
            s.answer.as_ref().err().map(|e| {
                format!(
                    "through {} at +{} ms: {e}",
                    targets[s.target],
                    s.sent.saturating_duration_since(origin).as_millis()
                )
            })
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed, e.g. {:#?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)]
    );
    for (i, t) in targets.iter().enumerate() {
        let n = samples.iter().filter(|s| s.target == i).count();
        assert!(n > 0, "{what}: no request went through {t}");
    }
}

/// Panics if any request through a target in `targets` (by index) that was
/// sent within `from..to` answered something without `needle`, listing up
/// to 10 of them with when they were sent relative to `from`; `what` says
/// what was expected.
pub fn assert_answers_between(
    samples: &[Sample],
    targets: &[usize],
    (from, to): (Instant, Instant),
    needle: &str,
    what: &str,
) {
    let sent: Vec<&Sample> = samples
        .iter()
        .filter(|s| targets.contains(&s.target) && s.sent >= from && s.sent < to)
        .collect();
    let wrong: Vec<String> = sent
        .iter()
        .filter_map(|s| match &s.answer {
            Ok(body) if !body.contains(needle) => Some(format!(
                "target {} at +{} ms: {body:?}",
                s.target,
                s.sent.saturating_duration_since(from).as_millis()
            )),
            _ => None,
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} requests did not answer {needle:?}, e.g. {:#?}",
        wrong.len(),
        sent.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// For each of `lbs`, concurrently: how long after `since` a fresh
/// connection first answered with `needle` (polling every 10 ms). Panics
/// naming the address and its last answer if one does not within `timeout`.
pub async fn switch_times(lbs: &[SocketAddr], needle: &str, since: Instant, timeout: Duration) -> Vec<Duration> {
    let pollers: Vec<_> = lbs
        .iter()
        .copied()
        .map(|addr| {
            let needle = needle.to_string();
            tokio::spawn(async move {
                let mut last = String::from("nothing yet");
                while since.elapsed() < timeout {
                    match get(addr, "/", Duration::from_secs(2)).await {
                        Ok(body) if body.contains(&needle) => return Ok(since.elapsed()),
                        Ok(body) => last = format!("answered {body:?}"),
                        Err(e) => last = e,
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(format!(
                    "{addr} did not answer {needle:?} within {timeout:?}; last: {last}"
                ))
            })
        })
        .collect();
    let mut times = Vec::new();
    for p in pollers {
        match p.await {
            Ok(Ok(t)) => times.push(t),
            Ok(Err(why)) => panic!("{why}"),
            Err(e) => panic!("a poller of the load balancers died: {e}"),
        }
    }
    times
}

/// An opsd cluster for service scenarios: `n` nodes whose load balancers
/// serve on [`lb_hosts`] (node `i` on `127.0.0.{i+2}`), a service port free on
/// all of them, the backend image's source dir, and opsctl pointed at the
/// nodes.
pub struct Bed {
    /// The opsd processes.
    pub cluster: crate::Cluster,
    /// Each node's `--lb-host`, by node index.
    pub hosts: Vec<IpAddr>,
    /// The port the scenario's service uses (free on every host at the start).
    pub port: u16,
    source: tempfile::TempDir,
}

impl Bed {
    /// Forms an `n`-node cluster with a load balancer host per node; `None`
    /// (after reporting the skip for `test`) if this machine cannot bind the
    /// hosts `127.0.0.2` on.
    pub async fn start(test: &str, n: usize) -> Option<Bed> {
        let hosts = match lb_hosts(n) {
            Ok(h) => h,
            Err(why) => {
                crate::skip(test, &why);
                return None;
            }
        };
        let port = free_port(&hosts);
        let options = crate::Options {
            lb_hosts: hosts.clone(),
            ..crate::Options::default()
        };
        let cluster = crate::Cluster::start(n, options).await;
        Some(Bed {
            cluster,
            hosts,
            port,
            source: backend_source(),
        })
    }

    /// Node `i`'s load balancer address for the scenario's port.
    pub fn lb(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.hosts[i], self.port)
    }

    /// The load balancer addresses of `nodes`.
    pub fn lbs(&self, nodes: &[usize]) -> Vec<SocketAddr> {
        nodes.iter().map(|&i| self.lb(i)).collect()
    }

    /// opsctl with `--addr` listing every node that serves now (opsctl moves
    /// past a node that does not answer).
    pub fn opsctl(&self) -> crate::Opsctl {
        let addrs: Vec<String> = self
            .cluster
            .serving()
            .into_iter()
            .map(|i| self.cluster.node(i).client_addr())
            .collect();
        crate::Opsctl { addr: addrs.join(",") }
    }

    /// Runs `opsctl ARGS` and requires success; returns its stdout and stderr.
    pub async fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.opsctl().run(args).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "opsctl {args:?} failed ({}):\nstderr: {stderr}\nstdout: {stdout}",
            out.status
        );
        (stdout, stderr)
    }

    /// Runs `opsctl ARGS`, which must fail with exit code 1; returns its stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.opsctl().run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "opsctl {args:?} should fail with exit code 1:\nstderr: {stderr}\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// `opsctl --output json get KIND/NAME`: the resource as JSON.
    pub async fn get(&self, resource: &str) -> Value {
        self.opsctl().json(&["get", resource]).await
    }

    /// Builds `image/NAME`, whose machines run the test backend.
    pub async fn backend_image(&self, name: &str) {
        let source = format!("source={}", self.source.path().display());
        let hosts: Vec<String> = self
            .cluster
            .nodes()
            .iter()
            .filter_map(|n| n.client_addr().parse::<SocketAddr>().ok())
            .map(|a| a.ip().to_string())
            .collect();
        let start = format!("start={}", backend_start(&hosts));
        self.ok(&[
            "create",
            &format!("image/{name}"),
            "--set",
            &source,
            "--set",
            &start,
            "--reason",
            "the backend image",
            "--wait",
        ])
        .await;
    }

    /// `opsctl create cluster/NAME --set image=IMAGE --set size=SIZE [--set
    /// checks=CHECKS] --wait`; returns the output, whatever the exit code.
    pub async fn create_cluster(
        &self,
        name: &str,
        image: &str,
        size: usize,
        checks: Option<&str>,
    ) -> std::process::Output {
        let (resource, image, size) = (
            format!("cluster/{name}"),
            format!("image={image}"),
            format!("size={size}"),
        );
        let checks = checks.map(|c| format!("checks={c}"));
        let mut args = vec!["create", &resource, "--set", &image, "--set", &size];
        if let Some(c) = &checks {
            args.extend(["--set", c.as_str()]);
        }
        args.extend(["--reason", "a cluster for the service", "--wait"]);
        self.opsctl().run(&args).await
    }

    /// A cluster of the backend image whose check passes on its own answers
    /// (`GET /` answers its name); must end `running`. Returns its machines.
    pub async fn running_cluster(&self, name: &str, image: &str, size: usize) -> Vec<Machine> {
        let checks = format!(r#"[{{"type":"http","path":"/","body":"{name}"}}]"#);
        let out = self.create_cluster(name, image, size, Some(&checks)).await;
        assert!(
            out.status.success(),
            "creating cluster/{name} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let c = self.get(&format!("cluster/{name}")).await;
        assert_eq!(c["state"], "running", "cluster/{name}: {c:#}");
        let ms = machines(&c["outputs"]);
        assert_eq!(ms.len(), size, "cluster/{name}'s machines: {c:#}");
        ms
    }

    /// `opsctl create service/NAME --set port=PORT --set cluster=CLUSTER
    /// --wait`, which must succeed and leave it `serving` `CLUSTER`; then
    /// waits until every node's load balancer answers with `CLUSTER`.
    pub async fn create_service(&self, name: &str, cluster: &str) -> Value {
        let port = format!("port={}", self.port);
        let cluster_set = format!("cluster={cluster}");
        self.ok(&[
            "create",
            &format!("service/{name}"),
            "--set",
            &port,
            "--set",
            &cluster_set,
            "--reason",
            "serve it",
            "--wait",
        ])
        .await;
        let s = self.get(&format!("service/{name}")).await;
        assert_eq!(s["state"], "serving", "service/{name}: {s:#}");
        assert_eq!(s["outputs"]["active"], cluster, "service/{name}: {s:#}");
        for i in self.cluster.serving() {
            wait_answering(
                &format!("the load balancer on {} to answer {cluster}", self.lb(i)),
                self.lb(i),
                cluster,
                Duration::from_secs(20),
            )
            .await;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::split_response;

    #[test]
    fn responses_split_into_status_and_body() {
        assert_eq!(
            split_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nweb-v1 m0"),
            Ok((200, "web-v1 m0".to_string()))
        );
        assert_eq!(
            split_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Ok((503, String::new()))
        );
        assert!(split_response(b"garbage").is_err());
        assert!(split_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }
}
