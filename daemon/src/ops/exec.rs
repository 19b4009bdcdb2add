//! The `exec` provider: a work state's step is the shell script in its kind
//! (`run = "..."`). Any script or binary can so be the provider of a state
//! (non-negotiable 7) without touching opsd's code.
//!
//! The script runs under `/bin/sh -c` in its own process group, in the
//! attempt's scratch directory, with the resource as one JSON object on stdin
//! and `OPSD_*` variables in its environment. Its stdout and stderr lines go
//! to the run's log as they arrive; it may write a JSON object to the file
//! named by `OPSD_OUTPUTS`, merged into the resource's outputs; exit 0 is
//! success. Cancelling the step sends SIGTERM to the whole group, then SIGKILL
//! after a grace period, so nothing the script started outlives the run.
//!
//! Background processes a script leaves behind after exiting normally are
//! not killed (a script may mean to start a daemon), but their hold on the
//! script's stdout does not keep the step open: output is read for at most
//! [`DRAIN_AFTER_EXIT`] after the script exits. A daemon should redirect its
//! output (and use `setsid` if it must survive a cancel).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{LogSink, Object, Provider, StepRequest, StepResult};
use crate::domain::resources::json_type;

/// The longest log line kept, in bytes; a script printing a huge line (or
/// binary without newlines) must not exhaust memory or the run's log.
pub const MAX_LINE_BYTES: usize = 4096;

/// How long output is still read after the script exited: long enough to
/// get its last lines, short enough that a grandchild holding the pipe open
/// does not keep the step running.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// The file name, in the attempt's work directory, that `OPSD_OUTPUTS` names.
const OUTPUTS_FILE: &str = "outputs.json";

/// Runs a kind's per-state scripts: the provider that lets any script be a
/// state's step.
#[derive(Debug, Clone)]
pub struct ExecProvider {
    /// Time between SIGTERM and SIGKILL when a step is cancelled.
    grace: Duration,
}

impl ExecProvider {
    /// A provider that, on cancel, gives a script's process group `grace`
    /// between SIGTERM and SIGKILL to clean up.
    pub fn new(grace: Duration) -> Self {
        ExecProvider { grace }
    }
}

#[async_trait::async_trait]
impl Provider for ExecProvider {
    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult {
        let script = match req.script.as_deref() {
            Some(s) if !s.trim().is_empty() => s.to_string(),
            _ => return StepResult::failed(format!("state {} has no script", req.state)),
        };
        if cancel.is_cancelled() {
            return StepResult::failed("cancelled");
        }
        let outputs_path = req.work_dir.join(OUTPUTS_FILE);
        match std::fs::remove_file(&outputs_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return StepResult::failed(format!(
                    "cannot remove the stale outputs file {}: {e}",
                    outputs_path.display()
                ))
            }
        }
        let stdin = stdin_document(&req);

        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&script)
            .current_dir(&req.work_dir)
            .env("OPSD_KIND", &req.kind)
            .env("OPSD_NAME", &req.name)
            .env("OPSD_STATE", &req.state)
            .env("OPSD_EVENT", &req.event)
            .env("OPSD_RUN_ID", &req.run_id)
            .env("OPSD_ATTEMPT", req.attempt.to_string())
            .env("OPSD_NODE_ID", req.node_id.to_string())
            .env("OPSD_OUTPUTS", &outputs_path);
        let what = format!("the script of state {}", req.state);
        let status = match run_logged(cmd, &what, Some(stdin), &log, &cancel, self.grace).await {
            Err(e) => return StepResult::failed(e),
            Ok(Ended::Cancelled) => return StepResult::failed("cancelled"),
            Ok(Ended::Exited(status)) => status,
        };
        let outputs = read_outputs(&outputs_path);
        if status.success() {
            match outputs {
                Ok(outputs) => StepResult::Succeeded { outputs },
                Err(error) => StepResult::failed(error),
            }
        } else {
            let outputs = outputs.unwrap_or_else(|e| {
                log.line(format!("opsd: ignoring the outputs of the failed script: {e}"));
                Object::new()
            });
            StepResult::Failed {
                error: format!("script {}", describe_status(status)),
                outputs,
            }
        }
    }
}

