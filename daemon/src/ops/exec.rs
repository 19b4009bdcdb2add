//! The `exec` provider: a work state's step is the shell script in its kind
//! (`run = "..."`). Any script or binary can so be the provider of a state
//! (non-negotiable 7) without touching opsd's code.
//!
//! The script runs under `/bin/sh -c` in its own process group, in the
//! attempt's scratch directory, with the resource as one JSON object on stdin
//! and a clean environment: `PATH`, `HOME` (the scratch directory), `LANG`,
//! the settings in scope whose keys are variable names, and `OPSD_*`
//! variables (nothing of opsd's own environment). With `--exec-user` it runs
//! as that user. Its stdout and stderr lines go
//! to the run's log as they arrive; it may write a JSON object to the file
//! named by `OPSD_OUTPUTS`, merged into the resource's outputs; exit 0 is
//! success. Cancelling the step sends SIGTERM to the whole group, then SIGKILL
//! after a grace period, so nothing the script started outlives the run.
//!
//! Background processes a script leaves behind after exiting normally are
//! not killed (a script may mean to start a daemon), but their hold on the
//! script's stdout does not keep the step open: output is read for at most
//! [`DRAIN_AFTER_EXIT`](super::process::DRAIN_AFTER_EXIT) after the script
//! exits. A daemon should redirect its output (and use `setsid` if it must
//! survive a cancel).

use std::path::Path;
use std::time::Duration;

use opsd_proto::json::typed_value;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::process::{describe_status, run_logged, user_shell, Ended};
use super::{state_error, LogSink, Object, Provider, StepRequest, StepResult};
use crate::domain::kind::Kind;
use crate::domain::resources::json_type;
use opsd_proto::machine_env::is_env_setting;

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
    fn name(&self) -> &'static str {
        "exec"
    }

    /// Every work state has a script (`run`), and none names a `step`: the
    /// script is the step.
    fn check_kind(&self, kind: &Kind) -> Result<(), String> {
        for (name, state) in &kind.states {
            if state.step.is_some() {
                return Err(state_error(
                    kind,
                    name,
                    "step",
                    "the exec provider has no named steps: a work state's step is its script (run)",
                ));
            }
            match &state.run {
                Some(script) if script.trim().is_empty() => return Err(state_error(kind, name, "run", "empty script")),
                None if state.work => {
                    return Err(state_error(
                        kind,
                        name,
                        "run",
                        "missing: a work state of an exec kind must have a script",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult {
        let script = match req.run.as_deref() {
            Some(s) if !s.trim().is_empty() => s.to_string(),
            _ => return StepResult::failed(format!("state {} has no script", req.state)),
        };
        if cancel.is_cancelled() {
            return StepResult::cancelled();
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

        // A clean environment (PATH, HOME, LANG), then the settings in scope
        // whose keys are variable names, then opsd's own, which win.
        let mut cmd = user_shell(&script, &req.work_dir);
        cmd.current_dir(&req.work_dir)
            .envs(
                req.settings
                    .iter()
                    .filter(|(k, v)| is_env_setting(k, v) && !k.starts_with("OPSD_")),
            )
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
            Ok(Ended::Cancelled) => return StepResult::cancelled(),
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

/// The JSON object a script reads on stdin: the resource, the run and the
/// settings in scope (`settings`, an object of strings). The event's args
/// travel as text, as typed; a script gets each by the rule of `opsctl --set`
/// ([`typed_value`]): `2` is a number, `"2"` and `v2` strings. Settings are
/// always strings.
fn stdin_document(req: &StepRequest) -> Vec<u8> {
    let args: Object = req.args.iter().map(|(k, v)| (k.clone(), typed_value(v))).collect();
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
        "settings": req.settings,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Instant;

    use nix::errno::Errno;
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;

    use tokio::sync::mpsc;

    use crate::domain::test_kinds::small_app;
    use crate::ops::process::{group_gone, group_gone_within, MAX_LINE_BYTES};

    fn request(dir: &Path, script: &str) -> StepRequest {
        let mut spec = Object::new();
        spec.insert("size".into(), json!(3));
        let mut outputs = Object::new();
        outputs.insert("earlier".into(), json!("yes"));
        let mut args = BTreeMap::new();
        args.insert("why".into(), "testing".into());
        args.insert("count".into(), "2".into());
        args.insert("tag".into(), "\"2\"".into());
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
            step: None,
            run: Some(script.into()),
            work_dir: dir.to_path_buf(),
            node_id: 7,
            settings: BTreeMap::from([
                ("LOG_LEVEL".to_string(), "debug".to_string()),
                ("db/url".to_string(), "2".to_string()),
            ]),
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
                "args": {"why": "testing", "count": 2, "tag": "2"}, "event": "create", "state": "making", "run_id": "r-42", "attempt": 2,
                "settings": {"LOG_LEVEL": "debug", "db/url": "2"},
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
        req.run = None;
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
        assert_eq!(result, StepResult::cancelled());
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
        assert_eq!(result, StepResult::cancelled());
        let gone = group_gone_within(pgid, Duration::from_secs(2)).await;
        assert!(gone, "group {pgid} still has live processes");
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
        let gone = group_gone_within(pgid, Duration::from_secs(2)).await;
        assert!(gone, "group {pgid} survived the dropped step");
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

    /// A small exec kind, edited by the check tests.
    fn app() -> String {
        small_app("exec", "run = \"make\"\n")
    }

    fn check(source: &str) -> Result<(), String> {
        ExecProvider::new(Duration::from_secs(1)).check_kind(&Kind::parse(source).unwrap())
    }

    #[test]
    fn an_exec_work_state_needs_a_script() {
        check(&app()).unwrap();
        let e = check(&app().replace("run = \"make\"\n", "")).unwrap_err();
        assert!(e.starts_with("kind \"app\": state \"building\": run: missing"), "{e}");
        let e = check(&app().replace("run = \"make\"", "run = \"  \"")).unwrap_err();
        assert_eq!(e, "kind \"app\": state \"building\": run: empty script");
    }

    #[test]
    fn an_exec_kind_names_no_step() {
        let e = check(&app().replace("run = \"make\"", "run = \"make\"\nstep = \"build_image\"")).unwrap_err();
        assert!(
            e.starts_with("kind \"app\": state \"building\": step: the exec provider has no named steps"),
            "{e}"
        );
    }
}
