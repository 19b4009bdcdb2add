//! Exec steps start from a clean environment: nothing of opsd's own (cloud
//! credentials given to opsd reach no user's script), only `PATH` (minimal),
//! `HOME` (the attempt's work dir), `LANG`, the settings in scope whose keys
//! are variable names, and `OPSD_*`. With `--exec-user nobody` a step runs as
//! nobody and cannot read the data dir; opsd refuses to start with an
//! unknown `--exec-user`, naming the flag.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use opsd_tests::resources as res;
use opsd_tests::{client, Cluster, Options};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const READY: Duration = Duration::from_secs(60);

/// One work state that prints its environment, who it runs as, and whether
/// it can read the data dir (named by the setting `DATA_DIR`), to its log.
const ENV_DUMP: &str = r#"
kind = "envdump"
initial = "dumping"
provider = "exec"

[states.dumping]
work = true
run = '''
env | sed 's/^/env: /'
echo "uid: $(id -u)"
echo "pwd: $(pwd)"
if cat "$DATA_DIR/node.json" >/dev/null 2>&1; then echo "data: read node.json"; else echo "data: cannot read node.json"; fi
if ls "$DATA_DIR/db" >/dev/null 2>&1; then echo "data: listed db"; else echo "data: cannot list db"; fi
if ls "$DATA_DIR" >/dev/null 2>&1; then echo "data: listed the data dir"; else echo "data: cannot list the data dir"; fi
if [ -e "$DATA_DIR/admin.token" ]; then
  if cat "$DATA_DIR/admin.token" >/dev/null 2>&1; then echo "data: read admin.token"; else echo "data: cannot read admin.token"; fi
fi
if touch "$HOME/written"; then echo "home: writable"; else echo "home: not writable"; fi
'''
next = "done"
fail = "failed"

[states.done]
on = { again = "dumping" }

[states.failed]
on = { again = "dumping" }
"#;

/// Starts a one-node cluster whose opsd has `AWS_SECRET_ACCESS_KEY` in its
/// environment and `extra_args`; its directories are searchable by others
/// (as an operator running `--exec-user` makes them).
async fn start(extra_args: &[&str]) -> Cluster {
    let options = Options {
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    };
    let mut cluster = Cluster::empty(options);
    let mut config = cluster.node_config();
    config
        .env
        .push(("AWS_SECRET_ACCESS_KEY".to_string(), "leak-me".to_string()));
    config
        .env
        .push(("OPSD_SMUGGLED".to_string(), "from-opsd-env".to_string()));
    let home = config.data_dir.parent().expect("the node's home").to_path_buf();
    std::fs::create_dir_all(&home).unwrap();
    for dir in [cluster.dir(), home.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let i = cluster.spawn(config);
    cluster.node(i).wait_ready(READY).await;
    cluster
}

/// Runs the env dump kind once on `cluster`'s node; returns its log lines.
async fn dump(cluster: &Cluster) -> Vec<String> {
    let addr = cluster.node(0).client_addr();
    let data_dir = cluster.node(0).data_dir().display().to_string();
    for (key, value) in [
        ("scope/kind/envdump/GREETING", "hello"),
        ("scope/kind/envdump/DATA_DIR", data_dir.as_str()),
        ("scope/kind/envdump/db/url", "not a variable name"),
        ("scope/kind/envdump/OPSD_KIND", "a setting does not win over opsd's own"),
    ] {
        client::put(&addr, key, value)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
    res::apply_kind(&addr, ENV_DUMP).await.expect("apply the kind");
    res::create(&addr, "envdump", "one", json!({})).await.expect("create");
    let one = res::wait_resting(&addr, "envdump", "one", WAIT).await;
    let history = res::history(&addr, "envdump", "one").await.unwrap();
    let lines = res::log_lines(&addr, &history[0].run_id).await.unwrap();
    assert_eq!(one.state, "done", "{one:?}\n{lines:#?}");
    lines
}

fn var<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("env: {name}=");
    lines.iter().find_map(|l| l.strip_prefix(prefix.as_str()))
}

fn said<'a>(lines: &'a [String], what: &str) -> Vec<&'a str> {
    let prefix = format!("{what}: ");
    lines.iter().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

