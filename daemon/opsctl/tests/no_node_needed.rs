//! What opsctl refuses before it asks any node: usage errors (exit code 2)
//! and kind files whose script files it cannot read.

use std::process::{Command, Output};

fn opsctl(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opsctl"))
        .args(args)
        .current_dir(dir)
        // An address nothing listens on: none of these may need a node.
        .env("OPSD_ADDR", "127.0.0.1:1")
        .output()
        .expect("running opsctl")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn create_needs_kind_slash_name_or_two_words() {
    let dir = tempfile::tempdir().unwrap();
    let out = opsctl(dir.path(), &["create", "app"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("give KIND/NAME, like app/web"),
        "{}",
        stderr(&out)
    );
    let out = opsctl(dir.path(), &["create", "app/web", "web"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn quiet_and_wait_do_not_go_together() {
    let dir = tempfile::tempdir().unwrap();
    let out = opsctl(dir.path(), &["do", "app/web", "deploy", "-q", "--wait"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--wait"), "{}", stderr(&out));
}

#[test]
fn a_run_file_that_cannot_be_read_is_refused_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let kind = "kind = \"app\"\ninitial = \"go\"\nprovider = \"exec\"\n\n[states.go]\nwork = true\n\
                run = { file = \"scripts/go.sh\" }\nnext = \"done\"\nfail = \"done\"\n\n[states.done]\nfinal = true\n";
    std::fs::create_dir(dir.path().join("kinds")).unwrap();
    std::fs::write(dir.path().join("kinds/app.toml"), kind).unwrap();
    // Relative to the kind file, not to the current directory.
    let out = opsctl(dir.path(), &["kinds", "apply", "kinds/app.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let resolved = dir.path().join("kinds/scripts/go.sh");
    assert_eq!(
        stderr(&out).trim_end(),
        format!(
            "error: kind file kinds/app.toml was not applied: kind \"app\": state \"go\": run: scripts/go.sh: \
             cannot read {}: No such file or directory",
            resolved.display()
        )
    );
    // From standard input, relative to the current directory.
    let out = Command::new(env!("CARGO_BIN_EXE_opsctl"))
        .args(["kinds", "apply", "-"])
        .current_dir(dir.path())
        .env("OPSD_ADDR", "127.0.0.1:1")
        .stdin(std::fs::File::open(dir.path().join("kinds/app.toml")).unwrap())
        .output()
        .unwrap();
    let expected = format!("cannot read {}:", dir.path().join("scripts/go.sh").display());
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
}
