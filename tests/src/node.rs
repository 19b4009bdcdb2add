//! One real `opsd` process: how it is started, signalled, restarted and read.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use opsd_proto::v1::StatusResponse;
use tonic::Status;

use crate::client::{self, Clients};
use crate::cluster::Options;

/// Everything needed to start (and restart) one opsd: the flags it gets and
/// where its files go. Build one with [`NodeConfig::new`], adjust the public
/// fields if a test needs to (another data dir, other `--join` addresses),
/// then [`Node::spawn`] it.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// A short name for logs and messages, e.g. `n2`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--listen`: the client gRPC address.
    pub listen: SocketAddr,
    /// `--peer-listen`: the Raft peer address.
    pub peer_listen: SocketAddr,
    /// `--join` addresses (client addresses of members); empty to bootstrap or resume.
    pub join: Vec<String>,
    /// Tuning flags and extra arguments.
    pub options: Options,
    /// Where the process's stdout and stderr go (appended to across restarts).
    pub log_path: PathBuf,
    /// A command opsd is started under, such as `ip netns exec NS` to run the
    /// node in its own network namespace; empty (the default) starts opsd
    /// directly. The wrapper must exec opsd in place (not fork it), so that
    /// signals sent to the process reach opsd itself.
    pub command_prefix: Vec<String>,
    /// Environment variables opsd gets on top of the test's own (whose
    /// `OPSD_*` variables are removed), such as `LD_PRELOAD`.
    pub env: Vec<(String, String)>,
    /// `--lb-host`: the host the node's load balancer serves services on;
    /// `None` keeps the daemon's default (the `--listen` host).
    pub lb_host: Option<std::net::IpAddr>,
}

impl NodeConfig {
    /// A node named `name` with fresh, free addresses, whose data dir
    /// (`<dir>/<name>/data`, not created: opsd creates it) and log
    /// (`<dir>/<name>/opsd.log`) live under `dir`.
    pub fn new(name: &str, dir: &Path, options: Options) -> NodeConfig {
        let (listen, peer_listen) = crate::addresses::node_addresses();
        let home = dir.join(name);
        NodeConfig {
            name: name.to_string(),
            data_dir: home.join("data"),
            listen,
            peer_listen,
            join: Vec::new(),
            options,
            log_path: home.join("opsd.log"),
            command_prefix: Vec::new(),
            env: Vec::new(),
            lb_host: None,
        }
    }

    /// The command-line arguments opsd gets (without the program name).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
            "--listen".to_string(),
            self.listen.to_string(),
            "--peer-listen".to_string(),
            self.peer_listen.to_string(),
        ];
        for j in &self.join {
            args.push("--join".to_string());
            args.push(j.clone());
        }
        if let Some(host) = self.lb_host {
            args.push("--lb-host".to_string());
            args.push(host.to_string());
        }
        args.extend(self.options.args());
        args
    }
}

/// How a process ended, and what it wrote: for "refuses to start" checks.
#[derive(Debug)]
pub struct Exit {
    /// The exit status (code, or the signal that ended it).
    pub status: ExitStatus,
    /// How long it ran, from spawn (or the last restart) to exit.
    pub ran_for: Duration,
    /// Everything the process wrote to stdout and stderr in this run.
    pub output: String,
}

impl Exit {
    /// Asserts that the process failed (`what` says what it should not have
    /// done otherwise, e.g. "opsd started on a garbled WAL") and that its
    /// output holds each needle, with what finding it means.
    pub fn assert_refused_saying(&self, what: &str, says: &[(&str, &str)]) {
        assert!(!self.status.success(), "{what}:\n{}", self.output);
        eprintln!("refused: {}", self.output.trim_end().lines().last().unwrap_or(""));
        for (needle, meaning) in says {
            assert!(
                self.output.contains(needle),
                "{what} was refused, but the message does not {meaning}:\n{}",
                self.output
            );
        }
    }
}

