//! The `local` provider: the built-in `image` and `cluster` kinds made real
//! with directories and processes on the node that runs the step, so opsd is
//! useful (and testable end to end) on one laptop with nothing else installed.
//!
//! An image is a copy of a source directory, built in place by shell
//! commands, under `<root>/images/<name>/<run_id>`; it lives on the node that
//! copied it (`outputs.node`) and only that node can build or remove it. A
//! cluster is `size` machines: each a copy of the image under
//! `<root>/clusters/<name>/machine-<i>` running the image's `start` command
//! as a detached process group (it outlives opsd; a restart of opsd does not
//! restart the machines). The machines a node started are also recorded in
//! `<root>/clusters/<name>/machines.json`, so a step that was cancelled or
//! interrupted before reporting its outputs leaves nothing untracked.
//!
//! Every step is idempotent: directories are keyed by resource name and run
//! id and recreated from scratch, and a machine whose process is still
//! running (same pid and start time) is kept rather than started twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, Pid};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::exec::{describe_status, run_logged, Ended};
use super::{LogSink, Object, Provider, ResourceLookup, StepRequest, StepResult};

/// Time a build command gets between SIGTERM and SIGKILL when its step is
/// cancelled.
pub const BUILD_GRACE: Duration = Duration::from_secs(5);

/// Time a machine gets between SIGTERM and SIGKILL when it is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long after its start a machine must still be running: a start
/// command that fails at once (a typo, a port in use) fails the step with
/// the end of its log instead of leaving a dead cluster marked running.
pub const START_CHECK: Duration = Duration::from_millis(200);

/// The most machines a cluster may have.
pub const MAX_MACHINES: u64 = 64;

/// Lines of a machine's log shown when it died at once.
const LOG_TAIL_LINES: usize = 20;

/// Starts `$1` under `/bin/sh` in a new session (so its pid leads its own
/// process group) with output appended to the file `$2`, and prints its pid.
/// The launcher shell exits at once, so the machine is not opsd's child: it
/// is reparented and reaped by init, and outlives opsd.
const LAUNCHER: &str = r#"setsid /bin/sh -c "$1" >>"$2" 2>&1 </dev/null & echo $!"#;

/// The provider of the built-in `image` and `cluster` kinds: local
/// directories and processes on the node that runs the step.
pub struct LocalProvider {
    /// Where images and clusters live: a directory under opsd's data dir.
    root: PathBuf,
    /// The registry, to find a cluster's image.
    lookup: Arc<dyn ResourceLookup>,
}

impl LocalProvider {
    /// A provider keeping its images and clusters under `root` (created as
    /// needed), finding a cluster's image through `lookup`.
    pub fn new(root: PathBuf, lookup: Arc<dyn ResourceLookup>) -> Self {
        LocalProvider { root, lookup }
    }
}

/// Why a step failed, with the outputs it reports anyway (the machines it
/// started before failing, so a destroy can find them).
struct Fail {
    error: String,
    outputs: Object,
}

impl From<String> for Fail {
    fn from(error: String) -> Self {
        Fail {
            error,
            outputs: Object::new(),
        }
    }
}

impl From<&str> for Fail {
    fn from(error: &str) -> Self {
        Fail::from(error.to_string())
    }
}

/// What a step function returns: outputs, or why it failed.
type StepOut = Result<Object, Fail>;

#[async_trait::async_trait]
impl Provider for LocalProvider {
    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult {
        if cancel.is_cancelled() {
            return StepResult::failed("cancelled");
        }
        let out = match (req.kind.as_str(), req.state.as_str()) {
            ("image", "pending") => self.image_pending(&req, &log, &cancel).await,
            ("image", "building") => self.image_building(&req, &log, &cancel).await,
            ("image", "destroying") => self.image_destroying(&req, &log, &cancel).await,
            ("cluster", "pending") => self.cluster_start(&req, &log, &cancel, true).await,
            ("cluster", "starting") => self.cluster_start(&req, &log, &cancel, false).await,
            ("cluster", "stopping") => self.cluster_stop(&req, &log, &cancel, false).await,
            ("cluster", "destroying") => self.cluster_stop(&req, &log, &cancel, true).await,
            (kind, state) => Err(format!("the local provider has no step for state {state} of kind {kind}").into()),
        };
        match out {
            Ok(outputs) => StepResult::Succeeded { outputs },
            Err(Fail { error, outputs }) => StepResult::Failed { error, outputs },
        }
    }
}

// ---------------------------------------------------------------- images

impl LocalProvider {
    /// The directory holding every build of image `name`.
    fn image_root(&self, name: &str) -> PathBuf {
        self.root.join("images").join(name)
    }

