//! Every example of opsctl's `--help` texts works as typed: the test reads
//! `opsctl --help` and the help of every subcommand (found from the
//! `Commands:` lists), takes the lines under `Examples:`, and types them in
//! order — the top-level tour first, then each command in the order
//! `opsctl --help` lists them — into bash in a scratch directory against a
//! real single-node opsd. Every example must exit 0.
//!
//! What the test provides is what a reader has at hand: the kind of
//! docs/kinds.md (`app.toml` and its `deploy.sh`), the spec files the
//! examples name (`api.toml`, `blog.json`), the directories shell completions
//! go to, and its node's address: an example's `--addr` list is the reader's
//! cluster, so it is pointed at the test's node. The examples of `resolve`
//! name a service, `web`: the test makes one first (an image, a cluster of
//! one machine, a service on a free port), as a reader would have. An example
//! that watches (`settings watch`, `resolve --watch`) runs until stopped: it
//! must print the change the test then makes (for `resolve`, the endpoints it
//! prints at once) and still be running.

use std::process::Output;

use opsd_tests::{docs, opsctl_bin, Cluster, Options};

/// `opsctl ARGS --help`, which must succeed.
fn help(args: &[&str]) -> String {
    let out: Output = std::process::Command::new(opsctl_bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "opsctl {args:?} --help failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands listed under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// The indented lines under `Examples:`.
fn examples(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Examples:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Every help page, depth first in the order listed: (the command's words, its examples).
fn pages(words: Vec<String>, out: &mut Vec<(Vec<String>, Vec<String>)>) {
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let text = help(&args);
    out.push((words.clone(), examples(&text)));
    for sub in subcommands(&text) {
        let mut deeper = words.clone();
        deeper.push(sub);
        pages(deeper, out);
    }
}

/// `--addr LIST` pointed at the test's node (`$OPSD_ADDR`).
fn at_test_node(example: &str) -> String {
    let mut words: Vec<&str> = example.split(' ').collect();
    if let Some(i) = words.iter().position(|w| *w == "--addr") {
        if i + 1 < words.len() {
            words[i + 1] = "\"$OPSD_ADDR\"";
        }
    }
    words.join(" ")
}

/// A watch example: started in the background, it must print a change made
/// under its prefix and still be running; then it is stopped.
fn watched(example: &str) -> String {
    let prefix = example.split_whitespace().last().unwrap_or("");
    let quoted = docs::shell_quote(example);
    format!(
        "printf '+ %s &\\n' {quoted} >&2\n\
         {example} > watch.out &\n\
         watch_pid=$!\n\
         for i in $(seq 300); do\n\
           opsctl settings put {prefix}watched-by-the-test \"$i\" > /dev/null || exit 1\n\
           grep -q watched-by-the-test watch.out && break\n\
           sleep 0.2\n\
         done\n\
         if ! grep -q watched-by-the-test watch.out || ! kill -0 $watch_pid; then\n\
           printf 'FAILED: %s printed no change, or stopped\\n' {quoted} >&2; exit 1\n\
         fi\n\
         kill $watch_pid\n"
    )
}

/// A `resolve --watch` example: started in the background, it must print
/// the service's endpoints and still be running; then it is stopped.
fn watched_service(example: &str) -> String {
    let quoted = docs::shell_quote(example);
    format!(
        "printf '+ %s &\\n' {quoted} >&2\n\
         {example} > resolve.out &\n\
         watch_pid=$!\n\
         for i in $(seq 100); do grep -q endpoints resolve.out && break; sleep 0.2; done\n\
         if ! grep -q endpoints resolve.out || ! kill -0 $watch_pid; then\n\
           printf 'FAILED: %s printed no endpoints, or stopped\\n' {quoted} >&2; exit 1\n\
         fi\n\
         kill $watch_pid\n"
    )
}

/// What the examples of `resolve` need: a service `web` on `port`, in
/// front of a cluster of one small HTTP server.
fn service_web(port: u16) -> String {
    [
        "mkdir -p web-src && echo hello > web-src/index.html".to_string(),
        "opsctl create image/web --set source=\"$PWD/web-src\" \
         --set 'start=exec python3 -m http.server \"$PORT\" --bind 127.0.0.1' --wait > /dev/null"
            .to_string(),
        "opsctl create cluster/web-v1 --set image=web --set size=1 --wait > /dev/null".to_string(),
        format!("opsctl create service/web --set port={port} --set cluster=web-v1 --wait > /dev/null"),
    ]
    .iter()
    .map(|c| docs::checked(c))
    .collect()
}

#[tokio::test]
async fn opsctl_help_examples_run() {
    // `opsctl logs`'s example pipes into jq.
    if std::process::Command::new("jq").arg("--version").output().is_err() {
        opsd_tests::skip("opsctl_help_examples_run", "jq is not installed (apt-get install jq)");
        return;
    }
    let mut all = Vec::new();
    pages(Vec::new(), &mut all);
    let names: Vec<String> = all.iter().map(|(words, _)| words.join(" ")).collect();
    for page in ["", "kinds apply", "create", "do", "logs", "cancel", "completion"] {
        let i = names.iter().position(|n| n == page).unwrap();
        assert!(!all[i].1.is_empty(), "`opsctl {page} --help` has examples");
    }

    let dir = tempfile::tempdir().unwrap();
    let kinds_doc = docs::fenced_blocks(&docs::page("docs/kinds.md"));
    assert_eq!(docs::write_files(&kinds_doc, dir.path()), ["app.toml", "deploy.sh"]);
    std::fs::write(dir.path().join("api.toml"), "repo = \"git@example.com:api.git\"\n").unwrap();
    std::fs::write(dir.path().join("blog.json"), r#"{"repo": "git@example.com:blog.git"}"#).unwrap();
    std::fs::create_dir_all(dir.path().join(".zfunc")).unwrap();
    std::fs::create_dir_all(dir.path().join(".config/fish/completions")).unwrap();

    let cluster = Cluster::start(1, Options::default()).await;
    let host = cluster.node(0).config().listen.ip();
    let service_port = std::net::TcpListener::bind((host, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let mut script = String::new();
    let mut count = 0;
    for (words, lines) in &all {
        let command: Vec<&str> = std::iter::once("opsctl")
            .chain(words.iter().map(String::as_str))
            .collect();
        script.push_str(&format!("printf '\\n## %s --help\\n' '{}' >&2\n", command.join(" ")));
        if words.len() == 1 && words[0] == "resolve" {
            script.push_str(&service_web(service_port));
        }
        for example in lines {
            count += 1;
            if example.contains("settings watch") {
                script.push_str(&watched(example));
            } else if example.contains("resolve") && example.contains("--watch") {
                script.push_str(&watched_service(example));
            } else {
                script.push_str(&docs::checked(&at_test_node(example)));
            }
        }
    }
    assert!(count >= 30, "only {count} examples found: {all:?}");

    let out = docs::bash(dir.path(), &cluster.node(0).client_addr(), &script).await;
    docs::assert_succeeded(&out, "the examples of opsctl --help");

    // What some examples leave behind.
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("run.json")).unwrap()).unwrap();
    assert_eq!(run["outcome"], "succeeded", "{run:#}");
    let zsh = std::fs::read_to_string(dir.path().join(".zfunc/_opsctl")).unwrap();
    assert!(zsh.contains("opsctl"), "{zsh}");
}
