//! A secret setting's value shows nowhere: not in `settings get/ls/watch/
//! effective` (opsctl table and JSON, and the API), not in the previous
//! setting a put answers with, not in a run's log (a script that prints it
//! has it masked), outputs, history or run records, and not in any node's own
//! log. Yet steps get the real value (the script proves it with its hash),
//! and `settings get --reveal` shows it to a caller allowed to reveal.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opsd_tests::api::{EffectiveRequest, GetRequest, PutRequest};
use opsd_tests::opsctl::Opsctl;
use opsd_tests::resources as res;
use opsd_tests::{client, Cluster, Options};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(60);
const KEY: &str = "scope/kind/leaky/TOKEN";

/// One work state that tries every way to leak the setting `TOKEN`: it
/// prints it from its environment and from the settings on its stdin, says
/// it on stderr, and writes it to its outputs; and it reports its hash
/// (proof it got the real value).
const LEAKY: &str = r#"
kind = "leaky"
initial = "leaking"
provider = "exec"

[states.leaking]
work = true
run = '''
echo "token from the environment: $TOKEN"
echo "the stdin document:"
cat
echo
echo "on stderr: $TOKEN" >&2
hash=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
printf '{"hash": "%s", "echoed": "%s"}' "$hash" "$TOKEN" > "$OPSD_OUTPUTS"
'''
next = "leaked"
fail = "failed"

[states.leaked]
on = { again = "leaking" }

[states.failed]
on = { again = "leaking" }
"#;

/// A value no test or log would otherwise contain.
fn distinctive() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("s3cr3t-{nanos:x}-{}", std::process::id())
}

fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Everything opsctl printed, kept to be searched at the end.
#[derive(Default)]
struct Seen(String);

impl Seen {
    async fn json(&mut self, opsctl: &Opsctl, args: &[&str]) -> Value {
        let v = opsctl.json(args).await;
        // What it printed, not what it was given (a put's arguments hold the value).
        self.0.push_str(&format!("opsctl {}: {v}\n", args[0]));
        v
    }

    async fn table(&mut self, opsctl: &Opsctl, args: &[&str]) -> String {
        let out = opsctl.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "opsctl {}: {stderr}\n{stdout}", args[0]);
        self.0.push_str(&format!("opsctl {}:\n{stdout}{stderr}\n", args[0]));
        stdout
    }

    fn add(&mut self, what: &str, text: impl std::fmt::Debug) {
        self.0.push_str(&format!("{what}: {text:?}\n"));
    }
}