    /// `pending`: a fresh copy of the source, keyed by run id.
    async fn image_pending(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        check_component("resource name", &req.name)?;
        check_component("run id", &req.run_id)?;
        let source = match req.spec.get("source") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) => return Err("spec.source: required: the directory to build from".into()),
            Some(_) => return Err("spec.source: must be a string (a directory path)".into()),
        };
        let src = fs::canonicalize(&source).map_err(|e| format!("spec.source: {source}: {e}"))?;
        if !src.is_dir() {
            return Err(format!("spec.source: {source} is not a directory").into());
        }
        let images = self.image_root(&req.name);
        fs::create_dir_all(&images).map_err(|e| format!("cannot create {}: {e}", images.display()))?;
        let images_real = fs::canonicalize(&images).map_err(|e| format!("cannot resolve {}: {e}", images.display()))?;
        if images_real.starts_with(&src) {
            return Err(format!(
                "spec.source: {source} contains the image directory {}; it cannot be copied into itself",
                images.display()
            )
            .into());
        }
        let dir = images.join(&req.run_id);
        let stats = {
            let (src, dir, cancel) = (src.clone(), dir.clone(), cancel.clone());
            blocking(move || {
                remove_tree(&dir)?;
                copy_tree(&src, &dir, &cancel)
            })
            .await?
        };
        log.line(format!(
            "copied {} files, {} directories and {} symlinks from {} to {}",
            stats.files,
            stats.dirs,
            stats.links,
            src.display(),
            dir.display()
        ));
        if stats.skipped > 0 {
            log.line(format!(
                "skipped {} special files (sockets, pipes, devices)",
                stats.skipped
            ));
        }
        // Earlier builds of this image are replaced by this one.
        let older: Vec<PathBuf> = fs::read_dir(&images)
            .map_err(|e| format!("cannot list {}: {e}", images.display()))?
            .flatten()
            .filter(|e| e.file_name() != req.run_id.as_str())
            .map(|e| e.path())
            .collect();
        for old in older {
            blocking({
                let old = old.clone();
                move || remove_tree(&old)
            })
            .await?;
            log.line(format!("removed the earlier build {}", old.display()));
        }
        let mut out = Object::new();
        out.insert("dir".into(), json!(dir.display().to_string()));
        out.insert("node".into(), json!(req.node_id));
        out.insert("source".into(), json!(src.display().to_string()));
        Ok(out)
    }

    /// `building`: the build commands, in order, in the image's copy.
    async fn image_building(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let dir = owned_image_dir(req, "build")?.ok_or_else(|| {
            format!(
                "image {} has no outputs.dir: its source was not copied (the pending step did not succeed)",
                req.name
            )
        })?;
        let commands = build_commands(&req.spec)?;
        let start = match req.spec.get("start") {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(_) => return Err("spec.start: must be a string (the command a machine runs)".into()),
        };
        if !dir.is_dir() {
            return Err(format!(
                "image {}: its directory {} is missing; rebuild the image",
                req.name,
                dir.display()
            )
            .into());
        }
        for (i, command) in commands.iter().enumerate() {
            let n = i + 1;
            log.line(format!("$ {command}"));
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(command)
                .current_dir(&dir)
                .env("OPSD_IMAGE", &req.name);
            let what = format!("build command {n} (`{command}`)");
            match run_logged(cmd, &what, None, log, cancel, BUILD_GRACE).await? {
                Ended::Cancelled => return Err("cancelled".into()),
                Ended::Exited(status) if status.success() => {}
                Ended::Exited(status) => return Err(format!("{what} {}", describe_status(status)).into()),
            }
        }
        log.line(format!("ran {} build commands in {}", commands.len(), dir.display()));
        let mut out = Object::new();
        out.insert("start".into(), start);
        Ok(out)
    }

    /// `destroying`: removes the image's files.
    async fn image_destroying(&self, req: &StepRequest, log: &LogSink, _cancel: &CancellationToken) -> StepOut {
        check_component("resource name", &req.name)?;
        let images = self.image_root(&req.name);
        if let Some(dir) = owned_image_dir(req, "remove")? {
            if dir.starts_with(&images) {
                blocking({
                    let dir = dir.clone();
                    move || remove_tree(&dir)
                })
                .await?;
                log.line(format!("removed {}", dir.display()));
            } else {
                log.line(format!(
                    "not removing {}: it is not under {}",
                    dir.display(),
                    images.display()
                ));
            }
        }
        blocking({
            let images = images.clone();
            move || remove_tree(&images)
        })
        .await?;
        let mut out = Object::new();
        out.insert("dir".into(), Value::Null);
        Ok(out)
    }
}

/// The image's directory from its outputs, if it has one, after checking it
/// lives on this node (`verb` says what this node wanted to do with it).
fn owned_image_dir(req: &StepRequest, verb: &str) -> Result<Option<PathBuf>, String> {
    let dir = match req.outputs.get("dir") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => PathBuf::from(s),
        Some(_) => return Err("outputs.dir: must be a string".into()),
    };
    let node = req.outputs.get("node").and_then(Value::as_u64).ok_or_else(|| {
        format!(
            "image {}: outputs.node is missing, so the node holding {} is unknown",
            req.name,
            dir.display()
        )
    })?;
    if node != req.node_id {
        return Err(format!(
            "image {} lives on node {node}; only that node can {verb} it (this is node {})",
            req.name, req.node_id
        ));
    }
    Ok(Some(dir))
}

/// `spec.build`: absent, one command, or an array of commands.
fn build_commands(spec: &Object) -> Result<Vec<String>, String> {
    match spec.get("build") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("spec.build[{i}]: must be a string (a shell command)"))
            })
            .collect(),
        Some(_) => Err("spec.build: must be a string or an array of strings (shell commands)".into()),
    }
}

// ---------------------------------------------------------------- clusters

/// One machine of a cluster, as recorded in the cluster's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Machine {
    /// Its number, 0 to size-1.
    index: u64,
    /// The node whose processes it is.
    node: u64,
    /// Its process (the leader of its process group), `None` when stopped.
    pid: Option<i32>,
    /// The port it was told to listen on (`PORT`).
    port: u16,
    /// Its working directory, a copy of the image.
    dir: String,
    /// The file its output is appended to.
    log: String,
    /// The process's start time (clock ticks since boot): with the pid it
    /// tells our machine from a later process that reused the pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_time: Option<u64>,
}

/// A cluster's spec, checked.
struct ClusterSpec {
    image: String,
    size: u64,
    base_port: Option<u16>,
    env: Vec<(String, String)>,
}

/// The parts of a built image a cluster needs.
struct ImageInfo {
    dir: PathBuf,
    start: String,
}

/// Environment variables opsd sets for every machine; `spec.env` may not.
const MACHINE_VARS: [&str; 3] = ["PORT", "OPSD_CLUSTER", "OPSD_MACHINE"];

