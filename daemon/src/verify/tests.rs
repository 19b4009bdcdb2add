//! Parsing errors name the field; probes run against real loopback
//! listeners and real processes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn spec(checks: Value) -> Object {
    json!({ "checks": checks }).as_object().cloned().unwrap()
}

fn err(checks: Value) -> String {
    parse_checks(&spec(checks)).unwrap_err()
}

fn one(check: Value) -> Check {
    let mut checks = parse_checks(&spec(json!([check]))).unwrap();
    checks.remove(0)
}

#[test]
fn checks_have_defaults() {
    assert_eq!(parse_checks(&Object::new()).unwrap(), []);
    assert_eq!(parse_checks(&spec(Value::Null)).unwrap(), []);
    assert_eq!(
        one(json!({"type": "http"})),
        Check {
            name: "http#0".into(),
            probe: Probe::Http {
                path: "/".into(),
                status: 200,
                body: None
            },
            timeout: Duration::from_secs(2),
            retries: 2,
            interval: Duration::from_secs(1),
        }
    );
    let checks = parse_checks(&spec(json!([
        {"type": "tcp"},
        {"type": "http", "path": "/health", "status": 204, "body": "v2", "timeout": 0.5, "retries": 0,
         "interval": 0, "name": "health"},
        {"type": "exec", "command": "true", "interval": 1.5},
    ])))
    .unwrap();
    assert_eq!(checks[0].name, "tcp#0");
    assert_eq!(checks[0].probe, Probe::Tcp);
    assert_eq!(checks[1].name, "health");
    assert_eq!(
        checks[1].probe,
        Probe::Http {
            path: "/health".into(),
            status: 204,
            body: Some("v2".into())
        }
    );
    assert_eq!(
        (checks[1].timeout, checks[1].retries, checks[1].interval),
        (Duration::from_millis(500), 0, Duration::ZERO)
    );
    assert_eq!(checks[2].name, "exec#2");
    assert_eq!(checks[2].interval, Duration::from_millis(1500));
}

#[test]
fn every_parse_error_names_the_field() {
    let cases = [
        (json!("http"), "spec.checks: must be an array of checks"),
        (json!([1]), "spec.checks[0]: must be a table"),
        (
            json!([{"type": "ping"}]),
            "spec.checks[0].type: unknown check type \"ping\" (use tcp, http or exec)",
        ),
        (json!([{"path": "/"}]), "spec.checks[0].type: required"),
        (
            json!([{"type": 3}]),
            "spec.checks[0].type: must be tcp, http or exec, not 3",
        ),
        (
            json!([{"type": "tcp"}, {"type": "http", "bodyy": "x"}]),
            "spec.checks[1].bodyy: unknown key (a check has: type, name,",
        ),
        (
            json!([{"type": "http", "body": "(unclosed"}]),
            "spec.checks[0].body: invalid regex \"(unclosed\"",
        ),
        (
            json!([{"type": "http", "body": 7}]),
            "spec.checks[0].body: must be a regex",
        ),
        (
            json!([{"type": "http", "status": 99}]),
            "spec.checks[0].status: must be an HTTP status, 100 to 599, not 99",
        ),
        (
            json!([{"type": "http", "status": "200"}]),
            "spec.checks[0].status: must be an HTTP status",
        ),
        (
            json!([{"type": "http", "path": "health"}]),
            "spec.checks[0].path: must start with '/'",
        ),
        (
            json!([{"type": "http", "path": "/a b"}]),
            "spec.checks[0].path: must not contain spaces",
        ),
        (
            json!([{"type": "tcp", "path": "/"}]),
            "spec.checks[0].path: only http checks take path (this check is tcp)",
        ),
        (
            json!([{"type": "http", "command": "true"}]),
            "spec.checks[0].command: only exec checks take command",
        ),
        (
            json!([{"type": "exec"}]),
            "spec.checks[0].command: required for an exec check",
        ),
        (
            json!([{"type": "exec", "command": " "}]),
            "spec.checks[0].command: must not be empty",
        ),
        (
            json!([{"type": "exec", "command": "true", "status": 200}]),
            "spec.checks[0].status: only http checks take status",
        ),
        (
            json!([{"type": "tcp", "timeout": 0}]),
            "spec.checks[0].timeout: must be a number of seconds, more than 0 to 300",
        ),
        (
            json!([{"type": "tcp", "timeout": 301}]),
            "spec.checks[0].timeout: must be a number of seconds",
        ),
        (
            json!([{"type": "tcp", "timeout": "2s"}]),
            "spec.checks[0].timeout: must be a number of seconds",
        ),
        (
            json!([{"type": "tcp", "interval": -1}]),
            "spec.checks[0].interval: must be a number of seconds, 0 to 300",
        ),
        (
            json!([{"type": "tcp", "retries": 1.5}]),
            "spec.checks[0].retries: must be an integer from 0 to 100, not 1.5",
        ),
        (
            json!([{"type": "tcp", "retries": 101}]),
            "spec.checks[0].retries: must be an integer from 0 to 100",
        ),
        (
            json!([{"type": "tcp", "name": ""}]),
            "spec.checks[0].name: must be 1 to 64 characters",
        ),
        (
            json!([{"type": "tcp", "name": "a b"}]),
            "spec.checks[0].name: must be 1 to 64 characters",
        ),
        (
            json!([{"type": "tcp", "name": 1}]),
            "spec.checks[0].name: must be a string",
        ),
        (
            json!([{"type": "tcp", "name": "x"}, {"type": "http", "name": "x"}]),
            "spec.checks[1].name: \"x\" is the name of spec.checks[0] too",
        ),
    ];
    for (checks, expected) in cases {
        let e = err(checks.clone());
        assert!(
            e.starts_with(expected),
            "{checks}: {e:?} does not start with {expected:?}"
        );
    }
    let many: Vec<Value> = (0..=MAX_CHECKS).map(|_| json!({"type": "tcp"})).collect();
    assert!(err(Value::Array(many)).starts_with("spec.checks: 33 checks is more than the limit of 32"));
    // A service's health check is named by its own field.
    let e = parse_check(&json!({"type": "udp"}), "spec.health", 0).unwrap_err();
    assert!(e.starts_with("spec.health.type: unknown check type \"udp\""), "{e}");
}

