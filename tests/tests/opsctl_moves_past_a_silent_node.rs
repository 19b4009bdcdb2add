//! `opsctl --addr STOPPED,LIVE` with the first node SIGSTOPped (its kernel
//! still accepts connections, so connecting succeeds and nothing answers):
//! - reads (`status`, `settings get`) give up on the silent node after a
//!   short wait and are answered by the live one;
//! - a write is not sent to the live node (it may still commit on the stopped
//!   one): it fails naming the stopped address and saying its outcome is
//!   unknown.

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

    // A write got no answer from the stopped node: it is not sent to the live one.
    let stderr = opsctl.fails(&["settings", "put", "silent/write", "x"], 1).await;
    assert!(
        stderr.contains(&stopped.client_addr()) && stderr.contains("outcome is unknown"),
        "{stderr}"
    );
    let (stopped_addr, live_addr) = (stopped.client_addr(), live.client_addr());
    assert!(
        stopped_addr.contains(&live_addr) || !stderr.contains(&live_addr),
        "{stderr}"
    );
    // Nothing reached the live node (the stopped one may still apply it once
    // it resumes: that is what "unknown" means).
    let missing = direct.fails(&["settings", "get", "silent/write"], 1).await;
    assert!(missing.contains("not found"), "{missing}");

    stopped.sigcont();
    // The resumed node answers again, first in the list.
    let status = opsctl.json(&["status"]).await;
    assert_eq!(status["node_id"].as_u64(), Some(stopped.id()), "{status}");
}
