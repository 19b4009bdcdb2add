//! Processes for providers' steps: shell commands run in their own process
//! group with their output in the run's log, process groups stopped with
//! SIGTERM then SIGKILL, detached processes that outlive opsd, and what
//! `/proc` says about a process. Every provider that runs something uses
//! these, so a group is never left behind in one provider and cleaned up in
//! another.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, Pid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::LogSink;

/// The longest log line kept, in bytes; a command printing a huge line (or
/// binary without newlines) must not exhaust memory or the run's log.
pub const MAX_LINE_BYTES: usize = 4096;

/// How long output is still read after a command exited: long enough to
/// get its last lines, short enough that a grandchild holding the pipe open
/// does not keep the step running.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Starts `$1` under `/bin/sh` in a new session (so its pid leads its own
/// process group) with output appended to the file `$2`, and prints its pid.
/// The launcher shell exits at once, so the process is not opsd's child: it
/// is reparented and reaped by init, and outlives opsd.
const LAUNCHER: &str = r#"setsid /bin/sh -c "$1" >>"$2" 2>&1 </dev/null & echo $!"#;

/// `/bin/sh -c SCRIPT`: how every provider runs a command line.
pub fn shell(script: &str) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    cmd
}

/// The `PATH` a user's command starts with.
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The `LANG` a user's command starts with: UTF-8, no locale's rules.
pub const USER_LANG: &str = "C.UTF-8";

/// The unprivileged user that user commands run as (`--exec-user`), resolved
/// when opsd starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// Its name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

impl ExecUser {
    /// Looks `name` up in the system's user database; the error names the
    /// flag, for a refusal to start.
    pub fn resolve(name: &str) -> Result<ExecUser, String> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(ExecUser {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
            Ok(None) => Err(format!("--exec-user: no user named {name:?} on this system")),
            Err(e) => Err(format!("--exec-user: cannot look up user {name:?}: {e}")),
        }
    }
}

/// The user user commands run as and the (absolute) data dir, set once
/// when opsd starts (never in tests of this crate, which run commands as
/// themselves).
static EXEC_USER: std::sync::OnceLock<(ExecUser, std::path::PathBuf)> = std::sync::OnceLock::new();

/// Sets the user user commands run as, and closes the data dir to it: the
/// data dir may be searched but not listed by others, everything directly
/// in it but the trees where user commands run (`work`, `local`) becomes
/// its owner's alone, and from now on opsd makes files and directories
/// private (umask 077), opening only what it gives the user
/// ([`give_to_exec_user`]). Only the first call counts.
pub fn set_exec_user(user: ExecUser, data_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let data_dir = std::path::absolute(data_dir).map_err(|e| format!("resolving the data dir: {e}"))?;
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe {
        nix::libc::umask(0o077);
    }
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot close {} to the exec user: {e}", p.display()))
    };
    chmod(&data_dir, 0o711)?;
    let entries = std::fs::read_dir(&data_dir).map_err(|e| format!("cannot read {}: {e}", data_dir.display()))?;
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let path = entry.path();
        let mode = meta.permissions().mode() & 0o7777;
        let open_tree = matches!(entry.file_name().to_str(), Some("work" | "local"));
        chmod(&path, if open_tree { 0o711 } else { mode & 0o700 })?;
    }
    let _ = EXEC_USER.set((user, data_dir));
    Ok(())
}

/// The user user commands run as, if `--exec-user` was given.
pub fn exec_user() -> Option<&'static ExecUser> {
    EXEC_USER.get().map(|(u, _)| u)
}

/// `/bin/sh -c SCRIPT` for a command that is the user's (an exec step, a
/// build command, a machine, an exec check): it starts from a clean
/// environment, not opsd's (which may hold cloud credentials), with only
/// `PATH` ([`USER_PATH`]), `HOME` (`home`) and `LANG` ([`USER_LANG`]); the
/// caller adds the variables it gives (`OPSD_*`, settings). With
/// `--exec-user` it runs as that user, its supplementary groups dropped.
pub fn user_shell(script: &str, home: &Path) -> Command {
    let mut cmd = shell(script);
    cmd.env_clear()
        .env("PATH", USER_PATH)
        .env("HOME", home)
        .env("LANG", USER_LANG);
    if let Some(user) = exec_user() {
        // Set before exec: the group first, then (as root) the supplementary
        // groups are cleared, then the user.
        cmd.gid(user.gid).uid(user.uid);
    }
    cmd
}