/// A spawned `opsd` process on loopback, with its own data dir and log file.
///
/// Every method takes `&self`, so a test can hold a node (or a whole
/// [`crate::Cluster`]) and still kill, pause and restart its processes.
/// Dropping a node kills its process with SIGKILL and reaps it; if the thread
/// is panicking (a failed assertion) it first prints the tail of the node's log.
/// The process also gets SIGKILL if the thread that spawned it dies
/// (`PR_SET_PDEATHSIG`), so not even an aborted test run leaves orphans; spawn
/// nodes from the test's own thread or a runtime worker, not from `spawn_blocking`.
pub struct Node {
    config: NodeConfig,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
    id: AtomicU64,
    /// Byte offset in the log where the current run's output starts.
    run_log_start: AtomicU64,
    started_at: Mutex<Instant>,
}

impl Node {
    /// Starts opsd with `config`. Does not wait for it: see [`Node::wait_ready`].
    /// Panics if the binary is missing or cannot be started.
    pub fn spawn(config: NodeConfig) -> Node {
        // A node that joins shares its seed's cluster (and so its token and
        // CA); one that does not is the cluster's bootstrap node.
        let seed_dir = config.join.iter().find_map(|seed| crate::access::bootstrap_dir(seed));
        crate::access::register(
            &config.listen.to_string(),
            seed_dir.as_deref().unwrap_or(&config.data_dir),
        );
        let node = Node {
            config,
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
            id: AtomicU64::new(0),
            run_log_start: AtomicU64::new(0),
            started_at: Mutex::new(Instant::now()),
        };
        node.start_process("start", &[]);
        node
    }

