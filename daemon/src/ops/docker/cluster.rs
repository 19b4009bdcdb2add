//! The docker provider's cluster steps: a cluster is `size` containers of a
//! built Docker image on one user-defined bridge network of its own, each
//! container named `opsd-SCOPE-NAME-INDEX` and labelled with the opsd
//! cluster, the resource, the run that made it and its index. A machine is
//! reached at its container's address on that network, at `spec.port`.

use std::collections::BTreeMap;

use opsd_proto::machine_env::{machine_env, skipped_settings};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::engine::{Container, ContainerSpec, Engine, Network, LABEL_CLUSTER, LABEL_INDEX, LABEL_RESOURCE, LABEL_RUN};
use super::image::start_command;
use super::{connect, or_cancelled, DockerProvider, StepOut};
use crate::ops::{fields, Fail, LogSink, Object, StepError, StepRequest};

// How long after its start a container must still be running (the local
// provider's window), and the time a stopped container gets between SIGTERM
// and SIGKILL (the local provider's too).
use crate::ops::local::{START_CHECK, STOP_GRACE};

/// The port a machine listens on inside its container (`PORT`) when the
/// spec gives none.
pub const DEFAULT_PORT: u16 = 8080;

/// What a machine is told to listen on (`OPSD_HOST`): every address of its
/// container. Its recorded address is the container's IP on its network.
const LISTEN_HOST: &str = "0.0.0.0";

/// Lines of a container's log shown when it exited at once.
const LOG_TAIL_LINES: usize = 20;

/// A cluster's spec, checked.
pub(super) struct ClusterSpec {
    image: String,
    size: u64,
    port: u16,
    env: Vec<(String, String)>,
}

/// The parts of a built image a cluster needs.
struct ImageInfo {
    /// What containers are created from: the image's id (a rebuild moving
    /// the tag does not change running machines).
    reference: String,
    /// The image's `start`, if any.
    start: Value,
    /// The ID of the engine holding it.
    engine: String,
}

/// Checks a cluster's spec, naming the field at fault (its `checks` are
/// checked by [`crate::verify::parse_checks`]).
pub(super) fn cluster_spec(spec: &Object) -> Result<ClusterSpec, String> {
    let image = fields::image(spec)?;
    let size = fields::size(spec)?;
    if spec.get("base_port").is_some_and(|v| !v.is_null()) {
        return Err(
            "spec.base_port: not supported by the docker provider: every container has its own address; \
             spec.port is the port each listens on"
                .into(),
        );
    }
    let port = fields::port(spec, DEFAULT_PORT)?;
    let env = fields::env(spec)?;
    Ok(ClusterSpec { image, size, port, env })
}

/// One machine as recorded in the cluster's outputs.
fn machine_record(index: u64, c: &Container, port: u16, recorded: Option<&Value>) -> Value {
    let address = match &c.ip {
        Some(ip) => format!("{ip}:{port}"),
        // A stopped container has no address: the last one is kept.
        None => recorded
            .and_then(|m| m.get("address"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    };
    json!({
        "index": index,
        "address": address,
        "port": port,
        "container": c.id,
        "name": c.name,
        "state": c.state,
        "run": c.labels.get(LABEL_RUN),
    })
}

/// A cluster's outputs: its machines in order, its image and its network.
fn cluster_outputs(machines: &BTreeMap<u64, Value>, image: &str, network: &str) -> Object {
    let mut out = Object::new();
    out.insert("machines".into(), Value::Array(machines.values().cloned().collect()));
    out.insert("image".into(), json!(image));
    out.insert("network".into(), json!(network));
    out
}

/// The machine records of a resource's outputs by index.
fn recorded_machines(outputs: &Object) -> BTreeMap<u64, Value> {
    outputs
        .get("machines")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m.get("index")?.as_u64()?, m.clone())))
        .collect()
}

/// Checks that `engine` holds the image: an image built on one engine
/// cannot run on another (there is no registry between them).
fn same_engine(name: &str, image: &ImageInfo, engine: &Engine) -> Result<(), String> {
    if image.engine == engine.id() {
        return Ok(());
    }
    Err(format!(
        "image {name} is on the Docker engine {}; this node's engine ({}) cannot run it \
         (there is no registry between engines: build the image on the engine the cluster runs on)",
        image.engine,
        engine.id()
    ))
}

/// Aborts the log followers of a step when it ends, however it ends.
struct Followers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Followers {
    fn drop(&mut self) {
        for f in &self.0 {
            f.abort();
        }
    }
}

