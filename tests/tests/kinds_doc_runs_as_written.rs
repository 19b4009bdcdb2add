//! docs/kinds.md, followed literally by a new user: its files (`app.toml`,
//! `deploy.sh`, the blocks marked `# file: NAME`) saved in a fresh
//! directory, its commands typed in order into bash with `opsctl` on PATH,
//! against a real single-node opsd. Every command must succeed, and what the
//! page says happened must have: the script file is part of the kind, the
//! deploy got `--arg version=2` as the number 2, the cancelled run is
//! recorded. The page's error examples hold too.

use opsd_tests::resources as res;
use opsd_tests::{docs, Cluster, Opsctl, Options};
use tonic::Code;

#[tokio::test]
async fn kinds_doc_runs_as_written() {
    let blocks = docs::fenced_blocks(&docs::page("docs/kinds.md"));
    let dir = tempfile::tempdir().unwrap();
    let files = docs::write_files(&blocks, dir.path());
    assert_eq!(files, ["app.toml", "deploy.sh"], "the files docs/kinds.md gives");
    let commands = docs::shell_commands(&blocks);
    assert!(
        commands.iter().any(|c| c == "opsctl kinds apply app.toml"),
        "docs/kinds.md types `opsctl kinds apply app.toml`: {commands:?}"
    );

    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    let script: String = commands.iter().map(|c| docs::checked(c)).collect();
    let out = docs::bash(dir.path(), &addr, &script).await;
    docs::assert_succeeded(&out, "the commands of docs/kinds.md");

    let opsctl = Opsctl { addr: addr.clone() };
    // The script in deploy.sh travelled inside the kind: `kinds show` has it.
    let kind = opsctl.json(&["kinds", "show", "app"]).await;
    let source = kind["source"].as_str().unwrap();
    let deploy_sh = std::fs::read_to_string(dir.path().join("deploy.sh")).unwrap();
    assert!(source.contains(deploy_sh.trim_end()), "the kind's source:\n{source}");
    assert!(!source.contains("file ="), "the kind's source:\n{source}");

    // The deploy with --arg version=2 got the number; the -q run was cancelled.
    let history = opsctl.json(&["history", "app/web"]).await;
    let runs = history.as_array().unwrap();
    let summary: Vec<(&str, &str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap(),
                r["to"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("create", "fetching", "succeeded"),
            ("create", "deploying", "succeeded"),
            ("deploy", "deploying", "succeeded"),
            ("deploy", "deploying", "cancelled"),
        ],
        "{history:#}"
    );
    assert_eq!(runs[2]["args"]["version"], "2", "the run records the text as typed");
    let log = opsctl.run(&["logs", runs[2]["run_id"].as_str().unwrap()]).await;
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("args: {\"version\":2}"), "the deploy's log:\n{log}");
    let web = opsctl.json(&["get", "app/web"]).await;
    assert_eq!(web["state"], "ready", "{web:#}");
    assert_eq!(web["outputs"]["deployed"], true, "{web:#}");

    // The page's error for a missing script file, with the path resolved.
    std::fs::remove_file(dir.path().join("deploy.sh")).unwrap();
    let app_toml = dir.path().join("app.toml");
    let e = opsctl.fails(&["kinds", "apply", app_toml.to_str().unwrap()], 1).await;
    let expected = format!(
        "kind \"app\": state \"deploying\": run: deploy.sh: cannot read {}: No such file or directory",
        dir.path().join("deploy.sh").display()
    );
    assert!(e.contains(&expected), "{e}");

    // A client other than opsctl sending `{ file = ... }` unread is refused,
    // naming the state and the key; the kind stays as it was.
    let unread = std::fs::read_to_string(&app_toml).unwrap();
    let status = res::apply_kind(&addr, &unread).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("kind \"app\": state \"deploying\": run: { file = \"deploy.sh\" } was not read"),
        "{status:?}"
    );
    let after = opsctl.json(&["kinds", "show", "app"]).await;
    assert_eq!(after["version"], kind["version"]);
}