#[tokio::test]
async fn secret_setting_never_shows() {
    let secret = distinctive();
    let cluster = Cluster::start(3, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    let opsctl = Opsctl { addr: addr.clone() };
    let mut seen = Seen::default();

    // Watchers, JSON and table, from before the first put.
    let mut watchers = Vec::new();
    for json in [true, false] {
        let mut args = vec![];
        if json {
            args.extend(["--output", "json"]);
        }
        args.extend(["settings", "watch", "scope/"]);
        let mut child = opsctl
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting opsctl settings watch");
        let stdout = child.stdout.take().unwrap();
        let lines = tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            let mut lines = Vec::new();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.push(line);
            }
            lines
        });
        watchers.push((child, lines));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Put it secret, then overwrite it without the flag: it stays secret.
    let put = seen.json(&opsctl, &["settings", "put", KEY, &secret, "--secret"]).await;
    assert_eq!(put["previous"], Value::Null, "{put}");
    let again = seen.json(&opsctl, &["settings", "put", KEY, &secret]).await;
    assert_eq!(
        again["previous"]["value"], "***",
        "the previous setting is masked: {again}"
    );
    assert_eq!(again["previous"]["secret"], true, "{again}");
    seen.json(&opsctl, &["settings", "put", "scope/kind/leaky/PLAIN", "visible"])
        .await;
    seen.json(
        &opsctl,
        &["settings", "put", "scope/kind/leaky/EXPECTED_SHA", &sha256_hex(&secret)],
    )
    .await;

    // get, ls, effective: table and JSON.
    let got = seen.json(&opsctl, &["settings", "get", KEY]).await;
    assert_eq!(
        (got["value"].as_str(), got["secret"].as_bool()),
        (Some("***"), Some(true)),
        "{got}"
    );
    assert_eq!(seen.table(&opsctl, &["settings", "get", KEY]).await, "***\n");
    let listed = seen.json(&opsctl, &["settings", "ls", "scope/kind/leaky/"]).await;
    let token = listed.as_array().unwrap().iter().find(|s| s["key"] == KEY).cloned();
    assert_eq!(token.map(|t| t["value"].clone()), Some(json!("***")), "{listed}");
    assert!(listed.to_string().contains("visible"), "other settings show: {listed}");
    let table = seen.table(&opsctl, &["settings", "ls"]).await;
    assert!(
        table.lines().any(|l| l.starts_with(KEY) && l.contains("***")),
        "{table}"
    );

    // The API answers the same, even to a stale read.
    let mut api = cluster.node(1).client();
    for stale in [false, true] {
        let s = api
            .settings
            .get(GetRequest {
                key: KEY.into(),
                stale,
                reveal: false,
            })
            .await
            .unwrap()
            .into_inner()
            .setting
            .unwrap();
        assert_eq!((s.value.as_str(), s.secret), ("***", true));
        seen.add("api get", &s);
    }
    let answer = api
        .settings
        .put(PutRequest {
            key: KEY.into(),
            value: secret.clone(),
            expected_revision: None,
            reason: "same again".into(),
            secret: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.previous.as_ref().map(|p| p.value.as_str()), Some("***"));
    seen.add("api put", &answer);

    // A step gets the real value, and cannot make it show.
    res::apply_kind(&addr, LEAKY).await.expect("apply the kind");
    res::create(&addr, "leaky", "one", json!({})).await.expect("create");
    let one = res::wait_resting(&addr, "leaky", "one", WAIT).await;
    assert_eq!(one.state, "leaked", "{one:?}");
    let outputs = res::json_of(one.outputs.as_ref());
    assert_eq!(
        outputs["hash"],
        sha256_hex(&secret),
        "the step got the real value: {outputs}"
    );
    assert_eq!(outputs["echoed"], "***", "outputs are masked too: {outputs}");
    seen.add("resource", &one);
    let history = res::history(&addr, "leaky", "one").await.unwrap();
    seen.add("history", &history);
    let lines = res::log_lines(&addr, &history[0].run_id).await.unwrap();
    assert!(
        lines.iter().any(|l| l == "token from the environment: ***"),
        "the line is kept, the value masked: {lines:#?}"
    );
    assert!(lines.iter().any(|l| l == "on stderr: ***"), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""TOKEN":"***""#) && l.contains(r#""PLAIN":"visible""#)),
        "the stdin document's line, masked: {lines:#?}"
    );
    seen.add("log", &lines);
    let run_id = history[0].run_id.clone();
    seen.table(&opsctl, &["logs", &run_id]).await;
    seen.table(&opsctl, &["--output", "json", "logs", &run_id]).await;
    seen.json(&opsctl, &["run", &run_id]).await;
    seen.json(&opsctl, &["get", "leaky/one"]).await;
    seen.table(&opsctl, &["get", "leaky/one"]).await;
    seen.json(&opsctl, &["history", "leaky/one"]).await;

    let effective = seen.json(&opsctl, &["settings", "effective", "leaky/one"]).await;
    let token = effective
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "TOKEN")
        .cloned()
        .unwrap();
    assert_eq!(
        (token["value"].as_str(), token["secret"].as_bool()),
        (Some("***"), Some(true)),
        "{effective}"
    );
    let table = seen.table(&opsctl, &["settings", "effective", "leaky/one"]).await;
    assert!(
        table.lines().any(|l| l.starts_with("TOKEN") && l.contains("***")),
        "{table}"
    );
    let api_effective = api
        .settings
        .effective(EffectiveRequest {
            kind: "leaky".into(),
            name: "one".into(),
            stale: false,
            reveal: false,
        })
        .await
        .unwrap()
        .into_inner();
    seen.add("api effective", &api_effective);

    // The watchers saw the puts, masked.
    for (child, lines) in watchers {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let lines = tokio::time::timeout(Duration::from_secs(20), lines)
            .await
            .unwrap()
            .unwrap();
        assert!(lines.iter().any(|l| l.contains(KEY) && l.contains("***")), "{lines:#?}");
        seen.add("watch", &lines);
    }

    // Nowhere: not in anything seen, nor in any node's own log.
    assert!(!seen.0.contains(&secret), "the secret showed:\n{}", seen.0);
    for node in cluster.nodes() {
        let log = std::fs::read_to_string(node.log_path()).unwrap();
        assert!(!log.contains(&secret), "{} logged the secret", node.name());
    }

    // --reveal shows it (a caller allowed to reveal: all, until roles).
    let revealed = opsctl.run(&["settings", "get", KEY, "--reveal"]).await;
    assert!(revealed.status.success(), "{revealed:?}");
    assert_eq!(String::from_utf8_lossy(&revealed.stdout), format!("{secret}\n"));
    let effective = opsctl.json(&["settings", "effective", "leaky/one", "--reveal"]).await;
    assert!(effective.to_string().contains(&secret), "{effective}");
    // --secret=false makes it ordinary again.
    opsctl
        .json(&["settings", "put", KEY, "public now", "--secret=false"])
        .await;
    let got = opsctl.json(&["settings", "get", KEY]).await;
    assert_eq!(
        (got["value"].as_str(), got["secret"].as_bool()),
        (Some("public now"), Some(false))
    );
    let _ = client::delete(&addr, KEY).await;
}