fn machine(index: u64, address: impl Into<String>) -> MachineAddr {
    MachineAddr {
        index,
        address: address.into(),
    }
}

/// An address nothing listens on: a port bound then released.
async fn closed_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

/// A loopback HTTP server answering each request with `answer(n)` (n
/// counting requests from 0), or never answering when it returns `None`.
async fn server(answer: impl Fn(u32) -> Option<String> + Send + Sync + 'static) -> (String, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicU32::new(0));
    let seen = count.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => request.extend_from_slice(&buf[..k]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                assert!(text.starts_with("GET /health HTTP/1.1\r\n"), "{text}");
                assert!(text.contains("\r\nHost: 127.0.0.1:"), "{text}");
                assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
                match answer(n) {
                    Some(response) => {
                        let _ = s.write_all(response.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    (address, count)
}

fn ok_response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn http(body: Option<&str>) -> Check {
    Check {
        name: "health".into(),
        probe: Probe::Http {
            path: "/health".into(),
            status: 200,
            body: body.map(str::to_string),
        },
        timeout: Duration::from_millis(500),
        retries: 0,
        interval: Duration::from_millis(10),
    }
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[tokio::test]
async fn tcp_connects_or_says_why_not() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = machine(0, listener.local_addr().unwrap().to_string());
    let check = one(json!({"type": "tcp"}));
    assert_eq!(probe(&check, &up, &no_env()).await, Ok("connected".into()));
    let down = closed_address().await;
    assert_eq!(
        probe(&check, &machine(1, down.clone()), &no_env()).await,
        Err(format!("cannot connect to {down}: connection refused"))
    );
}

#[tokio::test]
async fn http_checks_status_and_body() {
    let (address, _) = server(|_| Some(ok_response("version v2 ready"))).await;
    let m = machine(0, address);
    assert_eq!(probe(&http(None), &m, &no_env()).await, Ok("200 OK".into()));
    assert_eq!(
        probe(&http(Some(r"v\d ready")), &m, &no_env()).await,
        Ok(r"200 OK, body matches /v\d ready/".into())
    );
    assert_eq!(
        probe(&http(Some("v3")), &m, &no_env()).await,
        Err("GET /health: 200 OK, but the body does not match /v3/ (body: \"version v2 ready\")".into())
    );

    let (address, _) = server(|_| Some("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".into())).await;
    assert_eq!(
        probe(&http(None), &machine(0, address), &no_env()).await,
        Err("GET /health: status 503 Service Unavailable, expected 200".into())
    );

    let down = closed_address().await;
    assert_eq!(
        probe(&http(None), &machine(0, down.clone()), &no_env()).await,
        Err(format!("cannot connect to {down}: connection refused"))
    );
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let (address, _) = server(|_| None).await;
    let started = Instant::now();
    let r = probe(&http(None), &machine(0, address), &no_env()).await;
    assert_eq!(r, Err("timed out after 0.5 s".into()));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn retries_are_counted_and_the_last_attempt_wins() {
    // Fails twice, then answers.
    let (address, count) = server(|n| {
        Some(if n < 2 {
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".into()
        } else {
            ok_response("ok")
        })
    })
    .await;
    let (log, mut rx) = LogSink::channel();
    let mut check = http(None);
    check.retries = 3;
    let m = machine(4, address.clone());
    let report = run_checks(
        std::slice::from_ref(&check),
        std::slice::from_ref(&m),
        &no_env(),
        &log,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(report.passed());
    assert_eq!(report.results.len(), 1);
    let r = &report.results[0];
    assert_eq!(
        (r.machine, r.address.as_str(), r.check.as_str()),
        (4, address.as_str(), "health")
    );
    assert_eq!((r.passed, r.attempts, r.detail.as_str()), (true, 3, "200 OK"));
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let line = rx.try_recv().unwrap();
    assert!(
        line.starts_with(&format!("machine 4 ({address}): check health passed (3 attempts, ")),
        "{line}"
    );

    // Always failing: retries + 1 attempts, then the failure with its detail.
    let (address, count) = server(|_| Some("HTTP/1.1 500 Boom\r\nContent-Length: 0\r\n\r\n".into())).await;
    check.retries = 2;
    let m = machine(0, address.clone());
    let report = run_checks(&[check], &[m], &no_env(), &log, &CancellationToken::new())
        .await
        .unwrap();
    assert!(!report.passed());
    let r = &report.results[0];
    assert_eq!((r.passed, r.attempts), (false, 3));
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert!(r.ms >= 20, "{r:?}");
    assert_eq!(
        report.failure().unwrap(),
        format!(
            "check health failed on machine 0 ({address}) after 3 attempts: GET /health: status 500 Boom, expected 200"
        )
    );
    let outputs = report.to_outputs();
    assert_eq!(outputs["checks"]["passed"], json!(false));
    assert_eq!(
        outputs["checks"]["results"][0],
        json!({"machine": 0, "address": address, "check": "health", "passed": false, "attempts": 3,
               "detail": r.detail, "ms": r.ms})
    );
    let line = rx.try_recv().unwrap();
    assert!(line.contains("check health FAILED (3 attempts, "), "{line}");
}

#[tokio::test]
async fn exec_gets_the_machine_and_the_settings() {
    let env = BTreeMap::from([("DB_URL".to_string(), "postgres://db".to_string())]);
    let check = one(json!({
        "type": "exec",
        "command": "echo \"$OPSD_MACHINE $OPSD_MACHINE_ADDRESS $OPSD_MACHINE_HOST $OPSD_MACHINE_PORT $DB_URL\"",
    }));
    assert_eq!(
        probe(&check, &machine(3, "127.0.0.1:8123"), &env).await,
        Ok("exit 0: 3 127.0.0.1:8123 127.0.0.1 8123 postgres://db".into())
    );
    let failing = one(json!({"type": "exec", "command": "echo checking; echo 'no answer' >&2; exit 3"}));
    assert_eq!(
        probe(&failing, &machine(0, "127.0.0.1:1"), &env).await,
        Err("exited with status 3: no answer".into())
    );
}

#[tokio::test]
async fn exec_is_killed_with_its_children_on_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let command = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let check = one(json!({"type": "exec", "command": command, "timeout": 0.5}));
    let started = Instant::now();
    let r = probe(&check, &machine(0, "127.0.0.1:1"), &no_env()).await;
    assert_eq!(r, Err("timed out after 0.5 s (killed)".into()));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let child: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::ops::process::is_alive(child, None) {
        assert!(
            Instant::now() < deadline,
            "the check's child {child} survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_machine_is_checked_and_no_machines_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = machine(0, listener.local_addr().unwrap().to_string());
    let down = machine(1, closed_address().await);
    let mut tcp = one(json!({"type": "tcp", "retries": 0}));
    tcp.name = "port".into();
    let exec = one(json!({"type": "exec", "command": "test \"$OPSD_MACHINE\" = 0", "retries": 0}));
    let (log, mut rx) = LogSink::channel();
    let cancel = CancellationToken::new();
    let report = run_checks(&[tcp.clone(), exec], &[up, down], &no_env(), &log, &cancel)
        .await
        .unwrap();
    let summary: Vec<(u64, &str, bool)> = report
        .results
        .iter()
        .map(|r| (r.machine, r.check.as_str(), r.passed))
        .collect();
    assert_eq!(
        summary,
        [
            (0, "port", true),
            (0, "exec#0", true),
            (1, "port", false),
            (1, "exec#0", false)
        ]
    );
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(report.failure().unwrap().ends_with("(and 1 more failed result)"));

    let e = run_checks(&[tcp.clone()], &[], &no_env(), &log, &cancel)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        StepError::Failed("no machines recorded (outputs.machines is empty) to run 1 check on".into())
    );
    // No checks: nothing to do, even without machines.
    assert_eq!(
        run_checks(&[], &[], &no_env(), &log, &cancel).await,
        Ok(Report::default())
    );
    assert_eq!(
        Report::default().to_outputs(),
        *json!({"checks": {"passed": true, "results": []}}).as_object().unwrap()
    );
}

#[tokio::test]
async fn a_cancelled_run_stops_between_attempts() {
    let down = machine(0, closed_address().await);
    let check = one(json!({"type": "tcp", "retries": 100, "interval": 10}));
    let (log, _rx) = LogSink::channel();
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        canceller.cancel();
    });
    let started = Instant::now();
    let r = run_checks(&[check], &[down], &no_env(), &log, &cancel).await;
    assert_eq!(r, Err(StepError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(5));
}
