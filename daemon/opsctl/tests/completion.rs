//! `opsctl completion SHELL` as a user runs it: the real binary, no daemon.

use std::process::Command;

fn opsctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_opsctl"))
        .args(args)
        // An address nothing listens on: completion must not need a node.
        .env("OPSD_ADDR", "127.0.0.1:1")
        .output()
        .expect("running opsctl")
}

#[test]
fn completion_prints_a_script_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _opsctl"),
        ("zsh", "#compdef opsctl"),
        ("fish", "complete -c opsctl"),
    ] {
        let out = opsctl(&["completion", shell]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{shell}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(marker), "{shell}: no {marker:?} in:\n{stdout}");
        assert!(stdout.contains("settings"), "{shell}: subcommands missing");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = opsctl(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bash") && stderr.contains("zsh") && stderr.contains("fish"),
        "{stderr}"
    );
}
