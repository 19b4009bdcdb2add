//! The `opsctl` binary against one real opsd node, as a script would use it:
//! `--output json` documents for `status` and the settings round trip
//! (put/get/ls/rm, compare-and-set), a missing key failing with exit code 1 and
//! its message on stderr only, `settings watch` streaming one JSON object per
//! change and stopping cleanly on Ctrl-C, and `--addr` failing over past a dead
//! address to a live one (and naming every address when none answers).

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use opsd_tests::opsctl::RUN_TIMEOUT;
use opsd_tests::{closed_address, Cluster, Opsctl, Options};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// A field of a JSON object as u64, failing the test with the whole object if absent.
fn u64_of(doc: &Value, field: &str) -> u64 {
    doc[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {doc}"))
}

/// A field of a JSON object as a string, failing the test with the whole object if absent.
fn str_of<'a>(doc: &'a Value, field: &str) -> &'a str {
    doc[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {doc}"))
}

/// The output lines of `opsctl settings watch`.
type WatchLines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// The key written until the watcher is known to be watching; its events are
/// skipped when checking what the watcher saw.
const READY_KEY: &str = "cli/ready";

/// Reads the watcher's line within `timeout`: `None` on timeout.
async fn watch_line(lines: &mut WatchLines, timeout: Duration) -> Option<String> {
    // `next_line` is cancel safe, so timing out loses no line.
    match tokio::time::timeout(timeout, lines.next_line()).await {
        Ok(Ok(Some(line))) => Some(line),
        Ok(Ok(None)) => panic!("settings watch ended its output early"),
        Ok(Err(e)) => panic!("reading settings watch output: {e}"),
        Err(_) => None,
    }
}

/// Writes [`READY_KEY`] until the watcher prints an event, so the watch is
/// known to be in place before the changes the test checks; then deletes it.
async fn wait_until_watching(opsctl: &Opsctl, lines: &mut WatchLines) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        opsctl.json(&["settings", "put", READY_KEY, &attempt.to_string()]).await;
        if watch_line(lines, Duration::from_millis(500)).await.is_some() {
            break;
        }
        assert!(attempt < 100, "settings watch printed nothing after {attempt} writes");
    }
    opsctl.json(&["settings", "rm", READY_KEY]).await;
}

/// The watcher's next event other than one for [`READY_KEY`], failing after a timeout.
async fn next_event(lines: &mut WatchLines) -> Value {
    loop {
        let line = watch_line(lines, RUN_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("settings watch printed nothing in {RUN_TIMEOUT:?}"));
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("watch line is not one JSON object ({e}): {line}"));
        if event["key"] != READY_KEY {
            return event;
        }
    }
}

/// Sends Ctrl-C (SIGINT) to the watcher and checks that it exits 0.
async fn interrupt(mut watcher: Child) {
    let pid = watcher.id().expect("the watcher is still running");
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).expect("sending SIGINT to settings watch");
    match tokio::time::timeout(RUN_TIMEOUT, watcher.wait()).await {
        Ok(Ok(status)) => assert!(status.success(), "settings watch exited with {status} on Ctrl-C"),
        Ok(Err(e)) => panic!("waiting for settings watch: {e}"),
        Err(_) => panic!("settings watch did not stop within {RUN_TIMEOUT:?} of Ctrl-C"),
    }
}