/// Checks a cluster's spec, naming the field at fault.
fn cluster_spec(spec: &Object) -> Result<ClusterSpec, String> {
    let image = match spec.get("image") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => return Err("spec.image: required: the name of a built image".into()),
        Some(v) => return Err(format!("spec.image: must be the name of an image, not {v}")),
    };
    let size = match spec.get("size") {
        None | Some(Value::Null) => return Err("spec.size: required: the number of machines, 1 to 64".into()),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_MACHINES).contains(n))
            .ok_or_else(|| format!("spec.size: must be an integer from 1 to {MAX_MACHINES}, not {v}"))?,
    };
    let base_port = match spec.get("base_port") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let port = v
                .as_u64()
                .filter(|p| (1..=65535).contains(p) && p + size - 1 <= 65535)
                .ok_or_else(|| {
                    format!("spec.base_port: must be an integer such that base_port to base_port+size-1 are ports (1 to 65535), not {v}")
                })?;
            Some(port as u16)
        }
    };
    let mut env = Vec::new();
    match spec.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (k, v) in vars {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(format!("spec.env: {k:?} is not a valid environment variable name"));
                }
                if MACHINE_VARS.contains(&k.as_str()) {
                    return Err(format!(
                        "spec.env.{k}: set by opsd for each machine; it cannot be given"
                    ));
                }
                match v {
                    Value::String(s) if !s.contains('\0') => env.push((k.clone(), s.clone())),
                    _ => return Err(format!("spec.env.{k}: must be a string")),
                }
            }
        }
        Some(_) => return Err("spec.env: must be a table of strings".into()),
    }
    Ok(ClusterSpec {
        image,
        size,
        base_port,
        env,
    })
}

impl LocalProvider {
    /// The directory holding a cluster's machines, logs and record.
    fn cluster_root(&self, name: &str) -> PathBuf {
        self.root.join("clusters").join(name)
    }

    /// The built image a cluster runs, checked to live on this node.
    fn cluster_image(&self, req: &StepRequest, spec: &ClusterSpec) -> Result<ImageInfo, String> {
        let name = &spec.image;
        let (state, outputs) = self
            .lookup
            .lookup("image", name)
            .ok_or_else(|| format!("image {name} does not exist"))?;
        if state != "built" {
            return Err(format!("image {name} is {state}, not built"));
        }
        let field = |key: &str| -> Result<&Value, String> {
            match outputs.get(key) {
                None | Some(Value::Null) => Err(format!("image {name} has no outputs.{key}")),
                Some(v) => Ok(v),
            }
        };
        let dir = field("dir")?
            .as_str()
            .ok_or_else(|| format!("image {name}: outputs.dir must be a string"))?;
        let start = field("start")
            .map_err(|e| format!("{e} (its spec has no start command)"))?
            .as_str()
            .ok_or_else(|| format!("image {name}: outputs.start must be a string"))?;
        let node = field("node")?
            .as_u64()
            .ok_or_else(|| format!("image {name}: outputs.node must be a node id"))?;
        if node != req.node_id {
            return Err(format!(
                "image {name} lives on node {node}; only that node can run machines of cluster {} (this is node {})",
                req.name, req.node_id
            ));
        }
        Ok(ImageInfo {
            dir: PathBuf::from(dir),
            start: start.to_string(),
        })
    }