impl DockerProvider {
    /// The built docker image a cluster runs (see [`same_engine`] for where).
    fn cluster_image(&self, spec: &ClusterSpec) -> Result<ImageInfo, String> {
        let name = &spec.image;
        let outputs = self.lookup.built_image(name)?;
        let Some(on) = outputs.get("engine").and_then(Value::as_str) else {
            return Err(format!(
                "image {name} is not a docker image (it has no outputs.engine): a docker cluster runs an image \
                 created with provider=docker"
            ));
        };
        let reference = outputs
            .get("image_id")
            .or_else(|| outputs.get("tag"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("image {name} has no outputs.image_id"))?
            .to_string();
        Ok(ImageInfo {
            reference,
            start: outputs.get("start").cloned().unwrap_or(Value::Null),
            engine: on.to_string(),
        })
    }

    /// The cluster's containers on `engine` by index; those without a valid
    /// index (none opsd made) are removed, as are twins of an index (the
    /// older run's).
    async fn containers_by_index(
        &self,
        engine: &Engine,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<u64, Container>, StepError> {
        let resource = format!("{}/{}", req.kind, req.name);
        let labels = [
            (LABEL_CLUSTER, self.scope.as_str()),
            (LABEL_RESOURCE, resource.as_str()),
        ];
        let mut by_index: BTreeMap<u64, Container> = BTreeMap::new();
        for c in or_cancelled(cancel, engine.containers(&labels)).await? {
            let index = c.labels.get(LABEL_INDEX).and_then(|i| i.parse::<u64>().ok());
            let expected = index.map(|i| self.engine_name(&req.name, &format!("-{i}")));
            match index {
                Some(i) if expected.as_deref() == Some(c.name.as_str()) && !by_index.contains_key(&i) => {
                    by_index.insert(i, c);
                }
                _ => {
                    log.line(format!("removing the stray container {} ({})", c.name, c.id));
                    or_cancelled(cancel, engine.remove(&c.id)).await?;
                }
            }
        }
        Ok(by_index)
    }

    /// `start_machines` (`fresh`: a new run gets new containers; a re-run
    /// of the same run keeps what it finds) and `restart_machines` (starts
    /// the stopped containers): every machine running, then watched for
    /// [`START_CHECK`] with its output in the run's log.
    pub(super) async fn start_machines(
        &self,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
        fresh: bool,
    ) -> StepOut {
        let spec = cluster_spec(&req.spec)?;
        let image = self.cluster_image(&spec)?;
        let engine = connect(cancel).await?;
        same_engine(&spec.image, &image, &engine)?;
        let network = self.engine_name(&req.name, "");
        or_cancelled(
            cancel,
            engine.ensure_network(&network, &self.labels(&req.kind, &req.name, &req.run_id)),
        )
        .await?;
        let mut found = self.containers_by_index(&engine, req, log, cancel).await?;
        for (i, c) in found.split_off(&spec.size) {
            log.line(format!(
                "removing machine {i} ({}): beyond the size {}",
                c.name, spec.size
            ));
            or_cancelled(cancel, engine.remove(&c.id)).await?;
        }
        let skipped = skipped_settings(&req.settings);
        if !skipped.is_empty() {
            log.line(format!(
                "settings in scope not given to the machines (not environment variable names, or a NUL in the value): {}",
                skipped.join(", ")
            ));
        }

        let recorded = recorded_machines(&req.outputs);
        let mut machines: BTreeMap<u64, Value> = BTreeMap::new();
        let mut started: Vec<(u64, Container)> = Vec::new();
        let mut followers = Followers(Vec::new());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for i in 0..spec.size {
            let outputs = cluster_outputs(&machines, &spec.image, &network);
            let with_outputs = |error: StepError| Fail {
                error,
                outputs: outputs.clone(),
            };
            if cancel.is_cancelled() {
                return Err(with_outputs(StepError::Cancelled));
            }
            let name = self.engine_name(&req.name, &format!("-{i}"));
            let mut since = None;
            if let Some(c) = found.remove(&i) {
                let same_run = c.labels.get(LABEL_RUN) == Some(&req.run_id);
                if fresh && !same_run {
                    log.line(format!(
                        "machine {i}: replacing the container {} of run {}",
                        c.name,
                        c.labels.get(LABEL_RUN).map_or("?", String::as_str)
                    ));
                    or_cancelled(cancel, engine.remove(&c.id)).await.map_err(with_outputs)?;
                } else if c.running() {
                    log.line(format!(
                        "machine {i} is already running: container {} ({})",
                        c.name, c.id
                    ));
                    machines.insert(i, machine_record(i, &c, spec.port, recorded.get(&i)));
                    continue;
                } else {
                    // Its earlier output is not the run's.
                    since = Some(now);
                }
            }
            let mut labels = self.labels(&req.kind, &req.name, &req.run_id);
            labels.insert(LABEL_INDEX.into(), i.to_string());
            let container = ContainerSpec {
                name: name.clone(),
                image: image.reference.clone(),
                cmd: start_command(&image.start),
                env: machine_env(&req.settings, &spec.env, &req.name, i, LISTEN_HOST, spec.port),
                labels,
                network: Network::Bridge(network.clone()),
                binds: Vec::new(),
            };
            let c = or_cancelled(cancel, engine.run(&container))
                .await
                .map_err(|e| match e {
                    StepError::Failed(e) => StepError::Failed(format!("machine {i} of cluster {}: {e}", req.name)),
                    cancelled => cancelled,
                })
                .map_err(with_outputs)?;
            log.line(format!(
                "machine {i} started: container {} ({}), address {}:{}",
                c.name,
                c.id,
                c.ip.as_deref().unwrap_or("none yet"),
                spec.port
            ));
            followers
                .0
                .push(engine.follow_logs(&c.id, format!("machine {i}: "), since, log.clone()));
            machines.insert(i, machine_record(i, &c, spec.port, recorded.get(&i)));
            started.push((i, c));
        }
        let outputs = cluster_outputs(&machines, &spec.image, &network);
        if started.is_empty() {
            return Ok(outputs);
        }
        tokio::select! {
            _ = tokio::time::sleep(START_CHECK) => {}
            _ = cancel.cancelled() => return Err(Fail { error: StepError::Cancelled, outputs }),
        }
        let mut first_error = None;
        for (i, c) in &started {
            let now = or_cancelled(cancel, engine.inspect(&c.id))
                .await
                .map_err(|error| Fail {
                    error,
                    outputs: outputs.clone(),
                })?;
            machines.insert(*i, machine_record(*i, &now, spec.port, recorded.get(i)));
            if now.running() && now.ip.is_some() {
                continue;
            }
            let why = if now.running() {
                format!("has no address on the network {network}")
            } else {
                match now.exit_code {
                    Some(code) => format!("exited at once (status {code})"),
                    None => format!("is {} instead of running", now.state),
                }
            };
            let tail = engine
                .logs_tail(&now.id, LOG_TAIL_LINES)
                .await
                .unwrap_or_else(|e| format!("(its log cannot be read: {e})"));
            log.line(format!(
                "machine {i} {why}; the end of its log (container {}):",
                now.name
            ));
            for line in tail.lines() {
                log.line(format!("  {line}"));
            }
            first_error.get_or_insert_with(|| {
                format!(
                    "machine {i} of cluster {} {why}; the end of its log (container {}, kept for debugging):\n{tail}",
                    req.name, now.name
                )
            });
        }
        let outputs = cluster_outputs(&machines, &spec.image, &network);
        match first_error {
            Some(error) => Err(Fail {
                error: StepError::Failed(error),
                outputs,
            }),
            None => Ok(outputs),
        }
    }

    /// `stop_machines`: stops every container of the cluster (all at once,
    /// each killed after [`STOP_GRACE`]), keeping them.
    pub(super) async fn stop_machines(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let engine = connect(cancel).await?;
        let found = self.containers_by_index(&engine, req, log, cancel).await?;
        let stops = found.iter().map(|(i, c)| {
            let engine = engine.clone();
            async move {
                engine.stop(&c.id, STOP_GRACE).await?;
                log.line(format!("machine {i} stopped: container {}", c.name));
                Ok::<_, StepError>(())
            }
        });
        for r in or_cancelled(cancel, async { Ok(futures::future::join_all(stops).await) }).await? {
            r?;
        }
        let recorded = recorded_machines(&req.outputs);
        let mut machines = BTreeMap::new();
        let port = cluster_spec(&req.spec).map(|s| s.port).unwrap_or(DEFAULT_PORT);
        for (i, c) in &found {
            let now = or_cancelled(cancel, engine.inspect(&c.id)).await?;
            machines.insert(*i, machine_record(*i, &now, port, recorded.get(i)));
        }
        let mut out = Object::new();
        out.insert("machines".into(), Value::Array(machines.into_values().collect()));
        Ok(out)
    }

    /// `destroy_machines`: removes every container and network of the
    /// cluster, recorded or not (found by their labels).
    pub(super) async fn destroy_machines(
        &self,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> StepOut {
        let engine = connect(cancel).await?;
        let resource = format!("{}/{}", req.kind, req.name);
        let labels = [
            (LABEL_CLUSTER, self.scope.as_str()),
            (LABEL_RESOURCE, resource.as_str()),
        ];
        let containers = or_cancelled(cancel, engine.containers(&labels)).await?;
        let removals = containers.iter().map(|c| {
            let engine = engine.clone();
            async move {
                engine.remove(&c.id).await?;
                log.line(format!("removed the container {} ({})", c.name, c.id));
                Ok::<_, StepError>(())
            }
        });
        for r in or_cancelled(cancel, async { Ok(futures::future::join_all(removals).await) }).await? {
            r?;
        }
        for network in or_cancelled(cancel, engine.networks(&labels)).await? {
            or_cancelled(cancel, engine.remove_network(&network)).await?;
            log.line(format!("removed the network {network}"));
        }
        let mut out = Object::new();
        out.insert("machines".into(), json!([]));
        Ok(out)
    }
}
