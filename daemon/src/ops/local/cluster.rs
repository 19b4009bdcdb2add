//! The `local` provider's cluster steps: a cluster is `size` machines, each
//! a copy of a built image under `<root>/clusters/<name>/machine-<i>` running
//! the image's `start` command as a detached process group (it outlives
//! opsd; a restart of opsd does not restart the machines).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use opsd_proto::machine_env::{machine_env, skipped_settings};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::machines::{free_port, is_running, known_machines, record_machines, stop_running, Machine, START_CHECK};
use super::{Fail, LocalProvider, StepOut};
use crate::ops::fields;
use crate::ops::files::{append_line, blocking, check_component, copy_tree, log_tail, remove_tree};
use crate::ops::process::{give_to_exec_user, give_tree_to_exec_user, is_alive, launch_detached, proc_stat};
use crate::ops::{LogSink, Object, StepError, StepRequest};

/// Lines of a machine's log shown when it died at once.
const LOG_TAIL_LINES: usize = 20;

/// A cluster's spec, checked.
pub(super) struct ClusterSpec {
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

/// Checks a cluster's spec, naming the field at fault (its `checks` are
/// checked by [`crate::verify::parse_checks`]).
pub(super) fn cluster_spec(spec: &Object) -> Result<ClusterSpec, String> {
    let image = fields::image(spec)?;
    let size = fields::size(spec)?;
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
    let env = fields::env(spec)?;
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
        let outputs = self.lookup.built_image(name)?;
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

    /// `start_machines` (`fresh`: new copies of the image) and
    /// `restart_machines` (reuse the machines' directories and ports):
    /// starts every machine not running.
    pub(super) async fn start_machines(
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
        let (from_outputs, from_disk) = known_machines(&croot, &req.outputs, log);
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
        // Records of older builds have no address: they are this node's.
        for m in machines.values_mut().filter(|m| m.address.is_empty()) {
            m.address = self.address(m.port);
        }
        // Machines beyond the size are stopped.
        let extra: Vec<Machine> = machines.split_off(&spec.size).into_values().collect();
        if extra.iter().any(is_running) {
            log.line(format!("stopping machines beyond the size {}", spec.size));
            if stop_running(&extra, log, cancel).await {
                return Err(StepError::Cancelled.into());
            }
        }

        let skipped = skipped_settings(&req.settings);
        if !skipped.is_empty() {
            log.line(format!(
                "settings in scope not given to the machines (not environment variable names, or a NUL in the value): {}",
                skipped.join(", ")
            ));
        }
        let mut used_ports: BTreeSet<u16> = machines.values().map(|m| m.port).collect();
        let mut started = Vec::new();
        for i in 0..spec.size {
            let outputs = cluster_outputs(&machines, &spec.image);
            if cancel.is_cancelled() {
                return Err(Fail {
                    error: StepError::Cancelled,
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
            let with_outputs = |error: StepError| Fail {
                error,
                outputs: outputs.clone(),
            };
            let previous_port = machines.get(&i).map(|m| m.port);
            let port = match (spec.base_port, previous_port) {
                (Some(base), _) => base + i as u16,
                (None, Some(p)) if !fresh => p,
                _ => free_port(&used_ports).map_err(|e| with_outputs(e.into()))?,
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
            .map_err(|e| with_outputs(e.into()))?;
            // The machine is the user's: the exec user's, in its own copy.
            blocking({
                let (dir, log_path) = (dir.clone(), log_path.clone());
                move || give_tree_to_exec_user(&dir).and_then(|()| give_to_exec_user(&log_path))
            })
            .await
            .map_err(|e: String| with_outputs(e.into()))?;
            // Settings in scope, then spec.env, then opsd's own (shared with `opsctl shell`).
            let env = machine_env(&req.settings, &spec.env, &req.name, i, self.machine_host(), port);
            let pid = launch_detached(&image.start, &dir, &log_path, &env)
                .await
                .map_err(|e| with_outputs(format!("machine {i} of cluster {}: {e}", req.name).into()))?;
            let machine = Machine {
                index: i,
                node: req.node_id,
                pid: Some(pid),
                port,
                address: self.address(port),
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
            record_machines(&croot, &machines.values().collect::<Vec<_>>()).map_err(|e| with_outputs(e.into()))?;
        }
        record_machines(&croot, &machines.values().collect::<Vec<_>>())?;
        let outputs = cluster_outputs(&machines, &spec.image);

        if !started.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(START_CHECK) => {}
                _ = cancel.cancelled() => return Err(Fail { error: StepError::Cancelled, outputs }),
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
                return Err(Fail {
                    error: StepError::Failed(error),
                    outputs,
                });
            }
        }
        Ok(outputs)
    }

    /// `stop_machines` (keep the files) and `destroy_machines` (remove
    /// them): stops every machine of the cluster on this node.
    pub(super) async fn stop_machines(
        &self,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
        destroy: bool,
    ) -> StepOut {
        check_component("resource name", &req.name)?;
        let croot = self.cluster_root(&req.name);
        let (from_outputs, from_disk) = known_machines(&croot, &req.outputs, log);
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
        if stop_running(&all, log, cancel).await {
            return Err(StepError::Cancelled.into());
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
            record_machines(&croot, &stopped.values().collect::<Vec<_>>())?;
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use serde_json::json;

    use super::super::fixture::*;
    use super::super::machines::is_running;
    use crate::ops::process::is_alive;
    use crate::ops::{Object, StepResult};

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
                "OPSD_HOST=127.0.0.1".into(),
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
    async fn verify_runs_the_checks_and_keeps_failed_machines() {
        let f = fixture();
        let start = "exec python3 -m http.server $PORT --bind 127.0.0.1";
        build_image(
            &f,
            "web",
            json!({"source": f.source.display().to_string(), "start": start}),
        )
        .await;
        let checks = json!([
            {"type": "tcp", "name": "port", "timeout": 1, "retries": 20, "interval": 0.1},
            {"type": "http", "path": "/index.html", "body": "hello from the image", "retries": 5, "interval": 0.2},
            {"type": "exec", "command": "test -n \"$OPSD_MACHINE_PORT\" && test \"$GREETING\" = hi", "retries": 0},
        ]);
        let spec = json!({"image": "web", "size": 2, "checks": checks});
        let mut outputs = Object::new();
        ok(
            &f.provider,
            request("cluster", "v", "pending", spec.clone(), &outputs, "run-1"),
            &mut outputs,
        )
        .await;
        let up = f.machines(&outputs);
        for m in &up {
            assert_eq!(m.address, format!("127.0.0.1:{}", m.port));
        }
        let mut req = request("cluster", "v", "verifying", spec.clone(), &outputs, "run-2");
        req.settings.insert("GREETING".into(), "hi".into());
        let lines = ok(&f.provider, req, &mut outputs).await;
        assert_eq!(outputs["checks"]["passed"], json!(true), "{lines:#?}");
        let results = outputs["checks"]["results"].as_array().unwrap();
        assert_eq!(results.len(), 6, "{results:?}");
        assert!(lines[0].starts_with("running 3 checks on 2 machines"), "{lines:?}");
        assert_eq!(
            lines.iter().filter(|l| l.contains(" passed (")).count(),
            6,
            "{lines:#?}"
        );

        // A check that cannot pass: the step fails naming it and the
        // machine, reports the results, and the machines go on running.
        let failing = json!({"image": "web", "size": 2,
            "checks": [{"type": "http", "path": "/missing", "name": "health", "retries": 1, "interval": 0.1}]});
        let (r, lines) = step(
            &f.provider,
            request("cluster", "v", "verifying", failing, &outputs, "run-3"),
        )
        .await;
        let StepResult::Failed {
            error,
            outputs: reported,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(
            error,
            format!(
                "check health failed on machine 0 (127.0.0.1:{}) after 2 attempts: GET /missing: status 404 File not found, expected 200 (and 1 more failed result)",
                up[0].port
            )
        );
        assert_eq!(reported["checks"]["passed"], json!(false));
        assert_eq!(reported["checks"]["results"].as_array().unwrap().len(), 2);
        assert!(lines.iter().any(|l| l.contains("machines are kept")), "{lines:#?}");
        for m in &up {
            assert!(is_running(m), "machine {} was stopped", m.index);
        }

        // No checks: passes, saying so.
        let (r, lines) = step(
            &f.provider,
            request(
                "cluster",
                "v",
                "verifying",
                json!({"image": "web", "size": 2}),
                &outputs,
                "run-4",
            ),
        )
        .await;
        assert!(matches!(r, StepResult::Succeeded { .. }), "{r:?}");
        assert_eq!(lines, ["no checks declared (spec.checks): nothing to verify"]);

        // No machines recorded: fails.
        let (r, _) = step(
            &f.provider,
            request("cluster", "v", "verifying", spec.clone(), &Object::new(), "run-5"),
        )
        .await;
        assert!(error_of(r).starts_with("no machines recorded"));

        ok(
            &f.provider,
            request("cluster", "v", "destroying", spec, &outputs.clone(), "run-6"),
            &mut outputs,
        )
        .await;
    }

    #[test]
    fn a_cluster_spec_is_checked_before_it_is_created() {
        use crate::domain::kind::builtin;
        use crate::ops::Provider;
        let f = fixture();
        let cluster = builtin("cluster").unwrap();
        let check = |spec: serde_json::Value| f.provider.check_spec(&cluster, spec.as_object().unwrap());
        check(json!({"image": "a", "size": 1, "checks": [{"type": "tcp"}]})).unwrap();
        assert_eq!(
            check(json!({"image": "a", "size": 1, "checks": [{"type": "ping"}]})).unwrap_err(),
            "spec.checks[0].type: unknown check type \"ping\" (use tcp, http or exec)"
        );
        assert!(check(json!({"size": 1}))
            .unwrap_err()
            .starts_with("spec.image: required"));
        // Images have no checks to check.
        let image = builtin("image").unwrap();
        f.provider
            .check_spec(&image, json!({"checks": 1}).as_object().unwrap())
            .unwrap();
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
