//! A real etcd cluster on loopback, the system opsd is measured against: one
//! `etcd` process per member, each on its own 127.x.y.z address (like the opsd
//! harness's nodes) with its own data dir under the bench dir, every setting
//! left at etcd's default (so it fsyncs its WAL on every commit, as opsd
//! fsyncs its log). Dropping the cluster kills every member.

use std::collections::hash_map::RandomState;
use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::Signal;
use tonic::transport::{Channel, Endpoint};

/// The client of etcd's v3 API generated from `proto/etcdserverpb/rpc.proto`
/// (KV.Put, KV.Range, Maintenance.Status only).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::maintenance_client::MaintenanceClient;
use pb::StatusRequest;

/// The etcd binary: `$ETCD_BIN` if set, else `etcd` from `PATH` (Debian's
/// `etcd-server` package installs it as `/usr/bin/etcd`).
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// The first line of `etcd --version` (e.g. `etcd Version: 3.4.23`), for the report.
pub fn version() -> anyhow::Result<String> {
    let out = Command::new(etcd_bin()).arg("--version").output().with_context(|| {
        format!(
            "running {} --version (is etcd installed? `make bench` installs it)",
            etcd_bin().display()
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("unknown").trim().to_string())
}

/// One etcd member: its addresses, files and process.
pub struct Member {
    /// The member's name, e.g. `e1`.
    pub name: String,
    /// The client URL's HOST:PORT (gRPC, plaintext HTTP/2).
    pub client: SocketAddr,
    /// The peer URL's HOST:PORT.
    pub peer: SocketAddr,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its stdout and stderr.
    pub log_path: PathBuf,
    child: Option<Child>,
}

/// A cluster of etcd processes, formed with a static `--initial-cluster`.
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<Member>,
}

/// A random number for spreading loopback addresses; nothing secret.
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A free loopback address with etcd's default ports (2379 for clients,
/// 2380 for peers), so each member looks like a machine of its own.
fn member_addresses(taken: &[SocketAddr]) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    for _ in 0..64 {
        let r = random();
        let ip = Ipv4Addr::new(
            127,
            1 + (r % 254) as u8,
            ((r >> 8) % 256) as u8,
            1 + ((r >> 16) % 254) as u8,
        );
        let client = SocketAddr::from((ip, 2379));
        let peer = SocketAddr::from((ip, 2380));
        if taken.contains(&client) {
            continue;
        }
        if TcpListener::bind(client).is_ok() && TcpListener::bind(peer).is_ok() {
            return Ok((client, peer));
        }
    }
    bail!("could not find a free loopback address for an etcd member in 64 tries")
}

/// A channel to `addr` whose every request times out after `timeout`.
pub fn channel(addr: SocketAddr, timeout: Duration) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI authority")
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .timeout(timeout)
        .connect_lazy()
}

impl EtcdCluster {
    /// Starts `n` members under `dir` (`dir/e1`, ...) and waits until every
    /// one answers and names the same leader.
    pub async fn start(n: usize, dir: &Path) -> anyhow::Result<EtcdCluster> {
        let started = Instant::now();
        let mut addrs = Vec::new();
        for _ in 0..n {
            let taken: Vec<SocketAddr> = addrs.iter().map(|(c, _)| *c).collect();
            addrs.push(member_addresses(&taken)?);
        }
        let initial = addrs
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("e{}=http://{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("opsd-bench-{:x}", random());
        let mut cluster = EtcdCluster { members: Vec::new() };
        for (i, (client, peer)) in addrs.into_iter().enumerate() {
            let name = format!("e{}", i + 1);
            let home = dir.join(&name);
            std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
            let mut member = Member {
                data_dir: home.join("data"),
                log_path: home.join("etcd.log"),
                name,
                client,
                peer,
                child: None,
            };
            let args = vec![
                format!("--name={}", member.name),
                format!("--data-dir={}", member.data_dir.display()),
                format!("--listen-client-urls=http://{client}"),
                format!("--advertise-client-urls=http://{client}"),
                format!("--listen-peer-urls=http://{peer}"),
                format!("--initial-advertise-peer-urls=http://{peer}"),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".to_string(),
                format!("--initial-cluster-token={token}"),
                "--logger=zap".to_string(),
                "--log-outputs=stderr".to_string(),
            ];
            member.child = Some(spawn(&member.log_path, &args)?);
            cluster.members.push(member);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match cluster.leader().await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "the etcd cluster did not form within 60 s; logs under {}",
                        dir.display()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let members: Vec<String> = cluster
            .members
            .iter()
            .map(|m| format!("{} (client {}, peer {})", m.name, m.client, m.peer))
            .collect();
        eprintln!(
            "[bench] {n}-member etcd cluster formed in {:?}: {}",
            started.elapsed(),
            members.join(", ")
        );
        Ok(cluster)
    }

    /// The index of the member that leads, once every member answers
    /// `Maintenance.Status` naming the same leader.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for m in &self.members {
            let mut c = MaintenanceClient::new(channel(m.client, Duration::from_secs(2)));
            let s = c
                .status(StatusRequest {})
                .await
                .map_err(|e| anyhow!("etcd member {} ({}): status: {e}", m.name, m.client))?
                .into_inner();
            ids.push(s.header.map(|h| h.member_id).unwrap_or(0));
            leaders.push(s.leader);
        }
        let leader = leaders[0];
        if leader == 0 || leaders.iter().any(|l| *l != leader) {
            bail!("etcd members do not agree on a leader: {leaders:?}");
        }
        ids.iter()
            .position(|id| *id == leader)
            .ok_or_else(|| anyhow!("etcd leader {leader:x} is not one of the members {ids:x?}"))
    }

    /// Kills every member (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts etcd with `args`, its output appended to `log_path`. Like the opsd
/// harness, the child gets SIGKILL if the bench dies, so no run leaves orphans.
fn spawn(log_path: &Path, args: &[String]) -> anyhow::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let err = log.try_clone().with_context(|| format!("{}", log_path.display()))?;
    let mut cmd = Command::new(etcd_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err));
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn().with_context(|| {
        format!(
            "starting {} (is etcd installed? `make bench` installs it)",
            etcd_bin().display()
        )
    })
}
