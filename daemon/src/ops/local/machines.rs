//! The machines of a local cluster: what is recorded of each (in the
//! cluster's outputs and in `<root>/clusters/<name>/machines.json`, so a step
//! that was cancelled or interrupted before reporting its outputs leaves
//! nothing untracked), whether one still runs, and stopping them.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::ops::process::{leads_live_group, terminate_groups};
use crate::ops::{LogSink, Object};

/// Time a machine gets between SIGTERM and SIGKILL when it is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long after its start a machine must still be running: a start
/// command that fails at once (a typo, a port in use) fails the step with
/// the end of its log instead of leaving a dead cluster marked running.
pub const START_CHECK: Duration = Duration::from_millis(200);

/// The file, in a cluster's directory, recording the machines this node
/// started.
const RECORD_FILE: &str = "machines.json";

/// One machine of a cluster, as recorded in the cluster's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Machine {
    /// Its number, 0 to size-1.
    pub index: u64,
    /// The node whose processes it is.
    pub node: u64,
    /// Its process (the leader of its process group), `None` when stopped.
    pub pid: Option<i32>,
    /// The port it was told to listen on (`PORT`).
    pub port: u16,
    /// Where it listens, `HOST:PORT`: the host is the advertise host of the
    /// node running it. Empty in records of older builds (then
    /// `127.0.0.1:PORT` is meant; see [`crate::ops::machines_of`]).
    #[serde(default)]
    pub address: String,
    /// Its working directory, a copy of the image.
    pub dir: String,
    /// The file its output is appended to.
    pub log: String,
    /// The process's start time (clock ticks since boot): with the pid it
    /// tells our machine from a later process that reused the pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
}

/// True if the machine's recorded process is still running and still leads
/// its process group: only then may its group be signalled.
pub(super) fn is_running(m: &Machine) -> bool {
    m.pid.is_some_and(|pid| leads_live_group(pid, m.start_time))
}

/// The machines recorded in a cluster's `outputs`, and those in the record
/// file in its directory `croot`. Malformed entries are skipped with a log
/// line.
pub(super) fn known_machines(croot: &Path, outputs: &Object, log: &LogSink) -> (Vec<Machine>, Vec<Machine>) {
    let mut from_outputs = Vec::new();
    match outputs.get("machines") {
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
    let path = croot.join(RECORD_FILE);
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

/// Records the machines this node knows of in the cluster's directory
/// `croot`, so a step that never reported its outputs still leaves them
/// findable.
pub(super) fn record_machines(croot: &Path, machines: &[&Machine]) -> Result<(), String> {
    let path = croot.join(RECORD_FILE);
    let tmp = croot.join(format!("{RECORD_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(machines).map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
    fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Stops the running ones among `machines`: SIGTERM to each process group,
/// up to [`STOP_GRACE`] for them to go, then SIGKILL to the groups. Returns
/// early, after SIGKILL, if `cancel` fires; then returns true.
pub(super) async fn stop_running(machines: &[Machine], log: &LogSink, cancel: &CancellationToken) -> bool {
    let mut running: Vec<&Machine> = machines.iter().filter(|m| is_running(m)).collect();
    let all: Vec<(u64, i32)> = running.iter().filter_map(|m| m.pid.map(|p| (m.index, p))).collect();
    for (index, pid) in &all {
        log.line(format!("machine {index}: SIGTERM to process group {pid}"));
    }
    let groups: Vec<Pid> = all.iter().map(|(_, pid)| Pid::from_raw(*pid)).collect();
    let mut cancelled = false;
    terminate_groups(&groups, STOP_GRACE, async {
        loop {
            running.retain(|m| is_running(m));
            if running.is_empty() {
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
    })
    .await;
    for m in &running {
        log.line(format!(
            "machine {}: still running, SIGKILL to process group {}",
            m.index,
            m.pid.unwrap_or_default()
        ));
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

/// A free loopback TCP port not in `used`: bound, then released for the
/// machine to take.
pub(super) fn free_port(used: &BTreeSet<u16>) -> Result<u16, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn machine(index: u64, pid: Option<i32>) -> Machine {
        Machine {
            index,
            node: 1,
            pid,
            port: 8000 + index as u16,
            address: format!("127.0.0.1:{}", 8000 + index),
            dir: format!("d{index}"),
            log: format!("l{index}"),
            start_time: None,
        }
    }

    #[test]
    fn machines_are_found_in_the_outputs_and_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, mut rx) = LogSink::channel();
        let (a, b) = (machine(0, None), machine(1, Some(12345)));
        record_machines(tmp.path(), &[&a, &b]).unwrap();
        let mut outputs = Object::new();
        outputs.insert(
            "machines".into(),
            json!([serde_json::to_value(&b).unwrap(), {"index": "bad"}]),
        );
        let (from_outputs, from_disk) = known_machines(tmp.path(), &outputs, &log);
        assert_eq!(from_outputs, std::slice::from_ref(&b));
        assert_eq!(from_disk, [a, b]);
        let line = rx.try_recv().unwrap();
        assert!(line.starts_with("ignoring outputs.machines[1]: "), "{line}");

        fs::write(tmp.path().join(RECORD_FILE), "garbage").unwrap();
        let (_, from_disk) = known_machines(tmp.path(), &Object::new(), &log);
        assert!(from_disk.is_empty());
        assert!(rx.try_recv().unwrap().starts_with("ignoring "));
    }

    #[test]
    fn a_machine_without_a_live_process_is_not_running() {
        assert!(!is_running(&machine(0, None)));
        // Pid 1 is never a machine: it is not signalled.
        assert!(!is_running(&machine(0, Some(1))));
        let used = BTreeSet::from([free_port(&BTreeSet::new()).unwrap()]);
        assert!(!used.contains(&free_port(&used).unwrap()));
    }
}