#[tokio::test]
async fn opsctl_round_trips_settings_and_fails_over_past_a_dead_address() {
    let cluster = Cluster::start(1, Options::default()).await;
    let node = cluster.node(0);
    let live = node.client_addr();
    let opsctl = Opsctl { addr: live.clone() };

    // status: this node leads its one-voter cluster, and every field is there.
    let status = opsctl.json(&["status"]).await;
    for field in [
        "node_id",
        "cluster_id",
        "leader_id",
        "leader_addr",
        "term",
        "role",
        "last_log_index",
        "applied_index",
        "snapshot_index",
        "purged_index",
        "version",
        "members",
    ] {
        assert!(status.get(field).is_some(), "status has no {field}: {status}");
    }
    assert_eq!(u64_of(&status, "node_id"), node.id(), "{status}");
    assert_eq!(u64_of(&status, "leader_id"), node.id(), "{status}");
    assert!(u64_of(&status, "term") >= 1, "{status}");
    assert!(u64_of(&status, "applied_index") >= 1, "{status}");
    let members = status["members"].as_array().expect("members is an array");
    assert_eq!(members.len(), 1, "{status}");
    assert_eq!(u64_of(&members[0], "id"), node.id(), "{status}");
    assert_eq!(str_of(&members[0], "addr"), live, "{status}");
    assert_eq!(members[0]["voter"], Value::Bool(true), "{status}");

    assert_eq!(members[0]["role"], "leader", "{status}");

    // `cluster members` is the leader's view: the same members, and what the
    // leader knows of each (itself: reachable, no lag).
    let listed = opsctl.json(&["cluster", "members"]).await;
    let identity = |m: &Value| {
        (
            m["id"].clone(),
            m["addr"].clone(),
            m["peer_addr"].clone(),
            m["role"].clone(),
        )
    };
    let listed_members = listed.as_array().expect("cluster members prints an array");
    assert_eq!(
        listed_members.iter().map(identity).collect::<Vec<_>>(),
        members.iter().map(identity).collect::<Vec<_>>(),
        "cluster members and status disagree: {listed}"
    );
    assert_eq!(listed[0]["reachability"], "reachable", "{listed}");
    assert_eq!(listed[0]["lag"], 0, "{listed}");

    // A watcher started now sees every change below.
    let mut watcher = opsctl
        .command(&["--output", "json", "settings", "watch", "cli/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting opsctl settings watch");
    let mut events = BufReader::new(watcher.stdout.take().expect("the watcher's stdout")).lines();
    wait_until_watching(&opsctl, &mut events).await;

    // put: the first write has no previous value; the second returns the first.
    let first = opsctl.json(&["settings", "put", "cli/greeting", "hello world"]).await;
    assert_eq!(first["previous"], Value::Null, "{first}");
    let first_rev = u64_of(&first, "revision");
    let second = opsctl.json(&["settings", "put", "cli/greeting", "-hi"]).await;
    let second_rev = u64_of(&second, "revision");
    assert!(second_rev > first_rev, "{first} then {second}");
    assert_eq!(str_of(&second["previous"], "value"), "hello world", "{second}");
    opsctl.json(&["settings", "put", "other/key", "elsewhere"]).await;

    // get: the whole setting in JSON, the bare value in table mode.
    let got = opsctl.json(&["settings", "get", "cli/greeting"]).await;
    assert_eq!(str_of(&got, "key"), "cli/greeting", "{got}");
    assert_eq!(str_of(&got, "value"), "-hi", "{got}");
    assert_eq!(u64_of(&got, "create_revision"), first_rev, "{got}");
    assert_eq!(u64_of(&got, "mod_revision"), second_rev, "{got}");
    assert_eq!(u64_of(&got, "version"), 2, "{got}");
    let bare = opsctl.run(&["settings", "get", "--stale", "cli/greeting"]).await;
    assert!(bare.status.success(), "{bare:?}");
    assert_eq!(String::from_utf8_lossy(&bare.stdout), "-hi\n");

    // compare-and-set against a stale revision fails and changes nothing.
    let stale = first_rev.to_string();
    let refused = opsctl
        .fails(
            &["settings", "put", "cli/greeting", "lost", "--expected-revision", &stale],
            1,
        )
        .await;
    assert!(refused.starts_with("error: "), "{refused}");
    let cas = opsctl
        .json(&[
            "settings",
            "put",
            "cli/greeting",
            "won",
            "--expected-revision",
            &second_rev.to_string(),
        ])
        .await;
    let cas_rev = u64_of(&cas, "revision");

    // ls: an array in key order, only under the prefix.
    let another_rev = u64_of(&opsctl.json(&["settings", "put", "cli/another", "x"]).await, "revision");
    let listing = opsctl.json(&["settings", "ls", "cli/"]).await;
    let keys: Vec<&str> = listing
        .as_array()
        .unwrap_or_else(|| panic!("settings ls is not an array: {listing}"))
        .iter()
        .map(|s| str_of(s, "key"))
        .collect();
    assert_eq!(keys, ["cli/another", "cli/greeting"], "{listing}");
    assert_eq!(str_of(&listing[1], "value"), "won", "{listing}");
    let everything = opsctl.json(&["settings", "ls"]).await;
    assert_eq!(everything.as_array().map(Vec::len), Some(3), "{everything}");

    // rm: the revision of the delete and the setting as it was.
    let removed = opsctl.json(&["settings", "rm", "cli/greeting"]).await;
    let rm_rev = u64_of(&removed, "revision");
    assert!(rm_rev > cas_rev, "{removed}");
    assert_eq!(str_of(&removed["previous"], "value"), "won", "{removed}");

    // A missing key: exit 1, the server's message on stderr, nothing on stdout.
    for output in ["json", "table"] {
        let stderr = opsctl
            .fails(&["--output", output, "settings", "get", "cli/greeting"], 1)
            .await;
        assert!(
            stderr.contains(r#"setting "cli/greeting" not found"#),
            "stderr of a missing key: {stderr}"
        );
    }
    opsctl.fails(&["settings", "rm", "cli/greeting"], 1).await;

    // The watcher saw each change under cli/ in order, and nothing else.
    let expected = [
        ("PUT", "cli/greeting", Some("hello world"), first_rev),
        ("PUT", "cli/greeting", Some("-hi"), second_rev),
        ("PUT", "cli/greeting", Some("won"), cas_rev),
        ("PUT", "cli/another", Some("x"), another_rev),
        ("DELETE", "cli/greeting", None, rm_rev),
    ];
    for (kind, key, value, revision) in expected {
        let event = next_event(&mut events).await;
        assert_eq!(str_of(&event, "type"), kind, "{event}");
        assert_eq!(str_of(&event, "key"), key, "{event}");
        assert_eq!(event["value"].as_str(), value, "{event}");
        assert_eq!(u64_of(&event, "revision"), revision, "{event}");
    }
    interrupt(watcher).await;

    // --addr failover: a dead address first, then the live one.
    let dead = closed_address().to_string();
    let failover = Opsctl {
        addr: format!("{dead},{live}"),
    };
    let status = failover.json(&["status"]).await;
    assert_eq!(u64_of(&status, "node_id"), node.id(), "{status}");
    failover.json(&["settings", "put", "cli/failover", "ok"]).await;
    let got = failover.json(&["settings", "get", "cli/failover"]).await;
    assert_eq!(str_of(&got, "value"), "ok", "{got}");

    // No address answers: exit 1, and the error names every address tried.
    let also_dead = closed_address().to_string();
    let nobody = Opsctl {
        addr: format!("{dead},{also_dead}"),
    };
    let stderr = nobody.fails(&["--output", "json", "status"], 1).await;
    assert!(
        stderr.contains(&dead) && stderr.contains(&also_dead),
        "the error should name {dead} and {also_dead}: {stderr}"
    );

    // A usage error is exit code 2.
    opsctl.fails(&["settings", "get"], 2).await;
}
