//! Acceptance checks end to end on one node: a cluster whose checks pass
//! goes pending -> verifying -> running; one whose http check fails lands
//! `failed` with its machines still running and a log naming the check and
//! the machine; `opsctl verify` prints the results per machine and exits 1
//! on a failure; `opsctl machines` shows each machine's verdict; a malformed
//! check is refused at create and nothing is created.

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use opsd_tests::resources as res;
use opsd_tests::{Cluster, Opsctl, Options};
use serde_json::{json, Value};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(90);

/// Kills the machines a test saw when it ends, even by a panic.
#[derive(Default)]
struct Machines(Vec<i32>);

impl Machines {
    fn saw(&mut self, outputs: &Value) -> Vec<Value> {
        let ms = outputs["machines"].as_array().cloned().unwrap_or_default();
        self.0
            .extend(ms.iter().filter_map(|m| m["pid"].as_i64()).map(|p| p as i32));
        ms
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for pid in &self.0 {
            if *pid > 1 {
                let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

fn accepts(address: &str) -> bool {
    std::net::TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(1)).is_ok()
}

#[tokio::test]
async fn acceptance_checks_gate_a_cluster() {
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    let opsctl = Opsctl { addr: addr.clone() };
    let mut seen = Machines::default();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("index.html"), "hello from opsd\n").unwrap();
    res::create(
        &addr,
        "image",
        "site",
        json!({
            "source": source.path(),
            "start": "exec python3 -m http.server \"$PORT\" --bind \"$OPSD_HOST\"",
        }),
    )
    .await
    .expect("create the image");
    assert_eq!(res::wait_resting(&addr, "image", "site", WAIT).await.state, "built");

    // Malformed checks are refused at create, naming the field; nothing is created.
    for (checks, field) in [
        (
            json!([{"type": "ping"}]),
            "spec.checks[0].type: unknown check type \"ping\"",
        ),
        (
            json!([{"type": "tcp"}, {"type": "http", "body": "(v2"}]),
            "spec.checks[1].body: invalid regex",
        ),
        (
            json!([{"type": "http", "paht": "/"}]),
            "spec.checks[0].paht: unknown key",
        ),
    ] {
        let e = res::create(
            &addr,
            "cluster",
            "bad",
            json!({"image": "site", "size": 1, "checks": checks}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().starts_with(field),
            "{:?} does not start with {field:?}",
            e.message()
        );
    }
    let stderr = opsctl
        .fails(
            &[
                "create",
                "cluster/bad",
                "--set",
                "image=site",
                "--set",
                "size=1",
                "--set",
                r#"checks=[{"type":"ping"}]"#,
            ],
            1,
        )
        .await;
    assert!(
        stderr.contains("spec.checks[0].type: unknown check type \"ping\""),
        "{stderr}"
    );
    assert_eq!(
        res::get(&addr, "cluster", "bad").await.unwrap_err().code(),
        Code::NotFound
    );

    // Checks that pass: running, by way of verifying, with the results recorded.
    let checks = json!([
        {"type": "http", "name": "page", "path": "/index.html", "body": "hello from opsd", "retries": 20, "interval": 0.2},
        {"type": "tcp"},
    ]);
    res::create(
        &addr,
        "cluster",
        "good",
        json!({"image": "site", "size": 2, "checks": checks}),
    )
    .await
    .expect("create the good cluster");
    let good = res::wait_resting(&addr, "cluster", "good", WAIT).await;
    let outputs = res::json_of(good.outputs.as_ref());
    let machines = seen.saw(&outputs);
    assert_eq!(good.state, "running", "{outputs:#}");
    assert_eq!(machines.len(), 2);
    for m in &machines {
        assert_eq!(m["address"], json!(format!("127.0.0.1:{}", m["port"])), "{m}");
    }
    assert_eq!(outputs["checks"]["passed"], json!(true), "{outputs:#}");
    assert_eq!(outputs["checks"]["results"].as_array().unwrap().len(), 4);
    let transitions: Vec<(String, String)> = res::history(&addr, "cluster", "good")
        .await
        .unwrap()
        .iter()
        .map(|r| (r.from.clone(), r.to.clone()))
        .collect();
    assert_eq!(
        transitions,
        [("".into(), "pending".into()), ("pending".into(), "verifying".into())]
    );

    // opsctl verify: a table per machine, exit 0; JSON: the run with its checks.
    let out = opsctl.run(&["verify", "cluster/good", "--reason", "on demand"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout.matches("MACHINE  ADDRESS").count(), 2, "{stdout}");
    for m in &machines {
        assert!(stdout.contains(m["address"].as_str().unwrap()), "{stdout}");
    }
    assert_eq!(stdout.matches(" passed ").count(), 4, "{stdout}");
    let run = opsctl.json(&["verify", "cluster/good"]).await;
    assert_eq!(
        (&run["to"], &run["outcome"]),
        (&json!("verifying"), &json!("succeeded")),
        "{run:#}"
    );
    assert_eq!(run["outputs"]["checks"]["passed"], json!(true));
    let listed = opsctl.json(&["machines", "cluster/good"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for m in listed {
        assert_eq!(
            (&m["state"], &m["checks"]),
            (&json!("running"), &json!("passed")),
            "{m}"
        );
    }

    // A check that fails: failed, machines kept, the log names check and machine.
    let failing = json!([{"type": "http", "name": "health", "path": "/health", "retries": 10, "interval": 0.2}]);
    res::create(
        &addr,
        "cluster",
        "broken",
        json!({"image": "site", "size": 2, "checks": failing}),
    )
    .await
    .expect("create the broken cluster");
    let broken = res::wait_resting(&addr, "cluster", "broken", WAIT).await;
    let outputs = res::json_of(broken.outputs.as_ref());
    let machines = seen.saw(&outputs);
    assert_eq!(broken.state, "failed", "{outputs:#}");
    assert_eq!(machines.len(), 2);
    for m in &machines {
        assert!(
            accepts(m["address"].as_str().unwrap()),
            "machine {m} was not kept running"
        );
    }
    let runs = res::history(&addr, "cluster", "broken").await.unwrap();
    let verify = runs.last().unwrap();
    assert_eq!(verify.to, "verifying");
    let first = machines[0]["address"].as_str().unwrap();
    assert!(
        verify.error.starts_with(&format!(
            "check health failed on machine 0 ({first}) after 11 attempts: GET /health: status 404"
        )),
        "{}",
        verify.error
    );
    let log = res::log_lines(&addr, &verify.run_id).await.unwrap();
    assert!(
        log.iter()
            .any(|l| l.starts_with(&format!("machine 0 ({first}): check health FAILED (11 attempts"))),
        "{log:#?}"
    );
    assert_eq!(res::json_of(verify.outputs.as_ref())["checks"]["passed"], json!(false));

    // opsctl verify on the failed cluster: the table, then exit 1.
    let out = opsctl.run(&["verify", "cluster/broken"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches(" FAILED ").count(), 2, "{stdout}");
    assert!(stderr.contains("check health failed on machine 0"), "{stderr}");
    let table = opsctl.run(&["machines", "cluster/broken"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.matches("running  failed (health)").count(), 2, "{table}");

    // Destroying removes the kept machines.
    for name in ["good", "broken"] {
        res::delete(&addr, "cluster", name).await.expect("destroy");
        assert_eq!(res::wait_resting(&addr, "cluster", name, WAIT).await.state, "destroyed");
    }
    for m in &machines {
        let address = m["address"].as_str().unwrap();
        opsd_tests::wait_until(
            &format!("{address} to refuse"),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                if accepts(address) {
                    Err("still accepts".to_string())
                } else {
                    Ok(())
                }
            },
        )
        .await;
    }
}
