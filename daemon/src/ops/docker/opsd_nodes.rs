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

use opsd_cluster::ClusterNode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::engine::{ContainerSpec, Engine, Network, LABEL_CLUSTER, LABEL_INDEX, LABEL_RESOURCE};
use super::{connect, DockerProvider, StepOut};
use crate::ops::selfdeploy::{self, Adopted, NodesSpec};
use crate::ops::{machines_of, Fail, LogSink, Object, StepError, StepRequest};

/// The Docker socket mounted into every node, when this machine has it.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// How many lines of a dead node's output a failure quotes.
const LOG_TAIL: usize = 20;

/// The names of what an opsd-cluster resource makes on the engine: the
/// provider's names of the resource ([`DockerProvider::engine_name`]) with
/// `-opsd`, so they never meet a cluster's of the same name.
struct Names {
    /// `opsd-SCOPE-NAME-opsd`: the prefix of every name.
    base: String,
    /// `opsd-cluster/NAME`, the [`LABEL_RESOURCE`].
    resource: String,
}

impl Names {
    fn new(provider: &DockerProvider, req: &StepRequest) -> Names {
        Names {
            base: provider.engine_name(&req.name, "-opsd"),
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
    /// This node, which the opsd-cluster steps change the membership of.
    fn opsd_node(&self) -> Result<&ClusterNode, Fail> {
        self.node.as_ref().ok_or_else(|| {
            Fail::from("this provider was made without its opsd node, so it cannot change the opsd cluster")
        })
    }

    /// `start_opsd_nodes`: builds the image of this opsd, starts the nodes
    /// (a container found by name is kept) and waits until each is a voter.
    pub(super) async fn start_opsd_nodes(
        &self,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> StepOut {
        let node = self.opsd_node()?;
        let nodes = selfdeploy::nodes_spec(&req.spec, &self.host)?;
        let names = Names::new(self, req);
        let labels = self.labels(&req.kind, &req.name, &req.run_id);
        let engine = connect(cancel).await?;

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
            // Each node joins with a join token of its own, made through this node.
            let token = selfdeploy::join_token(node).await.map_err(|e| Fail {
                error: StepError::Failed(e),
                outputs: machines_output(&machines),
            })?;
            let spec = ContainerSpec {
                name: names.container(i),
                image: tag.clone(),
                cmd: Some(selfdeploy::node_args(*host, &join)),
                env: token
                    .into_iter()
                    .map(|t| (selfdeploy::JOIN_TOKEN_ENV.to_string(), t))
                    .collect(),
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
            .containers(&[(LABEL_CLUSTER, &self.scope), (LABEL_RESOURCE, &names.resource)])
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

    /// `adopt_opsd_nodes`: the nodes are voters, every other member leaves
    /// (the leader running this step last; a new leader re-runs it).
    pub(super) async fn adopt_opsd_nodes(
        &self,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> StepOut {
        let node = self.opsd_node()?;
        let addrs = node_addrs(req, &self.host)?;
        match selfdeploy::adopt(node, &addrs, log, cancel).await? {
            Adopted::Done { left } => Ok(Object::from_iter([
                ("adopted".to_string(), Value::Bool(true)),
                ("left".to_string(), json!(left)),
            ])),
            Adopted::RemovedSelf => Ok(Object::from_iter([("adopted".to_string(), Value::Bool(true))])),
        }
    }

    /// `destroy_opsd_nodes`: the nodes leave the cluster (refused if they
    /// are all of its voters), then their containers, volumes and image go.
    pub(super) async fn destroy_opsd_nodes(
        &self,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> StepOut {
        let node = self.opsd_node()?;
        let addrs = node_addrs(req, &self.host)?;
        selfdeploy::leave(node, &addrs, log).await?;
        let names = Names::new(self, req);
        let engine = connect(cancel).await?;
        let labels = [
            (LABEL_CLUSTER, self.scope.as_str()),
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
    use crate::ops::docker::tests::provider;

    #[test]
    fn names_are_the_providers_with_opsd() {
        let req = StepRequest {
            kind: "opsd-cluster".into(),
            name: "Prod".into(),
            ..crate::ops::docker::tests::request("start_opsd_nodes")
        };
        let names = Names::new(&provider(), &req);
        assert_eq!(names.image(), "opsd-cluster_01-x-prod-opsd:node");
        assert_eq!(names.container(2), "opsd-cluster_01-x-prod-opsd-2");
        assert_eq!(names.volume(0), "opsd-cluster_01-x-prod-opsd-0-data");
        assert_eq!(names.resource, "opsd-cluster/Prod");
    }
}