/// Makes `path` (a file or directory opsd made for a user's command) the
/// exec user's, if there is one, with its contents when `recursive`, and
/// lets that user reach it: every directory above it, up to the data dir,
/// gets search (x) permission for others, but not read, so the data dir's
/// other files stay out of sight (the data dir's own parents must let the
/// user search them: the operator's choice). Nothing to do without `--exec-user`.
pub fn give_to_exec_user(path: &Path) -> Result<(), String> {
    give(path, false)
}

/// [`give_to_exec_user`], with everything under `path`.
pub fn give_tree_to_exec_user(path: &Path) -> Result<(), String> {
    give(path, true)
}

fn give(path: &Path, recursive: bool) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Some((user, data_dir)) = EXEC_USER.get() else {
        return Ok(());
    };
    let owner = |p: &Path| {
        std::os::unix::fs::lchown(p, Some(user.uid), Some(user.gid))
            .map_err(|e| format!("cannot give {} to the exec user {}: {e}", p.display(), user.name))
    };
    owner(path)?;
    if recursive && path.is_dir() {
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            for entry in entries.flatten() {
                let p = entry.path();
                owner(&p)?;
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                }
            }
        }
    }
    // Up to the data dir, not beyond: its parents are the operator's.
    for dir in path.ancestors().skip(1).take_while(|d| d.starts_with(data_dir)) {
        let Ok(meta) = std::fs::metadata(dir) else { break };
        let mode = meta.permissions().mode();
        if mode & 0o001 != 0 {
            continue;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode & 0o7777) | 0o001))
            .map_err(|e| format!("cannot open {} to the exec user: {e}", dir.display()))?;
    }
    Ok(())
}

/// "exited with status N" or "killed by signal NAME", for error messages.
pub fn describe_status(status: ExitStatus) -> String {
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
pub enum Ended {
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
pub async fn run_logged(
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
            // A command that does not read stdin may exit first: a broken
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
/// process group (see [`terminate_groups`]).
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
            terminate_groups(&[pgid], grace, async {
                let _ = child.wait().await;
            })
            .await;
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(_) => Ok(Ended::Cancelled),
                Err(_) => Err(format!("{what} did not exit after SIGKILL")),
            }
        }
    }
}