    /// The machines recorded in the resource's outputs, and those in this
    /// node's record file. Malformed entries are skipped with a log line.
    fn known_machines(&self, req: &StepRequest, log: &LogSink) -> (Vec<Machine>, Vec<Machine>) {
        let mut from_outputs = Vec::new();
        match req.outputs.get("machines") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (k, item) in items.iter().enumerate() {
                    match serde_json::from_value::<Machine>(item.clone()) {
                        Ok(m) => from_outputs.push(m),
                        Err(e) => log.line(format!("ignoring outputs.machines[{k}]: {e}")),
                    }
                }
            }
            Some(_) => log.line("ignoring outputs.machines: not an array"),
        }
        let path = self.cluster_root(&req.name).join("machines.json");
        let from_disk = match fs::read(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                log.line(format!("ignoring {}: {e}", path.display()));
                Vec::new()
            }
            Ok(bytes) => serde_json::from_slice::<Vec<Machine>>(&bytes).unwrap_or_else(|e| {
                log.line(format!("ignoring {}: {e}", path.display()));
                Vec::new()
            }),
        };
        (from_outputs, from_disk)
    }

    /// Records the machines this node knows of, so a step that never
    /// reported its outputs still leaves them findable.
    fn record_machines(&self, name: &str, machines: &[&Machine]) -> Result<(), String> {
        let dir = self.cluster_root(name);
        let path = dir.join("machines.json");
        let tmp = dir.join("machines.json.tmp");
        let bytes =
            serde_json::to_vec_pretty(machines).map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
        fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        fs::rename(&tmp, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// `pending` (`fresh`: new copies of the image) and `starting` (reuse the
    /// machines' directories and ports): starts every machine not running.
    async fn cluster_start(
        &self,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
        fresh: bool,
    ) -> StepOut {
        check_component("resource name", &req.name)?;
        let spec = cluster_spec(&req.spec)?;
        let image = self.cluster_image(req, &spec)?;
        let croot = self.cluster_root(&req.name);
        fs::create_dir_all(&croot).map_err(|e| format!("cannot create {}: {e}", croot.display()))?;

        // The best record per machine: a running one if any, else the one
        // the outputs report (for its port).
        let (from_outputs, from_disk) = self.known_machines(req, log);
        let mut machines: BTreeMap<u64, Machine> = BTreeMap::new();
        for m in from_outputs.into_iter().chain(from_disk) {
            if m.node != req.node_id {
                if m.pid.is_some() {
                    log.line(format!(
                        "machine {} was running on node {}; starting it on this node (node {})",
                        m.index, m.node, req.node_id
                    ));
                }
                continue;
            }
            let running = is_running(&m);
            match machines.get(&m.index) {
                Some(have) if is_running(have) || !running => {}
                _ => {
                    machines.insert(m.index, m);
                }
            }
        }
        // Machines beyond the size are stopped.
        let extra: Vec<Machine> = machines.split_off(&spec.size).into_values().collect();
        if extra.iter().any(is_running) {
            log.line(format!("stopping machines beyond the size {}", spec.size));
            if stop_machines(&extra, log, cancel).await {
                return Err("cancelled".into());
            }
        }

        let mut used_ports: BTreeSet<u16> = machines.values().map(|m| m.port).collect();
        let mut started = Vec::new();
        for i in 0..spec.size {
            let outputs = cluster_outputs(&machines, &spec.image);
            if cancel.is_cancelled() {
                return Err(Fail {
                    error: "cancelled".into(),
                    outputs,
                });
            }
            if let Some(m) = machines.get(&i).filter(|m| is_running(m)) {
                log.line(format!(
                    "machine {i} is already running: pid {}, port {}",
                    m.pid.unwrap_or_default(),
                    m.port
                ));
                continue;
            }
            let with_outputs = |error: String| Fail {
                error,
                outputs: outputs.clone(),
            };
            let previous_port = machines.get(&i).map(|m| m.port);
            let port = match (spec.base_port, previous_port) {
                (Some(base), _) => base + i as u16,
                (None, Some(p)) if !fresh => p,
                _ => free_port(&used_ports).map_err(with_outputs)?,
            };
            used_ports.insert(port);
            let dir = croot.join(format!("machine-{i}"));
            let log_path = croot.join(format!("machine-{i}.log"));
            if fresh || !dir.is_dir() {
                let (src, dst, c) = (image.dir.clone(), dir.clone(), cancel.clone());
                blocking(move || {
                    remove_tree(&dst)?;
                    copy_tree(&src, &dst, &c).map(|_| ())
                })
                .await
                .map_err(with_outputs)?;
            }
            append_line(
                &log_path,
                &format!(
                    "== opsd: starting machine {i} of cluster {} on port {port} (run {}) ==",
                    req.name, req.run_id
                ),
            )
            .map_err(with_outputs)?;
            let mut env = spec.env.clone();
            env.push(("PORT".into(), port.to_string()));
            env.push(("OPSD_CLUSTER".into(), req.name.clone()));
            env.push(("OPSD_MACHINE".into(), i.to_string()));
            let pid = launch(&image.start, &dir, &log_path, &env)
                .await
                .map_err(|e| with_outputs(format!("machine {i} of cluster {}: {e}", req.name)))?;
            let machine = Machine {
                index: i,
                node: req.node_id,
                pid: Some(pid),
                port,
                dir: dir.display().to_string(),
                log: log_path.display().to_string(),
                start_time: proc_stat(pid).map(|s| s.start_time),
            };
            log.line(format!(
                "machine {i} started: pid {pid}, port {port}, dir {}, log {}",
                machine.dir, machine.log
            ));
            machines.insert(i, machine);
            started.push(i);
            self.record_machines(&req.name, &machines.values().collect::<Vec<_>>())
                .map_err(with_outputs)?;
        }
        self.record_machines(&req.name, &machines.values().collect::<Vec<_>>())?;
        let outputs = cluster_outputs(&machines, &spec.image);

        if !started.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(START_CHECK) => {}
                _ = cancel.cancelled() => return Err(Fail { error: "cancelled".into(), outputs }),
            }
            let mut first_error = None;
            for i in &started {
                let m = &machines[i];
                if m.pid.is_some_and(|p| is_alive(p, m.start_time)) {
                    continue;
                }
                let tail = log_tail(Path::new(&m.log), LOG_TAIL_LINES);
                log.line(format!("machine {i} exited at once; the end of its log {}:", m.log));
                for line in tail.lines() {
                    log.line(format!("  {line}"));
                }
                first_error.get_or_insert_with(|| {
                    format!(
                        "machine {i} of cluster {} exited at once; the end of its log {}:\n{tail}",
                        req.name, m.log
                    )
                });
            }
            if let Some(error) = first_error {
                return Err(Fail { error, outputs });
            }
        }
        Ok(outputs)
    }

    /// `stopping` (keep the files) and `destroying` (remove them): stops
    /// every machine of the cluster on this node.
    async fn cluster_stop(
        &self,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
        destroy: bool,
    ) -> StepOut {
        check_component("resource name", &req.name)?;
        let croot = self.cluster_root(&req.name);
        let (from_outputs, from_disk) = self.known_machines(req, log);
        if let Some(m) = from_outputs.iter().find(|m| m.pid.is_some() && m.node != req.node_id) {
            return Err(format!(
                "machine {} of cluster {} lives on node {}; only that node can stop it (this is node {})",
                m.index, req.name, m.node, req.node_id
            )
            .into());
        }
        let mut seen = BTreeSet::new();
        let all: Vec<Machine> = from_outputs
            .iter()
            .chain(from_disk.iter())
            .filter(|m| m.pid.is_some() && seen.insert((m.pid, m.start_time)))
            .cloned()
            .collect();
        if stop_machines(&all, log, cancel).await {
            return Err("cancelled".into());
        }
        let mut out = Object::new();
        if destroy {
            blocking({
                let croot = croot.clone();
                move || remove_tree(&croot)
            })
            .await?;
            log.line(format!("removed {}", croot.display()));
            out.insert("machines".into(), json!([]));
            return Ok(out);
        }
        let mut stopped: BTreeMap<u64, Machine> = BTreeMap::new();
        for m in from_outputs.into_iter().chain(from_disk) {
            stopped.entry(m.index).or_insert(Machine {
                pid: None,
                start_time: None,
                ..m
            });
        }
        if croot.is_dir() {
            self.record_machines(&req.name, &stopped.values().collect::<Vec<_>>())?;
        }
        let machines: Vec<Value> = stopped
            .values()
            .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
            .collect();
        out.insert("machines".into(), Value::Array(machines));
        Ok(out)
    }
}

