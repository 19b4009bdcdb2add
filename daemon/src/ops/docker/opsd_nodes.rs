//! The docker provider's steps of the built-in `opsd-cluster` kind (opsd
//! deploying itself, docs/providers.md): each node is a container of an
//! image built from this very opsd binary, in the host's network namespace
//! (it reaches a loopback seed and the other nodes there; node i listens on
//! its own host address), with its data in a named volume (a container
//! killed and started again keeps its node) and the Docker socket mounted
//! (the docker provider keeps working once the cluster lives in the
//! containers). The membership changes are provider-independent
//! (`ops::selfdeploy`).
//!
//! Everything is named and labelled after this opsd cluster's id (the
//! provider's scope) and the resource, so a step run again finds what an
//! earlier attempt made, and two opsd clusters sharing one engine never
//! touch each other's nodes.

use std::collections::BTreeMap;

use opsd_cluster::ClusterNode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::engine::{ContainerSpec, Engine, Network, LABEL_INDEX, LABEL_RESOURCE, LABEL_RUN};
use super::DockerProvider;
use crate::ops::selfdeploy::{self, Adopted, NodesSpec};
use crate::ops::{machines_of, Fail, LogSink, Object, StepError, StepRequest};

/// Label on every container, volume and image of an opsd-cluster: the id of
/// the opsd cluster that made it (the provider's scope).
pub const LABEL_SCOPE: &str = "opsd.scope";

/// The Docker socket mounted into every node, when this machine has it.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// How many lines of a dead node's output a failure quotes.
const LOG_TAIL: usize = 20;

/// The opsd-cluster steps, as the kind's work states name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsdStep {
    /// Builds the image, starts the nodes, waits until each is a voter.
    Start,
    /// Hands the cluster to the nodes.
    Adopt,
    /// The nodes leave, then their containers, volumes and image go.
    Destroy,
}

impl OpsdStep {
    /// Every step with its name.
    pub const ALL: [(&'static str, OpsdStep); 3] = [
        ("start_opsd_nodes", OpsdStep::Start),
        ("adopt_opsd_nodes", OpsdStep::Adopt),
        ("destroy_opsd_nodes", OpsdStep::Destroy),
    ];

    /// The step called `name`, if it is one of these.
    pub fn named(name: &str) -> Option<OpsdStep> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }
}

/// `text` as a part of a Docker name: lowercase, with anything but
/// letters, digits, `_`, `.` and `-` as `-`.
fn docker_name(text: &str) -> String {
    text.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '.' | '-') => c,
            _ => '-',
        })
        .collect()
}

/// The names of what an opsd-cluster resource makes on the engine.
struct Names {
    /// `opsd-SCOPE-NAME`: the prefix of every name.
    base: String,
    /// `opsd-cluster/NAME`, the [`LABEL_RESOURCE`].
    resource: String,
}

impl Names {
    fn new(scope: &str, req: &StepRequest) -> Names {
        Names {
            base: format!("opsd-{}-{}", docker_name(scope), docker_name(&req.name)),
            resource: format!("{}/{}", req.kind, req.name),
        }
    }

    fn image(&self) -> String {
        format!("{}:node", self.base)
    }

    fn container(&self, i: usize) -> String {
        format!("{}-{i}", self.base)
    }

    fn volume(&self, i: usize) -> String {
        format!("{}-{i}-data", self.base)
    }
}

