//! opsctl's streams go on through the next address when the node serving
//! them is killed: the client library reopens the stream elsewhere
//! (patiently, while no node answers) and re-reads what it missed.
//! - `do --wait` still ends with the run's real outcome;
//! - `settings watch` prints every change made while it was broken, once,
//!   and the changes after it.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use opsd_tests::opsctl::RUN_TIMEOUT;
use opsd_tests::{kinds, Cluster, Opsctl, Options};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

#[tokio::test]
async fn opsctl_wait_survives_its_node_dying() {
    let cluster = Cluster::start(3, Options::default()).await;
    // The doomed follower serves the watch; the leader executes the step.
    let (doomed, opsctl) = two_followers(&cluster).await;
    // The long step takes 3 s: long enough to kill a node in the middle of it.
    let kind_file = kinds::path("long_step.toml");
    opsctl.json(&["kinds", "apply", kind_file.to_str().unwrap()]).await;
    opsctl.json(&["create", "long", "s"]).await;

    let mut waiting = opsctl
        .command(&["--output", "json", "do", "long/s", "go", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start opsctl");
    // Kill the node once the event was done and the wait shows progress (the
    // run takes 3 s): the request itself is not what this test is about.
    let mut progress = BufReader::new(waiting.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    while !stderr.contains("idle -> working") {
        let line = tokio::time::timeout(RUN_TIMEOUT, progress.next_line())
            .await
            .expect("progress in time")
            .expect("reading opsctl's stderr")
            .unwrap_or_else(|| panic!("opsctl ended before showing progress:\n{stderr}"));
        stderr.push_str(&line);
        stderr.push('\n');
    }
    cluster.node(doomed).kill9();
    while let Some(line) = progress.next_line().await.expect("reading opsctl's stderr") {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let out = tokio::time::timeout(RUN_TIMEOUT, waiting.wait_with_output())
        .await
        .expect("the wait ends")
        .expect("opsctl's output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "opsctl do --wait failed ({}):\nstderr: {stderr}\nstdout: {stdout}",
        out.status
    );
    assert!(
        stderr.contains("broke") && stderr.contains("reconnecting"),
        "the wait did not go through a reconnect:\n{stderr}"
    );
    let run: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON run");
    assert_eq!(
        (run["outcome"].as_str(), run["to"].as_str()),
        (Some("succeeded"), Some("working")),
        "{run}"
    );
}

/// The addresses of two followers, the first to be killed: the leader stays up.
async fn two_followers(cluster: &Cluster) -> (usize, Opsctl) {
    let followers = cluster.followers().await;
    let addr = format!(
        "{},{}",
        cluster.node(followers[0]).client_addr(),
        cluster.node(followers[1]).client_addr()
    );
    (followers[0], Opsctl { addr })
}

#[tokio::test]
async fn opsctl_settings_watch_survives_its_node_dying() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let (doomed, watcher) = two_followers(&cluster).await;
    let writer = Opsctl {
        addr: cluster.node(leader).client_addr(),
    };
    let mut child = watcher
        .command(&["--output", "json", "settings", "watch", "sw/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start opsctl settings watch");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(RUN_TIMEOUT, lines.next_line())
            .await
            .expect("a watch line in time")
            .expect("reading the watch")
            .expect("the watch goes on");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"))
    };

    // Wait until the watch is in place: the first write it prints.
    let mut attempt = 0;
    loop {
        attempt += 1;
        writer
            .json(&["settings", "put", "sw/ready", &attempt.to_string()])
            .await;
        if tokio::time::timeout(Duration::from_millis(500), next()).await.is_ok() {
            break;
        }
        assert!(attempt < 60, "settings watch printed nothing");
    }
    writer.json(&["settings", "put", "sw/a", "1"]).await;
    let mut event = next().await;
    while event["key"] == "sw/ready" {
        event = next().await;
    }
    assert_eq!(
        (event["key"].as_str(), event["value"].as_str()),
        (Some("sw/a"), Some("1"))
    );

    // Changes while the watcher's node is dead, then after.
    cluster.node(doomed).kill9();
    writer.json(&["settings", "put", "sw/b", "2"]).await;
    writer.json(&["settings", "put", "sw/a", "3"]).await;
    writer.json(&["settings", "rm", "sw/ready"]).await;
    let mut seen: HashSet<(String, String, u64)> = HashSet::new();
    let mut want = vec![
        ("PUT", "sw/b", Some("2")),
        ("PUT", "sw/a", Some("3")),
        ("DELETE", "sw/ready", None),
    ];
    while !want.is_empty() {
        let event = next().await;
        let id = (
            event["type"].as_str().unwrap().to_string(),
            event["key"].as_str().unwrap().to_string(),
            event["revision"].as_u64().unwrap(),
        );
        assert!(seen.insert(id.clone()), "printed twice: {id:?}");
        want.retain(|(kind, key, value)| {
            !(event["type"] == *kind && event["key"] == *key && event["value"].as_str() == *value)
        });
    }
    writer.json(&["settings", "put", "sw/c", "4"]).await;
    let event = next().await;
    assert_eq!(
        (event["key"].as_str(), event["value"].as_str()),
        (Some("sw/c"), Some("4")),
        "{event}"
    );

    child.start_kill().expect("stop the watcher");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert!(
        stderr.contains("resumed through another node"),
        "no resume noted:\n{stderr}"
    );
}
