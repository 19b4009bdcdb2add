//! Settings in scope: global, kind and resource settings merge, the most
//! specific winning; `opsctl settings effective` shows each winner and where
//! it came from; an exec step reads them on stdin; the machines of a local
//! cluster get them in their environment (under spec.env and opsd's own);
//! and `opsctl shell cluster/c -- CMD` runs CMD in a machine's directory with
//! that environment, exiting with its code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opsd_tests::opsctl::Opsctl;
use opsd_tests::resources as res;
use opsd_tests::{kinds, wait_until, Cluster, Options};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The variables of an `env` dump, NAME=VALUE a line.
fn env_of(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn put(addr: &str, key: &str, value: &str) {
    opsd_tests::client::put(addr, key, value)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

fn canonical(path: &str) -> PathBuf {
    Path::new(path).canonicalize().unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn settings_in_scope_reach_steps_and_machines() {
    if std::process::Command::new("python3").arg("--version").output().is_err() {
        opsd_tests::skip(
            "settings_in_scope_reach_steps_and_machines",
            "python3 is not installed (the machines run its HTTP server)",
        );
        return;
    }
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    let opsctl = Opsctl { addr: addr.clone() };
    for (key, value) in [
        ("scope/global/LEVEL", "global"),
        ("scope/global/GREETING", "hello"),
        ("scope/kind/echo/LEVEL", "kind"),
        ("scope/kind/echo/db/url", "postgres://db:5432/echo"),
        ("scope/resource/echo/one/LEVEL", "resource"),
        ("scope/resource/echo/two/ONLY_TWO", "not for one"),
        ("scope/kind/other/LEVEL", "not for echo"),
        ("LEVEL", "not in any scope"),
    ] {
        put(&addr, key, value).await;
    }

    // Only a resource that exists has settings in scope.
    let stderr = opsctl.fails(&["settings", "effective", "echo/one"], 1).await;
    assert!(stderr.contains("resource echo/one not found"), "{stderr}");
    let stderr = opsctl.fails(&["settings", "effective", "echo/bad name"], 1).await;
    assert!(stderr.contains("name: "), "{stderr}");

    // An exec step reads them on stdin (its outputs are what it read).
    res::apply_kind(&addr, kinds::STDIN_ECHO).await.expect("apply the kind");
    res::create(&addr, "echo", "one", json!({}))
        .await
        .expect("create echo/one");
    let one = res::wait_resting(&addr, "echo", "one", WAIT).await;
    assert_eq!(one.state, "read", "{one:?}");
    let read = res::json_of(one.outputs.as_ref());
    assert_eq!(
        read["settings"],
        json!({"GREETING": "hello", "LEVEL": "resource", "db/url": "postgres://db:5432/echo"}),
        "{read:#}"
    );

    // `settings effective` shows each winner and its source.
    let effective = opsctl.json(&["settings", "effective", "echo/one"]).await;
    assert_eq!(
        effective,
        json!([
            {"key": "GREETING", "value": "hello", "source": "scope/global/GREETING", "secret": false},
            {"key": "LEVEL", "value": "resource", "source": "scope/resource/echo/one/LEVEL", "secret": false},
            {"key": "db/url", "value": "postgres://db:5432/echo", "source": "scope/kind/echo/db/url", "secret": false},
        ])
    );
    let out = opsctl.run(&["settings", "effective", "echo/one"]).await;
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["KEY", "VALUE", "FROM"], "{table}");
    assert!(
        rows.contains(&vec!["LEVEL", "resource", "scope/resource/echo/one/LEVEL"]),
        "{table}"
    );
    // A change is seen by the next step.
    put(&addr, "scope/resource/echo/one/LEVEL", "changed").await;
    res::do_event(&addr, "echo", "one", "again", &[], "read again")
        .await
        .expect("again");
    let one = res::wait_resting(&addr, "echo", "one", WAIT).await;
    assert_eq!(res::json_of(one.outputs.as_ref())["settings"]["LEVEL"], "changed");

    // A local cluster's machines get them in their environment.
    for (key, value) in [
        ("scope/kind/cluster/MYSETTING", "kind value"),
        ("scope/resource/cluster/c/MYSETTING", "mine"),
        ("scope/resource/cluster/c/FROM_SPEC", "the setting loses"),
        ("scope/resource/cluster/c/PORT", "1"),
        ("scope/resource/cluster/c/not/a/name", "skipped"),
    ] {
        put(&addr, key, value).await;
    }
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("index.html"), "hello\n").unwrap();
    res::create(
        &addr,
        "image",
        "site",
        json!({
            "source": source.path(),
            "start": "env > machine.env; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1",
        }),
    )
    .await
    .expect("create the image");
    let image = res::wait_resting(&addr, "image", "site", WAIT).await;
    assert_eq!(image.state, "built", "{image:?}");
    res::create(
        &addr,
        "cluster",
        "c",
        json!({"image": "site", "size": 2, "env": {"FROM_SPEC": "spec"}}),
    )
    .await
    .expect("create the cluster");
    let c = res::wait_resting(&addr, "cluster", "c", WAIT).await;
    let outputs = res::json_of(c.outputs.as_ref());
    let machines = outputs["machines"].as_array().cloned().unwrap_or_default();
    assert_eq!(machines.len(), 2, "{c:?}");
    let dir = machines[0]["dir"].as_str().expect("machine 0's dir").to_string();
    let port = machines[0]["port"].as_u64().expect("machine 0's port");
    let dump = Path::new(&dir).join("machine.env");
    wait_until(
        "machine 0 to write its environment",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { std::fs::read_to_string(&dump).map_err(|e| e.to_string()) },
    )
    .await;
    let env = env_of(&std::fs::read_to_string(&dump).unwrap());
    assert_eq!(var(&env, "MYSETTING"), Some("mine"), "the resource's setting wins");
    assert_eq!(var(&env, "FROM_SPEC"), Some("spec"), "spec.env wins over settings");
    assert_eq!(var(&env, "PORT"), Some(port.to_string().as_str()), "opsd's own win");
    assert_eq!(var(&env, "OPSD_MACHINE"), Some("0"));
    assert_eq!(var(&env, "GREETING"), Some("hello"), "global settings too");
    assert!(!env.iter().any(|(k, _)| k.contains('/')), "{env:?}");
    let history = res::history(&addr, "cluster", "c").await.unwrap();
    let lines = res::log_lines(&addr, &history[0].run_id).await.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("not given to the machines") && l.contains("not/a/name")),
        "{lines:?}"
    );

    // `opsctl shell` runs a command in the machine's directory and environment.
    let out = opsctl
        .run(&["shell", "cluster/c", "--", "sh", "-c", "pwd; echo $PORT $MYSETTING"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(canonical(lines[0]), canonical(&dir));
    assert_eq!(lines[1], format!("{port} mine"));
    let out = opsctl
        .run(&[
            "shell",
            "cluster/c",
            "--machine",
            "1",
            "--",
            "sh",
            "-c",
            "echo $OPSD_MACHINE; exit 7",
        ])
        .await;
    assert_eq!(out.status.code(), Some(7), "the command's exit code: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    // No shell is interactive without a terminal: stdin at its end, it exits.
    let out = opsctl.run(&["shell", "cluster/c"]).await;
    assert!(out.status.success(), "{out:?}");

    let stderr = opsctl.fails(&["shell", "cluster/c", "--machine", "5"], 1).await;
    assert!(
        stderr.contains("--machine 5: cluster/c has machines 0 to 1"),
        "{stderr}"
    );
    let stderr = opsctl.fails(&["shell", "echo/one", "--", "true"], 1).await;
    assert!(stderr.contains("echo/one has no machines recorded"), "{stderr}");
    let stderr = opsctl.fails(&["shell", "cluster/nope"], 1).await;
    assert!(stderr.contains("not found"), "{stderr}");

    // Destroy the machines.
    res::delete(&addr, "cluster", "c").await.expect("destroy");
    let c = res::wait_resting(&addr, "cluster", "c", WAIT).await;
    assert_eq!(c.state, "destroyed", "{c:?}");
    assert!(!Path::new(&dir).exists());
}