/// A cluster's outputs: its machines in order and its image.
fn cluster_outputs(machines: &BTreeMap<u64, Machine>, image: &str) -> Object {
    let list: Vec<Value> = machines
        .values()
        .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
        .collect();
    let mut out = Object::new();
    out.insert("machines".into(), Value::Array(list));
    out.insert("image".into(), json!(image));
    out
}

/// Stops the running ones among `machines`: SIGTERM to each process group,
/// up to [`STOP_GRACE`] for them to go, then SIGKILL to the groups. Returns
/// early, after SIGKILL, if `cancel` fires; then returns true.
async fn stop_machines(machines: &[Machine], log: &LogSink, cancel: &CancellationToken) -> bool {
    let mut running: Vec<&Machine> = machines.iter().filter(|m| is_running(m)).collect();
    let all: Vec<(u64, i32)> = running.iter().filter_map(|m| m.pid.map(|p| (m.index, p))).collect();
    for (index, pid) in &all {
        log.line(format!("machine {index}: SIGTERM to process group {pid}"));
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    let mut cancelled = false;
    loop {
        running.retain(|m| is_running(m));
        if running.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = cancel.cancelled() => {
                cancelled = true;
                break;
            }
        }
    }
    for m in &running {
        log.line(format!(
            "machine {}: still running, SIGKILL to process group {}",
            m.index,
            m.pid.unwrap_or_default()
        ));
    }
    // Sweep what is left of every group, whether or not its leader went.
    for (_, pid) in &all {
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while running.iter().any(|m| is_running(m)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (index, _) in &all {
        log.line(format!("machine {index} stopped"));
    }
    cancelled
}

/// Starts a machine's command detached (see [`LAUNCHER`]) and returns its
/// pid, which leads the machine's process group.
async fn launch(start: &str, dir: &Path, log_path: &Path, env: &[(String, String)]) -> Result<i32, String> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(LAUNCHER)
        .arg("opsd-machine")
        .arg(start)
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

/// A free loopback TCP port not in `used`: bound, then released for the
/// machine to take.
fn free_port(used: &BTreeSet<u16>) -> Result<u16, String> {
    for _ in 0..20 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?
            .port();
        if !used.contains(&port) {
            return Ok(port);
        }
    }
    Err("cannot find a free port on 127.0.0.1 that no other machine uses".into())
}

// ---------------------------------------------------------------- processes

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    state: char,
    pgrp: i32,
    start_time: u64,
}

/// Reads `/proc/PID/stat`; `None` if the process is gone or there is no
/// `/proc`.
fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
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
fn is_alive(pid: i32, start_time: Option<u64>) -> bool {
    if pid <= 1 || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match proc_stat(pid) {
        Some(stat) => !matches!(stat.state, 'Z' | 'X') && start_time.is_none_or(|t| t == stat.start_time),
        // No /proc here: existence is all we can tell.
        None => !Path::new("/proc/self/stat").exists(),
    }
}

/// True if the machine's recorded process is still running and still leads
/// its process group: only then may its group be signalled.
fn is_running(m: &Machine) -> bool {
    let Some(pid) = m.pid else { return false };
    if !is_alive(pid, m.start_time) {
        return false;
    }
    match proc_stat(pid) {
        Some(stat) => stat.pgrp == pid,
        None => getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() == pid),
    }
}

// ---------------------------------------------------------------- files

/// Refuses a resource name or run id that would not be one path component.
fn check_component(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
        return Err(format!("{what} {s:?} cannot name a directory"));
    }
    Ok(())
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a file task failed: {e}"))?
}

/// What [`copy_tree`] copied.
#[derive(Debug, Default)]
struct CopyStats {
    files: u64,
    dirs: u64,
    links: u64,
    skipped: u64,
}

/// Copies the directory `src` to `dst` (which must not exist): regular
/// files, directories and symlinks (as symlinks), with permission bits.
/// Special files are skipped. Stops with "cancelled" if `cancel` fires.
fn copy_tree(src: &Path, dst: &Path, cancel: &CancellationToken) -> Result<CopyStats, String> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut stats = CopyStats::default();
    let mut dirs = Vec::new();
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from_dir, to_dir)) = stack.pop() {
        let perms = fs::metadata(&from_dir)
            .map_err(|e| format!("cannot read {}: {e}", from_dir.display()))?
            .permissions();
        fs::create_dir(&to_dir).map_err(|e| format!("cannot create {}: {e}", to_dir.display()))?;
        dirs.push((to_dir.clone(), perms));
        stats.dirs += 1;
        let entries = fs::read_dir(&from_dir).map_err(|e| format!("cannot list {}: {e}", from_dir.display()))?;
        for entry in entries {
            if cancel.is_cancelled() {
                return Err("cancelled".into());
            }
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", from_dir.display()))?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let ft = entry
                .file_type()
                .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
            if ft.is_dir() {
                stack.push((from, to));
            } else if ft.is_symlink() {
                let target = fs::read_link(&from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
                symlink(&target, &to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
                stats.links += 1;
            } else if ft.is_file() {
                fs::copy(&from, &to).map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
                stats.files += 1;
            } else {
                stats.skipped += 1;
            }
        }
    }
    // Directory modes last, so read-only directories could be filled.
    for (dir, perms) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, perms).map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
    }
    Ok(stats)
}

