//! `opsctl do --wait` keeps waiting through the next address when the node
//! serving its watch is killed mid-run: the client library reopens the
//! stream elsewhere (patiently, while no node answers) and the history is
//! re-read, so the wait still ends with the run's real outcome.

use std::process::Stdio;
use std::time::Duration;

use opsd_tests::opsctl::RUN_TIMEOUT;
use opsd_tests::{Cluster, Opsctl, Options};

/// A kind whose one work state takes a few seconds: long enough to kill a
/// node in the middle of it.
const SLOW: &str = r#"
kind = "slow"
initial = "ready"
provider = "exec"

[states.ready]
on = { go = "going" }

[states.going]
work = true
run = 'sleep 3; echo done'
next = "ready"
fail = "ready"
"#;

#[tokio::test]
async fn opsctl_wait_survives_its_node_dying() {
    let cluster = Cluster::start(3, Options::default()).await;
    let followers = cluster.followers().await;
    let (doomed, other) = (followers[0], followers[1]);
    // The doomed follower first, so it serves the watch; the leader, which
    // executes the step, stays up.
    let opsctl = Opsctl {
        addr: format!(
            "{},{}",
            cluster.node(doomed).client_addr(),
            cluster.node(other).client_addr()
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    let kind_file = dir.path().join("slow.toml");
    std::fs::write(&kind_file, SLOW).unwrap();
    opsctl.json(&["kinds", "apply", kind_file.to_str().unwrap()]).await;
    opsctl.json(&["create", "slow", "s"]).await;

    let waiting = opsctl
        .command(&["--output", "json", "do", "slow/s", "go", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start opsctl");
    // The run has started and the watch is open when the node dies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.node(doomed).kill9();

    let out = tokio::time::timeout(RUN_TIMEOUT, waiting.wait_with_output())
        .await
        .expect("the wait ends")
        .expect("opsctl's output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
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
        (Some("succeeded"), Some("going")),
        "{run}"
    );
}