/// The JSON object a script reads on stdin: the resource and the run.
fn stdin_document(req: &StepRequest) -> Vec<u8> {
    let args: Object = req
        .args
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let doc = json!({
        "kind": req.kind,
        "name": req.name,
        "spec": req.spec,
        "outputs": req.outputs,
        "args": args,
        "event": req.event,
        "state": req.state,
        "run_id": req.run_id,
        "attempt": req.attempt,
    });
    let mut bytes = doc.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

/// Reads the outputs file a script may have written: absent means no
/// outputs; anything but a JSON object is an error naming the file.
fn read_outputs(path: &Path) -> Result<Object, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Object::new()),
        Err(e) => {
            return Err(format!(
                "outputs file OPSD_OUTPUTS: cannot read {}: {e}",
                path.display()
            ))
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "outputs file OPSD_OUTPUTS: not a JSON object: found {} in {}",
            json_type(&other),
            path.display()
        )),
        Err(e) => Err(format!(
            "outputs file OPSD_OUTPUTS: not a JSON object: {e} in {}",
            path.display()
        )),
    }
}

/// "exited with status N" or "killed by signal NAME", for error messages.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {}", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        None => format!("ended with {status}"),
    }
}

/// How a command run by [`run_logged`] ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// It exited (or was killed by someone else) with this status.
    Exited(ExitStatus),
    /// The cancellation token fired; its process group was terminated.
    Cancelled,
}

/// Runs `cmd` in a new process group, writing `stdin` (then closing it) if
/// given, every stdout/stderr line to `log`. When `cancel` fires the group
/// gets SIGTERM, then SIGKILL after `grace`. If the returned future is
/// dropped before the command was reaped, the group is SIGKILLed. `what`
/// names the command in errors.
pub(crate) async fn run_logged(
    mut cmd: Command,
    what: &str,
    stdin: Option<Vec<u8>>,
    log: &LogSink,
    cancel: &CancellationToken,
    grace: Duration,
) -> Result<Ended, String> {
    cmd.process_group(0)
        .kill_on_drop(false)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let pgid = match child.id() {
        Some(id) => Pid::from_raw(id as i32),
        None => return Err(format!("cannot start {what}: it has no process id")),
    };
    let mut guard = GroupGuard { pgid: Some(pgid) };

    let child_in = child.stdin.take();
    let child_out = child.stdout.take();
    let child_err = child.stderr.take();
    let feed = async move {
        if let (Some(mut w), Some(bytes)) = (child_in, stdin) {
            // A script that does not read stdin may exit first: a broken
            // pipe here is fine.
            let _ = w.write_all(&bytes).await;
            let _ = w.shutdown().await;
        }
    };
    let pumps = async {
        tokio::join!(feed, pump(child_out, log), pump(child_err, log));
    };
    tokio::pin!(pumps);
    let exit = wait_or_cancel(&mut child, pgid, cancel, grace, what);
    tokio::pin!(exit);

    let mut pumped = false;
    let ended = loop {
        tokio::select! {
            ended = &mut exit => break ended,
            _ = &mut pumps, if !pumped => pumped = true,
        }
    };
    if ended.is_ok() {
        // Reaped: the group id may be reused from now on.
        guard.pgid = None;
    }
    if !pumped {
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut pumps).await;
    }
    ended
}

/// Waits for the child to exit or, when `cancel` fires, terminates its
/// process group: SIGTERM, up to `grace` for it to exit, then SIGKILL.
async fn wait_or_cancel(
    child: &mut Child,
    pgid: Pid,
    cancel: &CancellationToken,
    grace: Duration,
    what: &str,
) -> Result<Ended, String> {
    tokio::select! {
        biased;
        status = child.wait() => {
            status.map(Ended::Exited).map_err(|e| format!("cannot wait for {what}: {e}"))
        }
        _ = cancel.cancelled() => {
            let _ = killpg(pgid, Signal::SIGTERM);
            let _ = tokio::time::timeout(grace, child.wait()).await;
            // Whether or not the leader went, sweep what is left of the group.
            let _ = killpg(pgid, Signal::SIGKILL);
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(_) => Ok(Ended::Cancelled),
                Err(_) => Err(format!("{what} did not exit after SIGKILL")),
            }
        }
    }
}

