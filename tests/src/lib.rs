//! The end-to-end harness: real `opsd` processes on loopback, each with its
//! own rocksdb data dir in a temp dir and its own log file, driven through the
//! real gRPC API and real signals (SIGKILL, SIGSTOP/SIGCONT, SIGTERM). No mocks:
//! what the scenarios under `tests/` prove is what an operator would see.
//!
//! The pieces:
//! - [`Cluster`]: forms an n-node cluster the way an operator does (bootstrap
//!   one node, join the rest), finds the leader, and puts/gets with the
//!   documented retry rule. Dropping it kills every process; a failing test
//!   prints every node's log tail and keeps the temp dir.
//! - [`Node`]: one process, started from a [`NodeConfig`]: `kill9`, `sigstop`,
//!   `sigcont`, `terminate`, `restart` (same flags, same data dir), `status`,
//!   `client`, and its log.
//! - [`client`]: gRPC clients of one address and retrying settings calls,
//!   usable from spawned tasks.
//! - [`tmpfs`]: a small filesystem of its own (root only), for a data dir on
//!   a disk that fills up.
//! - [`docker`]: for the docker provider's scenarios: whether Docker is
//!   usable here, a registry-free test image, and what an opsd cluster made
//!   on the engine, listed and removed by label.
//! - [`moto`]: a real EC2 API server (moto, from the project's virtualenv)
//!   per test, read with EC2's own list calls, and the loopback endpoints
//!   that hold an answer back or never answer, for the EC2 provider's tests.
//! - [`service`]: the test backend machines run (`opsd-test-backend`), the
//!   load balancers' hosts, a small HTTP client, and traffic through every
//!   node's load balancer, for the service scenarios and the benchmark.
//!
//! The binaries come from `$OPSD_BIN_DIR` if set, else `<workspace>/target/debug`;
//! build them first with `cargo build --workspace --bins` (`make test` does).
//!
//! A minimal scenario:
//!
//! ```no_run
//! # async fn demo() {
//! use opsd_tests::{Cluster, Options};
//! let cluster = Cluster::start(3, Options::default()).await;
//! let leader = cluster.leader().await;
//! let follower = cluster.followers().await[0];
//! let put = cluster.put(follower, "db/url", "postgres://db").await.unwrap();
//! cluster.node(leader).kill9();
//! let new_leader = cluster.wait_for_leader(&[], opsd_tests::FORM_TIMEOUT).await;
//! let got = cluster.get(new_leader, "db/url", false).await.unwrap();
//! assert_eq!(got.setting.unwrap().mod_revision, put.revision);
//! # }
//! ```

pub mod access;
mod addresses;
pub mod client;
mod cluster;
pub mod docker;
pub mod docs;
pub mod kinds;
pub mod moto;
pub mod nemesis;
mod node;
pub mod opsctl;
pub mod opsd_containers;
pub mod resources;
pub mod service;
mod skip;
pub mod tmpfs;
pub mod tour;

use std::path::PathBuf;

pub use client::Clients;
pub use cluster::{Cluster, Options, FORM_TIMEOUT};
pub use node::{Exit, Node, NodeConfig};
pub use opsctl::Opsctl;
/// The generated client API types (`opsd.v1`), re-exported so scenarios and
/// the harness name the same types.
pub use opsd_proto::v1 as api;
pub use skip::{skip, skips_file, strict};

/// The directory the opsd binaries are taken from: `$OPSD_BIN_DIR` if set
/// (made absolute: the nodes run steps in directories of their own), else
/// the workspace's `target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("OPSD_BIN_DIR") {
        Some(dir) if !dir.is_empty() => std::path::absolute(&dir).unwrap_or_else(|_| PathBuf::from(dir)),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug"),
    }
}

/// The workspace's `target` directory, where results and the skip list are written.
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target")
}

/// The path of the binary `name` in [`bin_dir`]. Panics with what to run if it
/// is not there, so a missing build is not mistaken for a failing daemon.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} does not exist: build the binaries first with `cargo build --workspace --bins` \
             (or set OPSD_BIN_DIR to the directory holding `{name}`)",
            path.display()
        );
    }
    path
}

/// The `opsd` daemon binary (see [`bin`]).
pub fn opsd_bin() -> PathBuf {
    bin("opsd")
}

/// The `opsctl` CLI binary (see [`bin`]).
pub fn opsctl_bin() -> PathBuf {
    bin("opsctl")
}

/// A loopback IP on which every one of `ports` is free now (reserved in this
/// process), for scripts that keep the documented ports and only change the
/// host; `None` if there is none.
pub fn loopback_host(ports: &[u16]) -> Option<std::net::Ipv4Addr> {
    addresses::loopback_host(ports)
}

/// A loopback address that nothing listens on now: for "nobody answers" tests.
pub fn closed_address() -> std::net::SocketAddr {
    addresses::closed_address()
}

/// The bytes of every file under `dir` (their lengths, as `du
/// --apparent-size` counts them); what cannot be read counts 0.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Polls `check` every `every` until it returns `Some`, or panics after
/// `timeout` naming `what` and the last thing `check` said (its `Err`).
/// Returns the value and how long it took.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut check: F,
) -> (T, std::time::Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = std::time::Instant::now();
    loop {
        match check().await {
            Ok(v) => return (v, started.elapsed()),
            Err(why) if started.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {why}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}