#[tokio::test]
async fn exec_steps_get_a_clean_environment() {
    // As opsd's own user: a clean environment.
    let cluster = start(&[]).await;
    let lines = dump(&cluster).await;
    let all = lines.join("\n");
    assert!(!all.contains("leak-me"), "opsd's environment reached the step:\n{all}");
    assert_eq!(var(&lines, "AWS_SECRET_ACCESS_KEY"), None, "{all}");
    assert_eq!(var(&lines, "OPSD_SMUGGLED"), None, "{all}");
    assert_eq!(var(&lines, "NO_COLOR"), None, "the harness gives opsd NO_COLOR:\n{all}");
    assert_eq!(var(&lines, "PATH"), Some("/usr/local/bin:/usr/bin:/bin"), "{all}");
    assert_eq!(var(&lines, "LANG"), Some("C.UTF-8"), "{all}");
    let home = var(&lines, "HOME").expect("HOME");
    assert_eq!(said(&lines, "pwd"), vec![home], "HOME is the work dir:\n{all}");
    assert!(
        home.starts_with(&cluster.node(0).data_dir().display().to_string()),
        "{all}"
    );
    assert_eq!(said(&lines, "home"), vec!["writable"], "{all}");
    assert_eq!(var(&lines, "GREETING"), Some("hello"), "settings in scope:\n{all}");
    assert_eq!(var(&lines, "OPSD_KIND"), Some("envdump"), "opsd's own win:\n{all}");
    assert_eq!(var(&lines, "OPSD_NAME"), Some("one"), "{all}");
    assert!(
        var(&lines, "OPSD_RUN_ID").is_some() && var(&lines, "OPSD_OUTPUTS").is_some(),
        "{all}"
    );
    assert!(!all.contains("db/url"), "not a variable name: not given:\n{all}");
    let names: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("env: "))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let allowed = [
        "PATH", "HOME", "LANG", "GREETING", "DATA_DIR", "PWD", "SHLVL", "_", "OLDPWD",
    ];
    for name in &names {
        assert!(
            name.starts_with("OPSD_") || allowed.contains(name),
            "{name} is not something a step gets:\n{all}"
        );
    }
    if nix::unistd::geteuid().is_root() {
        let log = std::fs::read_to_string(cluster.node(0).log_path()).unwrap();
        assert!(
            log.contains("runs as root without --exec-user") && log.contains("--exec-user USER"),
            "opsd as root without --exec-user warns, recommending the flag:\n{log}"
        );
    }
    drop(cluster);

    // An unknown --exec-user: refused, naming the flag.
    let mut bad = Cluster::empty(Options {
        extra_args: vec!["--exec-user".into(), "no-such-user".into()],
        ..Options::default()
    });
    let config = bad.node_config();
    let i = bad.spawn(config);
    let exit = bad.node(i).wait_exit(Duration::from_secs(30)).await;
    exit.assert_refused_saying(
        "opsd started with an unknown --exec-user",
        &[("--exec-user", "name the flag"), ("no-such-user", "name the user")],
    );

    // --exec-user nobody: the step runs as nobody, and the data dir is closed to it.
    if !nix::unistd::geteuid().is_root() {
        opsd_tests::skip(
            "exec_steps_get_a_clean_environment",
            "not root: opsd cannot switch to --exec-user nobody here",
        );
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("the user nobody");
    let cluster = start(&["--exec-user", "nobody"]).await;
    let lines = dump(&cluster).await;
    let all = lines.join("\n");
    assert_eq!(said(&lines, "uid"), vec![nobody.uid.to_string().as_str()], "{all}");
    assert!(!all.contains("leak-me"), "{all}");
    assert_eq!(var(&lines, "AWS_SECRET_ACCESS_KEY"), None, "{all}");
    let data = said(&lines, "data");
    for must_not in ["read node.json", "listed db", "listed the data dir", "read admin.token"] {
        assert!(!data.contains(&must_not), "nobody could do this: {must_not}\n{all}");
    }
    assert!(data.contains(&"cannot read node.json"), "{all}");
    assert!(data.contains(&"cannot list db"), "{all}");
    assert_eq!(
        said(&lines, "home"),
        vec!["writable"],
        "its work dir is its own:\n{all}"
    );
    // opsd itself goes on as root: its own files are still its own.
    assert!(
        client::get(&cluster.node(0).client_addr(), "scope/kind/envdump/GREETING", false)
            .await
            .is_ok()
    );

    // The local provider's build commands and machines run as nobody too,
    // in a clean environment, in directories that are theirs.
    let addr = cluster.node(0).client_addr();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("index.html"), "hello\n").unwrap();
    res::create(
        &addr,
        "image",
        "site",
        json!({
            "source": source.path(),
            "build": ["id -u > BUILT_BY", "env > BUILD_ENV"],
            "start": "id -u > STARTED_BY; env > MACHINE_ENV; exec sleep 300",
        }),
    )
    .await
    .expect("create the image");
    let image = res::wait_resting(&addr, "image", "site", WAIT).await;
    assert_eq!(image.state, "built", "{image:?}");
    let outputs = res::json_of(image.outputs.as_ref());
    let image_dir = std::path::PathBuf::from(outputs["dir"].as_str().expect("the image's dir"));
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(read(image_dir.join("BUILT_BY")).trim(), nobody.uid.to_string());
    let build_env = read(image_dir.join("BUILD_ENV"));
    assert!(!build_env.contains("leak-me"), "{build_env}");
    assert!(
        build_env.lines().any(|l| l == "PATH=/usr/local/bin:/usr/bin:/bin"),
        "{build_env}"
    );
    res::create(&addr, "cluster", "c", json!({"image": "site", "size": 1}))
        .await
        .expect("create the cluster");
    let c = res::wait_resting(&addr, "cluster", "c", WAIT).await;
    assert_eq!(c.state, "running", "{c:?}");
    let outputs = res::json_of(c.outputs.as_ref());
    let machine_dir = std::path::PathBuf::from(outputs["machines"][0]["dir"].as_str().expect("machine 0's dir"));
    let started_by = machine_dir.join("STARTED_BY");
    opsd_tests::wait_until(
        "machine 0 to write who it is",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { std::fs::read_to_string(&started_by).map_err(|e| e.to_string()) },
    )
    .await;
    assert_eq!(read(started_by).trim(), nobody.uid.to_string());
    let machine_env = read(machine_dir.join("MACHINE_ENV"));
    assert!(!machine_env.contains("leak-me"), "{machine_env}");
    assert!(machine_env.lines().any(|l| l == "OPSD_MACHINE=0"), "{machine_env}");
}
