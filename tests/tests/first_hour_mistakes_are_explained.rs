//! What a new user gets wrong in their first hour, and what opsd and opsctl
//! say about it: a bare port where HOST:PORT belongs, the peer port where the
//! client port belongs (opsctl and `opsd --join`), asking before the node is
//! up (`status --wait`), and what the logs look like in a file: no colour
//! codes, a fatal error said exactly once, and a restarted node saying what
//! it restored instead of claiming to lead. Also: a forgotten token is
//! explained, and requests are made as the token's user (not $USER).

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use opsd_tests::{closed_address, opsd_bin, Node, NodeConfig, Opsctl, Options};

const READY: Duration = Duration::from_secs(60);

/// Runs opsd with `args` to completion, its stderr to a file as a service
/// manager would (not a terminal), without NO_COLOR or OPSD_* from the test's
/// environment; returns how it ended and what it wrote.
fn opsd_once(dir: &std::path::Path, name: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(opsd_bin());
    cmd.args(args)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OPSD_") {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().expect("running opsd");
    (status, std::fs::read_to_string(&log).unwrap())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_hour_mistakes_are_explained() {
    let dir = tempfile::tempdir().unwrap();

    // A bare port: no host. Usage errors, before anything is contacted.
    let bare = Opsctl { addr: "7700".into() }.fails(&["status"], 2).await;
    assert!(
        bare.contains("address \"7700\" has no host, only a port (expected HOST:PORT, e.g. 127.0.0.1:7700)"),
        "{bare}"
    );
    let data = dir.path().join("bare");
    let (status, said) = opsd_once(
        dir.path(),
        "bare",
        &["--data-dir", data.to_str().unwrap(), "--join", "7700"],
    );
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains("--join: address \"7700\" has no host, only a port"),
        "{said}"
    );

    // Asked before it is up: status --wait waits for it.
    let config = NodeConfig::new("n1", dir.path(), Options::default());
    let node = Node::spawn(config.clone());
    let client = config.listen.to_string();
    let peer = config.peer_listen.to_string();
    let opsctl = Opsctl { addr: client.clone() };
    let status = opsctl.json(&["status", "--wait", "60s"]).await;
    let ready = node.wait_ready(READY).await;
    assert_eq!(status["node_id"], ready.node_id, "{status}");

    // Nobody there: it gives up when told, naming the address.
    let closed = closed_address().to_string();
    let nobody = Opsctl { addr: closed.clone() }
        .fails(&["status", "--wait", "1s"], 1)
        .await;
    assert!(nobody.contains("no node answered within 1s"), "{nobody}");
    assert!(nobody.contains(&format!("{closed}: cannot connect")), "{nobody}");

    // The peer port given as the client port, to opsctl and to a joining opsd.
    // (opsctl given the cluster's CA, as it would be: the peer port speaks TLS too.)
    let ca = node.data_dir().join("ca.pem");
    let wrong = Opsctl { addr: peer.clone() }
        .command(&["status"])
        .env("OPSD_CA", &ca)
        .output()
        .await
        .expect("opsctl");
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    let wrong = String::from_utf8_lossy(&wrong.stderr).into_owned();
    let expected = format!("{peer} is a peer port (Raft traffic between opsd nodes); the client port is {client}");
    assert!(wrong.contains(&expected), "{wrong}");
    let joiner = NodeConfig::new("n2", dir.path(), Options::default());
    let (status, said) = opsd_once(
        dir.path(),
        "join-peer-port",
        &[
            "--data-dir",
            joiner.data_dir.to_str().unwrap(),
            "--listen",
            &joiner.listen.to_string(),
            "--peer-listen",
            &joiner.peer_listen.to_string(),
            "--join",
            &peer,
            "--join-token",
            &opsd_tests::access::join_token(std::slice::from_ref(&client)).expect("a join token"),
        ],
    );
    assert!(!status.success(), "{said}");
    assert!(said.contains(&format!("--join {peer} answered: {expected}")), "{said}");

    // A fatal error is said once, as plain text: a second opsd on the same port.
    let other = dir.path().join("other");
    let (status, said) = opsd_once(
        dir.path(),
        "port-in-use",
        &[
            "--data-dir",
            other.to_str().unwrap(),
            "--listen",
            &client,
            "--peer-listen",
            &closed,
        ],
    );
    assert!(!status.success(), "{said}");
    assert_eq!(said.matches("cannot listen").count(), 1, "{said}");
    assert!(!said.contains('\x1b'), "colour codes in a file: {said}");

    // A forgotten token: every call but status is refused, saying how to
    // give one; with it, the token's user is who asked.
    let forgot = opsctl
        .command(&["settings", "put", "who/am-i", "x"])
        .env_remove("OPSD_TOKEN")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(forgot.status.code(), Some(1), "{}", text(&forgot));
    assert!(
        String::from_utf8_lossy(&forgot.stderr).contains("no token: give --token, OPSD_TOKEN or a token file"),
        "{}",
        text(&forgot)
    );
    let put = opsctl
        .command(&["--output", "json", "settings", "put", "who/am-i", "x"])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .await
        .unwrap();
    assert!(put.status.success(), "{}", text(&put));
    let got = opsctl.json(&["settings", "get", "who/am-i"]).await;
    assert_eq!(got["changed_by"], "admin", "{got}");

    // A leader killed and restarted says what it restored, then its role.
    node.kill9();
    node.restart();
    node.wait_ready(READY).await;
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    let restart = &log[log.rfind("==== harness: restart").expect("the restart is in the log")..];
    let restored = restart
        .find("restored state: term ")
        .unwrap_or_else(|| panic!("{restart}"));
    assert!(restart[restored..].contains("was leader"), "{restart}");
    if let Some(role) = restart.find("raft role") {
        assert!(
            restored < role,
            "a role was logged before the restored state:\n{restart}"
        );
    }
}