impl DockerProvider {
    /// Runs an opsd-cluster step.
    pub(super) async fn opsd_step(
        &self,
        step: OpsdStep,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<Object, Fail> {
        let node = self.node.as_ref().ok_or_else(|| {
            Fail::from("this provider was made without its opsd node, so it cannot change the opsd cluster")
        })?;
        match step {
            OpsdStep::Start => self.start_opsd_nodes(node, req, log, cancel).await,
            OpsdStep::Adopt => self.adopt_opsd_nodes(node, req, log, cancel).await,
            OpsdStep::Destroy => self.destroy_opsd_nodes(node, req, log).await,
        }
    }

    /// The labels of everything made for `req`'s resource.
    fn opsd_labels(&self, names: &Names, req: &StepRequest) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_SCOPE.to_string(), self.scope.clone()),
            (LABEL_RESOURCE.to_string(), names.resource.clone()),
            (LABEL_RUN.to_string(), req.run_id.clone()),
        ])
    }

    async fn start_opsd_nodes(
        &self,
        node: &ClusterNode,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<Object, Fail> {
        let nodes = selfdeploy::nodes_spec(&req.spec, &self.host)?;
        let names = Names::new(&self.scope, req);
        let labels = self.opsd_labels(&names, req);
        let engine = Engine::connect().await?;

        let tag = names.image();
        log.line(format!(
            "building image {tag} from this opsd binary and the libraries it links"
        ));
        let context =
            tokio::task::spawn_blocking(|| selfdeploy::image_files().and_then(|f| selfdeploy::image_context(&f)))
                .await
                .map_err(|e| Fail::from(format!("making the build context: {e}")))??;
        if cancel.is_cancelled() {
            return Err(StepError::Cancelled.into());
        }
        engine.build_image(&tag, context, &labels, log, cancel).await?;

        let join = selfdeploy::join_addrs(node, &nodes);
        let mut machines = Vec::new();
        for (i, host) in nodes.hosts.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(Fail {
                    error: StepError::Cancelled,
                    outputs: machines_output(&machines),
                });
            }
            let mut labels = labels.clone();
            labels.insert(LABEL_INDEX.to_string(), i.to_string());
            let volume = names.volume(i);
            engine.ensure_volume(&volume, &labels).await.map_err(|e| Fail {
                error: e,
                outputs: machines_output(&machines),
            })?;
            let mut binds = vec![format!("{volume}:{}", selfdeploy::DATA_DIR)];
            if std::path::Path::new(DOCKER_SOCKET).exists() {
                binds.push(format!("{DOCKER_SOCKET}:{DOCKER_SOCKET}"));
            }
            let spec = ContainerSpec {
                name: names.container(i),
                image: tag.clone(),
                cmd: Some(selfdeploy::node_args(*host, &join)),
                env: Vec::new(),
                labels,
                network: Network::Host,
                binds,
            };
            let container = engine.run(&spec).await.map_err(|e| Fail {
                error: e,
                outputs: machines_output(&machines),
            })?;
            log.line(format!(
                "container {} runs node {i} at {}",
                container.name,
                nodes.client_addr(i)
            ));
            machines.push(json!({
                "index": i,
                "address": nodes.client_addr(i),
                "container": container.name,
                "volume": volume,
            }));
        }

        let addrs = nodes.client_addrs();
        let check = || self.opsd_nodes_alive(&engine, &names);
        let ids = selfdeploy::wait_for_voters(node, &addrs, log, cancel, check)
            .await
            .map_err(|e| Fail {
                error: e,
                outputs: machines_output(&machines),
            })?;
        for m in &mut machines {
            let id = m["address"].as_str().and_then(|a| ids.get(a)).copied();
            m["node_id"] = id.map(Value::from).unwrap_or(Value::Null);
        }
        let mut outputs = machines_output(&machines);
        outputs.insert("image".into(), Value::String(tag));
        Ok(outputs)
    }

    /// Fails, quoting its output, if a node's container is not running.
    async fn opsd_nodes_alive(&self, engine: &Engine, names: &Names) -> Result<(), StepError> {
        let containers = engine
            .containers(&[(LABEL_SCOPE, &self.scope), (LABEL_RESOURCE, &names.resource)])
            .await?;
        if let Some(c) = containers.iter().find(|c| !c.running()) {
            let tail = engine.logs_tail(&c.id, LOG_TAIL).await.unwrap_or_default();
            return Err(StepError::Failed(format!(
                "container {} stopped (exit code {}) before its node joined; its last lines:\n{}",
                c.name,
                c.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                tail.trim_end()
            )));
        }
        Ok(())
    }

    async fn adopt_opsd_nodes(
        &self,
        node: &ClusterNode,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<Object, Fail> {
        let addrs = node_addrs(req, &self.host)?;
        match selfdeploy::adopt(node, &addrs, log, cancel).await? {
            Adopted::Done { left } => Ok(Object::from_iter([
                ("adopted".to_string(), Value::Bool(true)),
                ("left".to_string(), json!(left)),
            ])),
            Adopted::RemovedSelf => Ok(Object::from_iter([("adopted".to_string(), Value::Bool(true))])),
        }
    }

    async fn destroy_opsd_nodes(&self, node: &ClusterNode, req: &StepRequest, log: &LogSink) -> Result<Object, Fail> {
        let addrs = node_addrs(req, &self.host)?;
        selfdeploy::leave(node, &addrs, log).await?;
        let names = Names::new(&self.scope, req);
        let engine = Engine::connect().await?;
        let labels = [
            (LABEL_SCOPE, self.scope.as_str()),
            (LABEL_RESOURCE, names.resource.as_str()),
        ];
        for c in engine.containers(&labels).await? {
            log.line(format!("removing container {}", c.name));
            engine.remove(&c.id).await?;
        }
        for v in engine.volumes(&labels).await? {
            log.line(format!("removing volume {v}"));
            engine.remove_volume(&v).await?;
        }
        engine.remove_image(&names.image()).await?;
        Ok(Object::from_iter([("machines".to_string(), json!([]))]))
    }
}

/// The nodes' client addresses: the machines recorded by the start step,
/// else the ones the spec gives (a start that failed early).
fn node_addrs(req: &StepRequest, host: &str) -> Result<Vec<String>, Fail> {
    let recorded: Vec<String> = machines_of(&req.outputs).into_iter().map(|m| m.address).collect();
    if !recorded.is_empty() {
        return Ok(recorded);
    }
    let nodes: NodesSpec = selfdeploy::nodes_spec(&req.spec, host)?;
    Ok(nodes.client_addrs())
}

/// `{"machines": [...]}`.
fn machines_output(machines: &[Value]) -> Object {
    Object::from_iter([("machines".to_string(), Value::Array(machines.to_vec()))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_docker_names_scoped_to_the_opsd_cluster() {
        assert_eq!(docker_name("Prod_1.a b/c"), "prod_1.a-b-c");
        let req = StepRequest {
            kind: "opsd-cluster".into(),
            name: "Prod".into(),
            spec: Object::new(),
            outputs: Object::new(),
            args: Default::default(),
            event: "create".into(),
            state: "pending".into(),
            run_id: "r1".into(),
            attempt: 1,
            step: Some("start_opsd_nodes".into()),
            run: None,
            work_dir: "/nonexistent".into(),
            node_id: 1,
            settings: Default::default(),
        };
        let names = Names::new("00ab", &req);
        assert_eq!(names.image(), "opsd-00ab-prod:node");
        assert_eq!(names.container(2), "opsd-00ab-prod-2");
        assert_eq!(names.volume(0), "opsd-00ab-prod-0-data");
        assert_eq!(names.resource, "opsd-cluster/Prod");
    }

    #[test]
    fn every_step_has_its_name() {
        for (name, step) in OpsdStep::ALL {
            assert_eq!(OpsdStep::named(name), Some(step));
        }
        assert_eq!(OpsdStep::named("start_machines"), None);
    }
}