/// Removes a file or directory tree; a missing one is fine. Read-only
/// directories (copied with their modes) are made writable first.
fn remove_tree(path: &Path) -> Result<(), String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(|e| format!("cannot remove {}: {e}", path.display()));
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(m) = fs::symlink_metadata(&dir) {
            if m.is_dir() {
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(m.permissions().mode() | 0o700));
                if let Ok(entries) = fs::read_dir(&dir) {
                    stack.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
        }
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// Appends one line to a file, creating it.
fn append_line(path: &Path, line: &str) -> Result<(), String> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The last `lines` lines of a file (from its last 8 KiB), for error
/// messages; a note if it cannot be read.
fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(8192)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::TcpStream;
    use std::sync::Mutex;

    /// A test double for the registry: resources by (kind, name).
    #[derive(Default)]
    struct RegistryDouble {
        resources: Mutex<HashMap<(String, String), (String, Object)>>,
    }

    impl RegistryDouble {
        fn put(&self, kind: &str, name: &str, state: &str, outputs: Object) {
            self.resources
                .lock()
                .unwrap()
                .insert((kind.into(), name.into()), (state.into(), outputs));
        }
    }

    impl ResourceLookup for RegistryDouble {
        fn lookup(&self, kind: &str, name: &str) -> Option<(String, Object)> {
            self.resources.lock().unwrap().get(&(kind.into(), name.into())).cloned()
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        source: PathBuf,
        root: PathBuf,
        registry: Arc<RegistryDouble>,
        provider: LocalProvider,
        /// Every machine a test saw, killed when the test ends.
        seen: Mutex<Vec<Machine>>,
    }

    /// A failing test must not leave machines running: kill every group
    /// the clusters' record files name.
    impl Drop for Fixture {
        fn drop(&mut self) {
            let mut all = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
            if let Ok(clusters) = fs::read_dir(self.root.join("clusters")) {
                for c in clusters.flatten() {
                    let Ok(bytes) = fs::read(c.path().join("machines.json")) else {
                        continue;
                    };
                    all.extend(serde_json::from_slice::<Vec<Machine>>(&bytes).unwrap_or_default());
                }
            }
            for m in all {
                if let (true, Some(pid)) = (is_running(&m), m.pid) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("src");
        fs::create_dir_all(source.join("sub")).unwrap();
        fs::write(source.join("index.html"), "hello from the image\n").unwrap();
        fs::write(source.join("sub/run.sh"), "#!/bin/sh\necho run\n").unwrap();
        fs::set_permissions(source.join("sub/run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("index.html", source.join("link.html")).unwrap();
        let root = tmp.path().join("data/local");
        let registry = Arc::new(RegistryDouble::default());
        let provider = LocalProvider::new(root.clone(), registry.clone());
        Fixture {
            source,
            root,
            registry,
            provider,
            seen: Mutex::new(Vec::new()),
            _tmp: tmp,
        }
    }

    fn request(kind: &str, name: &str, state: &str, spec: Value, outputs: &Object, run_id: &str) -> StepRequest {
        StepRequest {
            kind: kind.into(),
            name: name.into(),
            spec: spec.as_object().cloned().unwrap_or_default(),
            outputs: outputs.clone(),
            args: Default::default(),
            event: "create".into(),
            state: state.into(),
            run_id: run_id.into(),
            attempt: 1,
            script: None,
            work_dir: std::env::temp_dir(),
            node_id: 1,
        }
    }

    async fn step(p: &LocalProvider, req: StepRequest) -> (StepResult, Vec<String>) {
        let (log, mut rx) = LogSink::channel();
        let r = p.step(req, log, CancellationToken::new()).await;
        let mut lines = Vec::new();
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        (r, lines)
    }

    /// Runs a step that must succeed, merging its outputs into `outputs`.
    async fn ok(p: &LocalProvider, req: StepRequest, outputs: &mut Object) -> Vec<String> {
        let what = format!("{}/{} {}", req.kind, req.name, req.state);
        let (r, lines) = step(p, req).await;
        match r {
            StepResult::Succeeded { outputs: o } => outputs.extend(o),
            StepResult::Failed { error, .. } => panic!("{what} failed: {error}\n{lines:#?}"),
        }
        lines
    }

    fn error_of(r: StepResult) -> String {
        match r {
            StepResult::Failed { error, .. } => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// Builds image `name` (pending + building) and registers it as built.
    async fn build_image(f: &Fixture, name: &str, spec: Value) -> Object {
        let mut outputs = Object::new();
        ok(
            &f.provider,
            request("image", name, "pending", spec.clone(), &outputs, "run-1"),
            &mut outputs,
        )
        .await;
        ok(
            &f.provider,
            request("image", name, "building", spec, &outputs, "run-2"),
            &mut outputs,
        )
        .await;
        f.registry.put("image", name, "built", outputs.clone());
        outputs
    }

    impl Fixture {
        /// The machines in a cluster's outputs, remembered for cleanup.
        fn machines(&self, outputs: &Object) -> Vec<Machine> {
            let ms: Vec<Machine> = serde_json::from_value(outputs["machines"].clone()).unwrap();
            self.seen.lock().unwrap().extend(ms.iter().cloned());
            ms
        }
    }

    fn accepts(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn image_pending_then_building() {
        let f = fixture();
        let spec = json!({
            "source": f.source.display().to_string(),
            "build": ["echo building in $(basename $(pwd))", "echo built > built.txt && chmod 600 built.txt"],
            "start": "exec sleep 30",
        });
        let mut outputs = Object::new();
        ok(
            &f.provider,
            request("image", "web", "pending", spec.clone(), &outputs, "run-1"),
            &mut outputs,
        )
        .await;
        let dir = PathBuf::from(outputs["dir"].as_str().unwrap());
        assert_eq!(dir, f.root.join("images/web/run-1"));
        assert_eq!(outputs["node"], json!(1));
        assert_eq!(
            outputs["source"],
            json!(fs::canonicalize(&f.source).unwrap().display().to_string())
        );
        assert_eq!(
            fs::read_to_string(dir.join("index.html")).unwrap(),
            "hello from the image\n"
        );
        let mode = fs::metadata(dir.join("sub/run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
        assert_eq!(
            fs::read_link(dir.join("link.html")).unwrap(),
            PathBuf::from("index.html")
        );

        let lines = ok(
            &f.provider,
            request("image", "web", "building", spec.clone(), &outputs, "run-2"),
            &mut outputs,
        )
        .await;
        assert_eq!(fs::read_to_string(dir.join("built.txt")).unwrap(), "built\n");
        assert!(lines.contains(&"building in run-1".to_string()), "{lines:?}");
        assert_eq!(outputs["start"], json!("exec sleep 30"));
        assert!(!f.source.join("built.txt").exists(), "the build changed the source");

        // A rebuild starts from a fresh copy and replaces the earlier one.
        fs::write(dir.join("leftover"), "x").unwrap();
        ok(
            &f.provider,
            request("image", "web", "pending", spec.clone(), &outputs, "run-3"),
            &mut outputs,
        )
        .await;
        let dir3 = PathBuf::from(outputs["dir"].as_str().unwrap());
        assert!(!dir3.join("leftover").exists() && !dir3.join("built.txt").exists());
        assert!(!dir.exists(), "the earlier build was kept");

        // Pending again for the same run (a takeover) starts over too.
        fs::write(dir3.join("leftover"), "x").unwrap();
        ok(
            &f.provider,
            request("image", "web", "pending", spec.clone(), &outputs, "run-3"),
            &mut outputs,
        )
        .await;
        assert!(!dir3.join("leftover").exists());

        ok(
            &f.provider,
            request("image", "web", "destroying", spec.clone(), &outputs, "run-4"),
            &mut outputs,
        )
        .await;
        assert_eq!(outputs["dir"], Value::Null);
        assert!(!f.root.join("images/web").exists());
        // Destroying again is fine.
        ok(
            &f.provider,
            request("image", "web", "destroying", spec, &outputs, "run-5"),
            &mut outputs,
        )
        .await;
    }

    #[tokio::test]
    async fn image_failures_name_their_cause() {
        let f = fixture();
        let missing = f.source.join("nope");
        let spec = json!({ "source": missing.display().to_string() });
        let (r, _) = step(
            &f.provider,
            request("image", "a", "pending", spec, &Object::new(), "r1"),
        )
        .await;
        let e = error_of(r);
        assert!(
            e.starts_with("spec.source: ") && e.contains(&missing.display().to_string()),
            "{e}"
        );

        let spec = json!({ "source": f.source.display().to_string(), "build": ["true", "echo no >&2; exit 4"] });
        let mut outputs = Object::new();
        ok(
            &f.provider,
            request("image", "a", "pending", spec.clone(), &outputs, "r2"),
            &mut outputs,
        )
        .await;
        let (r, lines) = step(
            &f.provider,
            request("image", "a", "building", spec.clone(), &outputs, "r3"),
        )
        .await;
        assert_eq!(
            error_of(r),
            "build command 2 (`echo no >&2; exit 4`) exited with status 4"
        );
        assert!(lines.contains(&"no".to_string()), "{lines:?}");

        let mut elsewhere = request("image", "a", "building", spec.clone(), &outputs, "r3");
        elsewhere.node_id = 2;
        let (r, _) = step(&f.provider, elsewhere).await;
        assert_eq!(
            error_of(r),
            "image a lives on node 1; only that node can build it (this is node 2)"
        );
        let mut elsewhere = request("image", "a", "destroying", spec.clone(), &outputs, "r4");
        elsewhere.node_id = 2;
        let (r, _) = step(&f.provider, elsewhere).await;
        assert!(error_of(r).contains("only that node can remove it"));

        let (r, _) = step(&f.provider, request("image", "a", "built", spec, &outputs, "r5")).await;
        assert_eq!(
            error_of(r),
            "the local provider has no step for state built of kind image"
        );
    }

    #[tokio::test]
    async fn cluster_checks_its_spec_and_image() {
        let f = fixture();
        let cases = [
            (
                json!({"image": "img", "size": 0}),
                "spec.size: must be an integer from 1 to 64",
            ),
            (json!({"image": "img", "size": 65}), "spec.size"),
            (json!({"image": "img", "size": 1.5}), "spec.size"),
            (json!({"size": 1}), "spec.image: required"),
            (json!({"image": "img", "size": 2, "base_port": 65535}), "spec.base_port"),
            (
                json!({"image": "img", "size": 1, "env": {"A": 1}}),
                "spec.env.A: must be a string",
            ),
            (
                json!({"image": "img", "size": 1, "env": {"PORT": "1"}}),
                "spec.env.PORT",
            ),
            (json!({"image": "img", "size": 1}), "image img does not exist"),
        ];
        for (spec, want) in cases {
            let (r, _) = step(
                &f.provider,
                request("cluster", "c", "pending", spec.clone(), &Object::new(), "r"),
            )
            .await;
            let e = error_of(r);
            assert!(e.starts_with(want), "{spec}: {e}");
        }
        f.registry.put("image", "img", "building", Object::new());
        let spec = json!({"image": "img", "size": 1});
        let (r, _) = step(
            &f.provider,
            request("cluster", "c", "pending", spec.clone(), &Object::new(), "r"),
        )
        .await;
        assert_eq!(error_of(r), "image img is building, not built");

        let img = build_image(
            &f,
            "img",
            json!({"source": f.source.display().to_string(), "start": "sleep 30"}),
        )
        .await;
        assert_eq!(img["node"], json!(1));
        let mut req = request("cluster", "c", "pending", spec.clone(), &Object::new(), "r");
        req.node_id = 3;
        let (r, _) = step(&f.provider, req).await;
        assert!(error_of(r).starts_with("image img lives on node 1; only that node"));

        let mut other = Object::new();
        other.insert(
            "machines".into(),
            json!([{"index": 0, "node": 2, "pid": 12345, "port": 1, "dir": "d", "log": "l"}]),
        );
        let (r, _) = step(&f.provider, request("cluster", "c", "stopping", spec, &other, "r")).await;
        assert_eq!(
            error_of(r),
            "machine 0 of cluster c lives on node 2; only that node can stop it (this is node 1)"
        );
    }

    #[tokio::test]
    async fn a_machine_that_exits_at_once_fails_the_step_with_its_log() {
        let f = fixture();
        build_image(
            &f,
            "bad",
            json!({"source": f.source.display().to_string(), "start": "echo cannot listen on $PORT; exit 3"}),
        )
        .await;
        let spec = json!({"image": "bad", "size": 1, "base_port": 4567});
        let (r, _) = step(
            &f.provider,
            request("cluster", "b", "pending", spec.clone(), &Object::new(), "r1"),
        )
        .await;
        let StepResult::Failed { error, outputs } = r else {
            panic!("{r:?}")
        };
        assert!(error.starts_with("machine 0 of cluster b exited at once"), "{error}");
        assert!(error.contains("cannot listen on 4567"), "{error}");
        // The failed machine is reported so a destroy can clean it up.
        assert_eq!(f.machines(&outputs).len(), 1);
        let mut outputs = outputs;
        ok(
            &f.provider,
            request("cluster", "b", "destroying", spec, &outputs.clone(), "r2"),
            &mut outputs,
        )
        .await;
        assert!(!f.root.join("clusters/b").exists());
    }

    #[tokio::test]
    async fn cluster_lifecycle_with_real_machines() {
        let f = fixture();
        let start = "exec python3 -m http.server $PORT --bind 127.0.0.1";
        build_image(
            &f,
            "web",
            json!({"source": f.source.display().to_string(), "start": start}),
        )
        .await;
        let spec = json!({"image": "web", "size": 2, "env": {"GREETING": "hi"}});
        let mut outputs = Object::new();

        let lines = ok(
            &f.provider,
            request("cluster", "c1", "pending", spec.clone(), &outputs, "run-1"),
            &mut outputs,
        )
        .await;
        assert_eq!(outputs["image"], json!("web"));
        let up = f.machines(&outputs);
        assert_eq!(up.len(), 2);
        assert_eq!(
            lines.iter().filter(|l| l.contains("started: pid")).count(),
            2,
            "{lines:?}"
        );
        let croot = f.root.join("clusters/c1");
        for (i, m) in up.iter().enumerate() {
            assert_eq!(m.index, i as u64);
            assert_eq!(m.node, 1);
            assert_eq!(PathBuf::from(&m.dir), croot.join(format!("machine-{i}")));
            assert_eq!(PathBuf::from(&m.log), croot.join(format!("machine-{i}.log")));
            assert!(PathBuf::from(&m.dir).join("index.html").exists());
            let pid = m.pid.unwrap();
            assert!(is_running(m), "machine {i} is not running");
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
            let environ = String::from_utf8_lossy(&environ);
            for var in [
                format!("PORT={}", m.port),
                "OPSD_CLUSTER=c1".into(),
                format!("OPSD_MACHINE={i}"),
                "GREETING=hi".into(),
            ] {
                assert!(environ.split('\0').any(|v| v == var), "machine {i} lacks {var}");
            }
        }
        assert_ne!(up[0].port, up[1].port);
        for m in &up {
            wait_until(&format!("port {} accepts", m.port), || accepts(m.port)).await;
        }

        // Running the step again (a takeover) keeps the running machines.
        let mut again = outputs.clone();
        let lines = ok(
            &f.provider,
            request("cluster", "c1", "starting", spec.clone(), &outputs, "run-2"),
            &mut again,
        )
        .await;
        assert_eq!(f.machines(&again), up);
        assert_eq!(
            lines.iter().filter(|l| l.contains("already running")).count(),
            2,
            "{lines:?}"
        );

        ok(
            &f.provider,
            request("cluster", "c1", "stopping", spec.clone(), &outputs.clone(), "run-3"),
            &mut outputs,
        )
        .await;
        let stopped = f.machines(&outputs);
        assert_eq!(stopped.len(), 2);
        for (m, was) in stopped.iter().zip(&up) {
            assert_eq!(m.pid, None);
            assert_eq!(m.port, was.port);
            assert!(
                !is_alive(was.pid.unwrap(), None),
                "pid {} survived the stop",
                was.pid.unwrap()
            );
            wait_until(&format!("port {} refuses", m.port), || !accepts(m.port)).await;
        }
        assert!(croot.join("machine-0").is_dir(), "stopping removed the files");

        ok(
            &f.provider,
            request("cluster", "c1", "starting", spec.clone(), &outputs.clone(), "run-4"),
            &mut outputs,
        )
        .await;
        let restarted = f.machines(&outputs);
        for (m, was) in restarted.iter().zip(&up) {
            assert_eq!(m.port, was.port);
            assert!(is_running(m));
            wait_until(&format!("port {} accepts again", m.port), || accepts(m.port)).await;
        }

        ok(
            &f.provider,
            request("cluster", "c1", "destroying", spec, &outputs.clone(), "run-5"),
            &mut outputs,
        )
        .await;
        assert_eq!(outputs["machines"], json!([]));
        assert!(!croot.exists(), "destroying left {}", croot.display());
        for m in &restarted {
            assert!(
                !is_alive(m.pid.unwrap(), None),
                "pid {} survived the destroy",
                m.pid.unwrap()
            );
            assert!(!accepts(m.port));
        }
    }

    #[tokio::test]
    async fn machines_of_a_cancelled_step_are_found_by_destroy() {
        let f = fixture();
        build_image(
            &f,
            "slow",
            json!({"source": f.source.display().to_string(), "start": "exec sleep 60"}),
        )
        .await;
        let spec = json!({"image": "slow", "size": 1});
        let (r, _) = step(
            &f.provider,
            request("cluster", "s", "pending", spec.clone(), &Object::new(), "r1"),
        )
        .await;
        let StepResult::Succeeded { outputs } = r else {
            panic!("{r:?}")
        };
        let m = f.machines(&outputs).remove(0);
        assert!(is_running(&m));
        // The engine drops a cancelled step's outputs: destroy with none.
        let mut out = Object::new();
        ok(
            &f.provider,
            request("cluster", "s", "destroying", spec, &Object::new(), "r2"),
            &mut out,
        )
        .await;
        assert!(!is_alive(m.pid.unwrap(), None), "the machine survived");
    }
}
