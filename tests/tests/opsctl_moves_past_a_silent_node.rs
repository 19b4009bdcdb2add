//! `opsctl --addr STOPPED,LIVE` with the first node SIGSTOPped (its kernel
//! still accepts TCP connections, and nothing answers):
//! - reads (`status`, `settings get`) give up on the silent node after a
//!   short wait and are answered by the live one;
//! - a write goes to the live node: the stopped node never completes the TLS
//!   handshake, so the write was certainly not sent to it (a write that did
//!   reach a node and got no answer is not sent elsewhere: the client
//!   library's unit tests cover that, against a server that accepts and
//!   never answers).

use std::time::{Duration, Instant};

use opsd_tests::{Cluster, Opsctl, Options};

#[tokio::test]
async fn opsctl_moves_past_a_silent_node() {
    let cluster = Cluster::start(3, Options::default()).await;
    // Stop a follower: the other two keep a quorum, so the live node answers
    // linearizable reads at once.
    let followers = cluster.followers().await;
    let (stopped, live) = (cluster.node(followers[0]), cluster.node(followers[1]));
    let direct = Opsctl {
        addr: live.client_addr(),
    };
    direct.json(&["settings", "put", "silent/read", "before"]).await;
    let opsctl = Opsctl {
        addr: format!("{},{}", stopped.client_addr(), live.client_addr()),
    };

    stopped.sigstop();

    let started = Instant::now();
    let status = opsctl.json(&["status"]).await;
    let took = started.elapsed();
    assert_eq!(status["node_id"].as_u64(), Some(live.id()), "{status}");
    // The old behaviour was 15 s, then a failure.
    assert!(took < Duration::from_secs(10), "status took {took:?}");

    let started = Instant::now();
    let got = opsctl.json(&["settings", "get", "silent/read"]).await;
    let took = started.elapsed();
    assert_eq!(got["value"].as_str(), Some("before"), "{got}");
    assert!(took < Duration::from_secs(10), "settings get took {took:?}");

    // A table read says nothing about writes on its way.
    let out = opsctl.run(&["settings", "get", "silent/read"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "settings get failed: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("before"));
    assert!(!stderr.contains("applied"), "{stderr}");

    // A write: the stopped node never finished the handshake, so the write
    // was not sent there; the live node takes it.
    let started = Instant::now();
    direct.json(&["settings", "get", "silent/read"]).await;
    let put = opsctl.json(&["settings", "put", "silent/write", "x"]).await;
    let took = started.elapsed();
    assert!(put["revision"].as_u64().is_some_and(|r| r > 0), "{put}");
    assert!(took < Duration::from_secs(10), "settings put took {took:?}");
    let got = direct.json(&["settings", "get", "silent/write"]).await;
    assert_eq!(got["value"].as_str(), Some("x"), "{got}");

    stopped.sigcont();
    // The resumed node answers again, first in the list.
    let status = opsctl.json(&["status"]).await;
    assert_eq!(status["node_id"].as_u64(), Some(stopped.id()), "{status}");
}