/// Kills a process group with SIGKILL when dropped while still armed, so a
/// dropped step future leaves no processes behind.
struct GroupGuard {
    /// The group to kill; `None` once its leader was reaped.
    pgid: Option<Pid>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Copies a stream's lines to the log until it ends or fails.
async fn pump<R: AsyncRead + Unpin>(stream: Option<R>, log: &LogSink) {
    let Some(mut stream) = stream else { return };
    let mut lines = LineSplitter::default();
    let mut buf = vec![0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.push(&buf[..n], |l| log.line(l)),
        }
    }
    lines.finish(|l| log.line(l));
}

/// Splits a byte stream into lossy UTF-8 lines, keeping at most
/// [`MAX_LINE_BYTES`] of each and marking the ones cut.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    /// The start of the current line (at most `MAX_LINE_BYTES`).
    line: Vec<u8>,
    /// The current line's full length so far.
    len: usize,
}

impl LineSplitter {
    /// Feeds bytes, calling `emit` for every line they complete.
    pub(crate) fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(String)) {
        while !bytes.is_empty() {
            let (part, rest, complete) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &bytes[bytes.len()..], false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.len += part.len();
            if complete {
                emit(self.take());
            }
            bytes = rest;
        }
    }

    /// Emits the last line if the stream did not end with a newline.
    pub(crate) fn finish(&mut self, mut emit: impl FnMut(String)) {
        if self.len > 0 {
            emit(self.take());
        }
    }

    /// The current line as text, with the marker if it was cut.
    fn take(&mut self) -> String {
        if self.line.last() == Some(&b'\r') && self.len == self.line.len() {
            self.line.pop();
            self.len -= 1;
        }
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if self.len > self.line.len() {
            text.push_str(&format!(" [... line cut: {} bytes in all]", self.len));
        }
        self.line.clear();
        self.len = 0;
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Instant;

    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use tokio::sync::mpsc;

    fn request(dir: &Path, script: &str) -> StepRequest {
        let mut spec = Object::new();
        spec.insert("size".into(), json!(3));
        let mut outputs = Object::new();
        outputs.insert("earlier".into(), json!("yes"));
        let mut args = BTreeMap::new();
        args.insert("why".into(), "testing".into());
        StepRequest {
            kind: "widget".into(),
            name: "w1".into(),
            spec,
            outputs,
            args,
            event: "create".into(),
            state: "making".into(),
            run_id: "r-42".into(),
            attempt: 2,
            script: Some(script.into()),
            work_dir: dir.to_path_buf(),
            node_id: 7,
        }
    }

    async fn run(req: StepRequest, grace: Duration) -> (StepResult, Vec<String>) {
        let (log, rx) = LogSink::channel();
        let result = ExecProvider::new(grace).step(req, log, CancellationToken::new()).await;
        (result, drain(rx))
    }

    fn drain(mut rx: mpsc::UnboundedReceiver<String>) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        lines
    }

    async fn read_pid(path: &PathBuf) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(s) = std::fs::read_to_string(path) {
                if let Ok(p) = s.trim().parse() {
                    return p;
                }
            }
            assert!(Instant::now() < deadline, "the script never wrote {}", path.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True when no live (non-zombie) process is in the group. Zombies are
    /// reparented processes waiting for init, which may reap them late.
    fn group_gone(pgid: i32) -> bool {
        if kill(Pid::from_raw(-pgid), None) == Err(Errno::ESRCH) {
            return true;
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return false;
        };
        for e in entries.flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else { continue };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X" {
                return false;
            }
        }
        true
    }

    #[tokio::test]
    async fn success_reports_outputs_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OUTPUTS_FILE), "stale garbage").unwrap();
        let script = r#"echo hello; echo oops >&2; printf '{"address": "10.0.0.1", "n": 2}' > "$OPSD_OUTPUTS""#;
        let (result, lines) = run(request(dir.path(), script), Duration::from_secs(1)).await;
        let mut want = Object::new();
        want.insert("address".into(), json!("10.0.0.1"));
        want.insert("n".into(), json!(2));
        assert_eq!(result, StepResult::Succeeded { outputs: want });
        assert!(lines.contains(&"hello".to_string()), "{lines:?}");
        assert!(lines.contains(&"oops".to_string()), "{lines:?}");
    }

    #[tokio::test]
    async fn stale_outputs_file_is_removed_before_the_script_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OUTPUTS_FILE), r#"{"stale": true}"#).unwrap();
        let (result, _) = run(request(dir.path(), "true"), Duration::from_secs(1)).await;
        assert_eq!(result, StepResult::Succeeded { outputs: Object::new() });
    }

    #[tokio::test]
    async fn stdin_carries_the_resource_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let (result, _) = run(request(dir.path(), "cat > got.json"), Duration::from_secs(1)).await;
        assert!(matches!(result, StepResult::Succeeded { .. }), "{result:?}");
        let got: Value = serde_json::from_slice(&std::fs::read(dir.path().join("got.json")).unwrap()).unwrap();
        assert_eq!(
            got,
            json!({
                "kind": "widget", "name": "w1", "spec": {"size": 3}, "outputs": {"earlier": "yes"},
                "args": {"why": "testing"}, "event": "create", "state": "making", "run_id": "r-42", "attempt": 2,
            })
        );
    }

    #[tokio::test]
    async fn a_script_ignoring_stdin_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path(), "exit 0");
        // Far more than a pipe holds, so the write cannot finish.
        req.spec.insert("big".into(), json!("x".repeat(1 << 20)));
        let (result, _) = run(req, Duration::from_secs(1)).await;
        assert_eq!(result, StepResult::Succeeded { outputs: Object::new() });
    }

    #[tokio::test]
    async fn environment_names_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"for v in OPSD_KIND OPSD_NAME OPSD_STATE OPSD_EVENT OPSD_RUN_ID OPSD_ATTEMPT OPSD_NODE_ID OPSD_OUTPUTS; do
            eval "echo $v=\$$v"; done; echo "PATH set: ${PATH:+yes}"; pwd"#;
        let (result, lines) = run(request(dir.path(), script), Duration::from_secs(1)).await;
        assert!(matches!(result, StepResult::Succeeded { .. }), "{result:?}");
        let outputs = dir.path().join(OUTPUTS_FILE);
        for want in [
            "OPSD_KIND=widget".to_string(),
            "OPSD_NAME=w1".into(),
            "OPSD_STATE=making".into(),
            "OPSD_EVENT=create".into(),
            "OPSD_RUN_ID=r-42".into(),
            "OPSD_ATTEMPT=2".into(),
            "OPSD_NODE_ID=7".into(),
            format!("OPSD_OUTPUTS={}", outputs.display()),
            "PATH set: yes".into(),
        ] {
            assert!(lines.contains(&want), "missing {want} in {lines:?}");
        }
        let cwd = std::fs::canonicalize(dir.path()).unwrap();
        assert!(lines.contains(&cwd.display().to_string()), "{lines:?}");
    }

    #[tokio::test]
    async fn nonzero_exit_fails_with_the_status_and_keeps_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"echo '{"half": "done"}' > "$OPSD_OUTPUTS"; exit 3"#;
        let (result, _) = run(request(dir.path(), script), Duration::from_secs(1)).await;
        let mut want = Object::new();
        want.insert("half".into(), json!("done"));
        assert_eq!(
            result,
            StepResult::Failed {
                error: "script exited with status 3".into(),
                outputs: want
            }
        );
    }

    #[tokio::test]
    async fn killed_script_names_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let (result, _) = run(request(dir.path(), "kill -9 $$"), Duration::from_secs(1)).await;
        assert_eq!(result, StepResult::failed("script killed by signal SIGKILL"));
    }

    #[tokio::test]
    async fn garbage_outputs_file_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        for (content, detail) in [("this is not json", "expected"), ("[1, 2]", "found an array")] {
            let script = format!("printf '{content}' > \"$OPSD_OUTPUTS\"");
            let (result, _) = run(request(dir.path(), &script), Duration::from_secs(1)).await;
            let StepResult::Failed { error, .. } = result else {
                panic!("{result:?}")
            };
            assert!(
                error.starts_with("outputs file OPSD_OUTPUTS: not a JSON object: "),
                "{error}"
            );
            assert!(error.contains(detail), "{error}");
            assert!(error.contains(OUTPUTS_FILE), "{error}");
        }
    }

    #[tokio::test]
    async fn missing_script_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path(), "");
        let (result, _) = run(req.clone(), Duration::from_secs(1)).await;
        assert_eq!(result, StepResult::failed("state making has no script"));
        req.script = None;
        let (result, _) = run(req, Duration::from_secs(1)).await;
        assert_eq!(result, StepResult::failed("state making has no script"));
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_a_last_line_without_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let script = "head -c 10000 /dev/zero | tr '\\0' x; echo; printf 'tail'";
        let (result, lines) = run(request(dir.path(), script), Duration::from_secs(1)).await;
        assert!(matches!(result, StepResult::Succeeded { .. }), "{result:?}");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with(&"x".repeat(MAX_LINE_BYTES)), "{}", &lines[0][..50]);
        assert!(
            lines[0].ends_with("[... line cut: 10000 bytes in all]"),
            "{}",
            &lines[0][4000..]
        );
        assert_eq!(lines[1], "tail");
    }

    #[tokio::test]
    async fn cancel_terminates_the_process_group_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(dir.path(), "echo $$ > pid; exec sleep 30");
        let (log, _rx) = LogSink::channel();
        let cancel = CancellationToken::new();
        let provider = ExecProvider::new(Duration::from_secs(5));
        let step = tokio::spawn({
            let cancel = cancel.clone();
            async move { provider.step(req, log, cancel).await }
        });
        let pgid = read_pid(&dir.path().join("pid")).await;
        assert!(!group_gone(pgid));
        let start = Instant::now();
        cancel.cancel();
        let result = step.await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
        assert_eq!(result, StepResult::failed("cancelled"));
        assert_eq!(kill(Pid::from_raw(-pgid), None), Err(Errno::ESRCH));
    }

    #[tokio::test]
    async fn a_script_ignoring_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(dir.path(), "trap '' TERM; echo $$ > pid; sleep 30; echo survived");
        let (log, rx) = LogSink::channel();
        let cancel = CancellationToken::new();
        let grace = Duration::from_millis(700);
        let provider = ExecProvider::new(grace);
        let step = tokio::spawn({
            let cancel = cancel.clone();
            async move { provider.step(req, log, cancel).await }
        });
        let pgid = read_pid(&dir.path().join("pid")).await;
        let start = Instant::now();
        cancel.cancel();
        let result = step.await.unwrap();
        let took = start.elapsed();
        assert!(took >= grace, "SIGKILL came before the grace: {took:?}");
        assert!(took < grace + Duration::from_secs(2), "took {took:?}");
        assert_eq!(result, StepResult::failed("cancelled"));
        assert!(group_gone(pgid), "group {pgid} still has live processes");
        assert!(!drain(rx).contains(&"survived".to_string()));
    }

    #[tokio::test]
    async fn dropping_the_step_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(dir.path(), "echo $$ > pid; sleep 30 & sleep 30");
        let (log, _rx) = LogSink::channel();
        let provider = ExecProvider::new(Duration::from_secs(5));
        let step = tokio::spawn(async move { provider.step(req, log, CancellationToken::new()).await });
        let pgid = read_pid(&dir.path().join("pid")).await;
        step.abort();
        let _ = step.await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while !group_gone(pgid) {
            assert!(Instant::now() < deadline, "group {pgid} survived the dropped step");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_grandchild_holding_stdout_does_not_keep_the_step_open() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(dir.path(), "echo $$ > pid; (sleep 30 &); echo done");
        let start = Instant::now();
        let (result, lines) = run(req, Duration::from_secs(1)).await;
        assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
        assert!(matches!(result, StepResult::Succeeded { .. }), "{result:?}");
        assert!(lines.contains(&"done".to_string()), "{lines:?}");
        let pgid = read_pid(&dir.path().join("pid")).await;
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }

    #[test]
    fn splitter_handles_split_lines_and_crlf() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.push(b"ab", |l| got.push(l));
        s.push(b"c\r\nde\n\nf", |l| got.push(l));
        s.push(&[0xff, b'\n'], |l| got.push(l));
        s.finish(|l| got.push(l));
        assert_eq!(got, vec!["abc", "de", "", "f\u{fffd}"]);
    }
}