    /// Starts the process with the node's flags followed by `extra` (a
    /// subcommand and its flags, or nothing).
    fn start_process(&self, why: &str, extra: &[String]) {
        let parent = self.config.log_path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.config.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.config.log_path.display()));
        let mut args = self.config.args();
        args.extend(extra.iter().cloned());
        let prefix: String = self.config.command_prefix.iter().map(|p| format!("{p} ")).collect();
        let _ = writeln!(
            log,
            "==== harness: {why} {}: {prefix}opsd {}",
            self.config.name,
            args.join(" ")
        );
        let start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", self.config.log_path.display()));

        let bin = crate::opsd_bin();
        let mut cmd = match self.config.command_prefix.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .env("NO_COLOR", "1");
        // The test's own environment must not configure the node behind its back.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OPSD_") {
                cmd.env_remove(k);
            }
        }
        // A node that joins without its certificate yet needs a join token:
        // one is made through its seeds' cluster, unless the test gives its own
        // (in `env` or `extra`, an empty one to start without).
        let joins_through: Vec<String> = match extra.iter().position(|a| a == "--rejoin") {
            Some(i) => extra
                .get(i + 1)
                .map(|a| a.split(',').map(String::from).collect())
                .unwrap_or_default(),
            None => self.config.join.clone(),
        };
        let given =
            self.config.env.iter().any(|(k, _)| k == "OPSD_JOIN_TOKEN") || args.iter().any(|a| a == "--join-token");
        if !joins_through.is_empty() && !given && !self.config.data_dir.join("node.pem").exists() {
            if let Some(token) = crate::access::join_token(&joins_through) {
                cmd.env("OPSD_JOIN_TOKEN", token);
            }
        }
        cmd.envs(self.config.env.iter().map(|(k, v)| (k, v)));
        if why == "recover" {
            // `opsd recover` removes the node's old id: it needs the cluster's token.
            cmd.envs(crate::access::opsctl_env(&self.client_addr()));
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} for {}: {e}", bin.display(), self.config.name));
        self.run_log_start.store(start, Ordering::SeqCst);
        *self.started_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.paused.store(false, Ordering::SeqCst);
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
    }

    /// The node's name, e.g. `n2`.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The node's id, learned from its status by [`Node::wait_ready`]; 0 before that.
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::SeqCst)
    }

    /// The client (gRPC API) address, HOST:PORT.
    pub fn client_addr(&self) -> String {
        self.config.listen.to_string()
    }

    /// The Raft peer address, HOST:PORT.
    pub fn peer_addr(&self) -> String {
        self.config.peer_listen.to_string()
    }

    /// The node's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The live rocksdb write-ahead log under the data dir (`db/*.log`, the
    /// largest if several), which holds every write since the last flush; to
    /// damage it the way a failing disk would. Panics if there is none.
    pub fn live_wal(&self) -> PathBuf {
        let db = self.config.data_dir.join("db");
        let entries = std::fs::read_dir(&db).unwrap_or_else(|e| panic!("{}: reading {db:?}: {e}", self.config.name));
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .map(|e| e.path())
            .unwrap_or_else(|| panic!("{}: no *.log file in {db:?}", self.config.name))
    }

    /// The file holding the node's stdout and stderr, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.config.log_path
    }

    /// The flags and paths the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The process id, if a process is running (possibly paused).
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.id())
    }

    /// The resident set size of the process in MiB, from `/proc/PID/status`;
    /// 0 if no process runs or it is unreadable (memory is printed, not asserted).
    pub fn rss_mb(&self) -> f64 {
        let Some(pid) = self.pid() else { return 0.0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    }

    /// True while the process exists and has not exited (paused counts as running).
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How the process ended, if it exited by itself (or by a signal not
    /// sent through [`Node::kill9`]) and was not restarted since; `None`
    /// while it runs and after [`Node::kill9`].
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last line of the current (or last) run's output that reports an
    /// error, for messages about why a node stopped.
    pub fn last_error_line(&self) -> Option<String> {
        self.run_log()
            .lines()
            .rev()
            .find(|l| l.starts_with("opsd: ") || l.contains("ERROR") || l.contains("Error:"))
            .map(|l| l.chars().take(300).collect())
    }

    /// True while the process is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// True if the node can answer now: running and not paused.
    pub fn is_serving(&self) -> bool {
        self.is_running() && !self.is_paused()
    }

    fn signal(&self, sig: Signal) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{}: no process to send {sig} to", self.config.name));
        kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("{}: sending {sig}: {e}", self.config.name));
    }

    /// kill -9: the process dies at once, without any chance to clean up, and is reaped.
    pub fn kill9(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// SIGSTOP: the process freezes (no heartbeats, no answers) until [`Node::sigcont`].
    pub fn sigstop(&self) {
        self.signal(Signal::SIGSTOP);
        self.paused.store(true, Ordering::SeqCst);
    }

    /// SIGCONT: a paused process resumes where it stopped.
    pub fn sigcont(&self) {
        self.signal(Signal::SIGCONT);
        self.paused.store(false, Ordering::SeqCst);
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit; returns how
    /// it ended. Panics (after SIGKILL) if it does not exit in time.
    pub async fn terminate(&self, timeout: Duration) -> Exit {
        if self.is_paused() {
            self.sigcont();
        }
        self.signal(Signal::SIGTERM);
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the process to exit on its own; returns how
    /// it ended. Panics (after SIGKILL) if it is still running then.
    pub async fn wait_exit(&self, timeout: Duration) -> Exit {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
                let child = guard
                    .as_mut()
                    .unwrap_or_else(|| panic!("{}: no process to wait for", self.config.name));
                match child.try_wait() {
                    Ok(Some(status)) => {
                        guard.take();
                        let ran_for = self.started_at.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                        return Exit {
                            status,
                            ran_for,
                            output: self.run_log(),
                        };
                    }
                    Ok(None) => {}
                    Err(e) => panic!("{}: waiting for the process: {e}", self.config.name),
                }
            }
            if Instant::now() >= deadline {
                self.kill9();
                panic!(
                    "{}: still running {timeout:?} after it should have exited; killed it. Its output:\n{}",
                    self.config.name,
                    self.run_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts the process again with the same flags and data dir (a restart
    /// needs nothing else). Panics if it is still running. Does not wait: see
    /// [`Node::wait_ready`].
    pub fn restart(&self) {
        assert!(
            !self.is_running(),
            "{}: restart while the process is still running",
            self.config.name
        );
        self.start_process("restart", &[]);
    }

    /// Starts the process as `opsd FLAGS recover --rejoin ADDRS` (ADDRS
    /// comma-separated client addresses of members): the way back for a node
    /// whose state is damaged or lost. It comes back under a new id, which
    /// [`Node::wait_ready`] records. Panics if it is still running.
    pub fn recover(&self, rejoin: &[String]) {
        assert!(
            !self.is_running(),
            "{}: recover while the process is still running",
            self.config.name
        );
        self.start_process("recover", &["recover".into(), "--rejoin".into(), rejoin.join(",")]);
    }

    /// Runs `opsd --data-dir DIR check` on this node's data dir (the node
    /// should be stopped) and returns whether it found the dir clean, and
    /// what it printed.
    pub fn check(&self) -> (bool, String) {
        let mut cmd = Command::new(crate::opsd_bin());
        cmd.arg("--data-dir")
            .arg(&self.config.data_dir)
            .arg("check")
            .env("NO_COLOR", "1");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OPSD_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{}: running opsd check: {e}", self.config.name));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Forgets the node's id, for a node that is to come back under a new
    /// one: [`Node::id`] is 0 until [`Node::wait_ready`] learns it again.
    pub fn forget_id(&self) {
        self.id.store(0, Ordering::SeqCst);
    }

    /// Clients of this node's API (lazily connected; see [`crate::client`]).
    pub fn client(&self) -> Clients {
        client::connect(&self.client_addr())
    }

    /// This node's own view (`Cluster.Status`), or the error, within 3 s.
    pub async fn status(&self) -> Result<StatusResponse, Status> {
        client::status(&self.client_addr(), Duration::from_secs(3)).await
    }

    /// Waits until the node answers `Cluster.Status` (its API is up: it has
    /// bootstrapped, joined or resumed), records its id and returns the status.
    /// Panics with the node's log if it exits first or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> StatusResponse {
        let started = Instant::now();
        let mut last = String::from("no answer yet");
        loop {
            if !self.is_running() {
                panic!(
                    "{}: opsd exited before it was ready ({}). Its output:\n{}",
                    self.config.name,
                    last,
                    self.run_log()
                );
            }
            match client::status(&self.client_addr(), Duration::from_secs(2)).await {
                Ok(s) if s.node_id != 0 => {
                    self.id.store(s.node_id, Ordering::SeqCst);
                    return s;
                }
                Ok(s) => last = format!("status without a node id: {s:?}"),
                Err(e) => last = client::describe(&e),
            }
            if started.elapsed() > timeout {
                panic!(
                    "{}: not ready after {timeout:?} (last: {last}). Log tail:\n{}",
                    self.config.name,
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the node's applied index reaches `index`; returns how long
    /// that took. Panics with the last status seen if `timeout` passes.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let last = match self.status().await {
                Ok(s) if s.applied_index >= index => return started.elapsed(),
                Ok(s) => format!("applied_index {} (role {}, term {})", s.applied_index, s.role, s.term),
                Err(e) => client::describe(&e),
            };
            if started.elapsed() > timeout {
                panic!(
                    "{}: applied index did not reach {index} in {timeout:?}; last: {last}",
                    self.config.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole log file (every run of this node).
    pub fn log(&self) -> String {
        std::fs::read(&self.config.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// What the current (or last) run of the process wrote.
    pub fn run_log(&self) -> String {
        let start = self.run_log_start.load(Ordering::SeqCst) as usize;
        let log = std::fs::read(&self.config.log_path).unwrap_or_default();
        String::from_utf8_lossy(log.get(start..).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the tail of the log to stderr, with a header naming the node.
    pub fn print_log_tail(&self, lines: usize) {
        eprintln!(
            "======== {} (node id {}, client {}, peer {}) log {} (last {lines} lines) ========\n{}",
            self.config.name,
            self.id(),
            self.client_addr(),
            self.peer_addr(),
            self.config.log_path.display(),
            self.log_tail(lines)
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            self.print_log_tail(80);
        }
    }
}