/// Stops process groups: SIGTERM to each, then up to `grace` for `gone`
/// (which says they went, or that waiting should stop), then SIGKILL to
/// every group to sweep what is left, whether or not its leader went (a
/// leader's children may outlive it). Returns whether `gone` finished
/// within the grace.
pub async fn terminate_groups(groups: &[Pid], grace: Duration, gone: impl Future<Output = ()>) -> bool {
    for pgid in groups {
        let _ = killpg(*pgid, Signal::SIGTERM);
    }
    let in_time = tokio::time::timeout(grace, gone).await.is_ok();
    for pgid in groups {
        let _ = killpg(*pgid, Signal::SIGKILL);
    }
    in_time
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
        log.room().await;
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
struct LineSplitter {
    /// The start of the current line (at most `MAX_LINE_BYTES`).
    line: Vec<u8>,
    /// The current line's full length so far.
    len: usize,
}

impl LineSplitter {
    /// Feeds bytes, calling `emit` for every line they complete.
    fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(String)) {
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
    fn finish(&mut self, mut emit: impl FnMut(String)) {
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

/// Starts `command` detached (see [`LAUNCHER`]) in `dir`, as a user's
/// command ([`user_shell`]: a clean environment with `HOME` set to `dir`, as
/// the exec user) with `env` added, its output appended to `log_path`, and
/// returns its pid, which leads its own process group. It outlives opsd.
pub async fn launch_detached(
    command: &str,
    dir: &Path,
    log_path: &Path,
    env: &[(String, String)],
) -> Result<i32, String> {
    let mut cmd = user_shell(LAUNCHER, dir);
    cmd.arg("opsd-machine")
        .arg(command)
        .arg(log_path)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .map_err(|_| "the launcher shell did not finish within 10 s".to_string())?
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the launcher shell {}: {}",
            describe_status(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    stdout
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("the launcher shell printed {:?}, not a process id", stdout.trim()))
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    /// Its state letter (`R`, `S`, `Z` for a zombie...).
    pub state: char,
    /// Its process group.
    pub pgrp: i32,
    /// When it started, in clock ticks since boot: with the pid it tells a
    /// process from a later one that reused the pid.
    pub start_time: u64,
}

/// Reads `/proc/PID/stat`; `None` if the process is gone or there is no
/// `/proc`.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// True if `pid` is a live (not zombie) process and, if `start_time` is
/// known, the same process that was started then.
pub fn is_alive(pid: i32, start_time: Option<u64>) -> bool {
    if pid <= 1 || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match proc_stat(pid) {
        Some(stat) => !matches!(stat.state, 'Z' | 'X') && start_time.is_none_or(|t| t == stat.start_time),
        // No /proc here: existence is all we can tell.
        None => !Path::new("/proc/self/stat").exists(),
    }
}

/// True if `pid` is alive (as [`is_alive`]) and still leads its process
/// group: only then may its group be signalled as that process's.
pub fn leads_live_group(pid: i32, start_time: Option<u64>) -> bool {
    if !is_alive(pid, start_time) {
        return false;
    }
    match proc_stat(pid) {
        Some(stat) => stat.pgrp == pid,
        None => getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() == pid),
    }
}

/// True when no live (non-zombie) process is in the group. Zombies are
/// reparented processes waiting for init, which may reap them late.
#[cfg(test)]
pub(crate) fn group_gone(pgid: i32) -> bool {
    use nix::errno::Errno;
    if kill(Pid::from_raw(-pgid), None) == Err(Errno::ESRCH) {
        return true;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    !entries.flatten().any(|e| {
        let pid = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
        pid.and_then(proc_stat)
            .is_some_and(|s| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X'))
    })
}

/// Waits up to `within` for [`group_gone`]: SIGKILL is delivered
/// asynchronously, so a process of the group may still run for a moment
/// after its leader was reaped.
#[cfg(test)]
pub(crate) async fn group_gone_within(pgid: i32, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while !group_gone(pgid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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

    #[tokio::test]
    async fn a_detached_process_leads_its_group_until_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let env = [("GREETING".to_string(), "hi".to_string())];
        let pid = launch_detached("trap '' TERM; echo $GREETING; exec sleep 30", dir.path(), &log, &env)
            .await
            .unwrap();
        // Once it wrote its line, it ignores SIGTERM.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&log).unwrap_or_default() != "hi\n" {
            assert!(Instant::now() < deadline, "the process never wrote its line");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start_time = proc_stat(pid).map(|s| s.start_time);
        assert!(leads_live_group(pid, start_time));
        assert!(!leads_live_group(pid, start_time.map(|t| t + 1)), "a reused pid passed");

        // It ignores SIGTERM: the grace runs out and SIGKILL sweeps it.
        let grace = Duration::from_millis(300);
        let start = Instant::now();
        let in_time = terminate_groups(&[Pid::from_raw(pid)], grace, async {
            while leads_live_group(pid, start_time) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(!in_time);
        assert!(start.elapsed() >= grace);
        assert!(
            group_gone_within(pid, Duration::from_secs(2)).await,
            "group {pid} survived SIGKILL"
        );
        assert!(!is_alive(pid, start_time));
    }

    #[test]
    fn statuses_are_described() {
        assert_eq!(describe_status(ExitStatus::from_raw(3 << 8)), "exited with status 3");
        assert_eq!(describe_status(ExitStatus::from_raw(9)), "killed by signal SIGKILL");
    }
}
