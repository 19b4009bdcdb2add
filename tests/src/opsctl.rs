//! Running the real `opsctl` binary as a script would.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::opsctl_bin;

/// How long one opsctl invocation may take; its own request deadline is 15 s.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the real `opsctl` with a given `--addr`.
pub struct Opsctl {
    /// The `--addr` value.
    pub addr: String,
}

impl Opsctl {
    /// An opsctl command line with `--addr` set and nothing inherited from the
    /// test's environment (`OPSD_ADDR` would otherwise configure it).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(opsctl_bin());
        cmd.env_remove("OPSD_ADDR")
            .env_remove("OPSD_TOKEN")
            .env_remove("OPSD_TOKEN_FILE")
            .env_remove("OPSD_CA")
            .envs(crate::access::opsctl_env(&self.addr))
            .arg("--addr")
            .arg(&self.addr)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs opsctl to completion and returns its output, whatever the exit code.
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        match tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!("running opsctl {args:?}: {e}"),
            Err(_) => panic!("opsctl {args:?} did not finish in {RUN_TIMEOUT:?}"),
        }
    }

    /// Runs `opsctl --output json ARGS`, requires success, and returns the one
    /// JSON document it printed (parsing fails on anything else on stdout).
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.run(&full).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "opsctl {full:?} failed ({}):\nstderr: {stderr}\nstdout: {stdout}",
            out.status
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("opsctl {full:?} did not print one JSON document ({e}):\n{stdout}"))
    }

    /// Runs opsctl expecting failure with `code`; returns its stderr after
    /// checking that nothing was printed on stdout.
    pub async fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "opsctl {args:?} should exit {code}:\nstderr: {stderr}\nstdout: {stdout}"
        );
        assert!(
            stdout.is_empty(),
            "opsctl {args:?} failed but printed on stdout: {stdout}"
        );
        stderr
    }
}
