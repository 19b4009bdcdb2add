//! The `docker` provider: the built-in `image` and `cluster` kinds made real
//! with the Docker engine (`spec.provider = "docker"`, docs/providers.md):
//! an image is a Docker image built from a directory, a cluster is
//! containers of it on a user-defined network. It runs the same steps as the
//! local provider (a work state names its step), so the acceptance checks,
//! services and the load balancer work on containers as on processes.

pub mod engine;
pub mod opsd_nodes;

use std::sync::Arc;

use opsd_cluster::ClusterNode;
use tokio_util::sync::CancellationToken;

use super::{refuse_run, step_result, LogSink, Provider, ResourceLookup, StepRequest, StepResult};
use crate::domain::kind::Kind;
use opsd_nodes::OpsdStep;

/// The provider of the built-in kinds on the Docker engine.
pub struct DockerProvider {
    /// The registry, to find a cluster's image.
    lookup: Arc<dyn ResourceLookup>,
    /// This opsd cluster's id: in the names and labels of everything the
    /// provider makes, so two opsd clusters sharing one Docker engine never
    /// see (or remove) each other's containers.
    scope: String,
    /// This node's advertise host.
    host: String,
    /// This node, for the steps that change the opsd cluster itself (the
    /// `opsd-cluster` kind); `None` in unit tests.
    node: Option<ClusterNode>,
}

impl DockerProvider {
    /// A provider finding a cluster's image through `lookup`, naming what it
    /// makes after `scope` (this opsd cluster's id), on the node `node`
    /// advertised at `host`.
    pub fn new(
        lookup: Arc<dyn ResourceLookup>,
        scope: impl Into<String>,
        host: impl Into<String>,
        node: Option<ClusterNode>,
    ) -> Self {
        DockerProvider {
            lookup,
            scope: scope.into(),
            host: host.into(),
            node,
        }
    }
}

#[async_trait::async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn check_kind(&self, kind: &Kind) -> Result<(), String> {
        refuse_run(kind)?;
        // The opsd-cluster kind's steps (opsd_nodes); the image and cluster
        // steps are not built yet.
        for (name, state) in kind.states.iter().filter(|(_, s)| s.work) {
            match state.step.as_deref() {
                Some(step) if OpsdStep::named(step).is_some() => {}
                _ => {
                    return Err(super::state_error(
                        kind,
                        name,
                        "step",
                        format_args!("the docker provider does not run {:?} yet", state.step),
                    ))
                }
            }
        }
        Ok(())
    }

    /// An opsd-cluster's spec (`size`, `hosts`) is checked at create.
    fn check_spec(&self, kind: &Kind, spec: &super::Object) -> Result<(), String> {
        let starts_nodes = kind
            .states
            .values()
            .any(|s| s.step.as_deref() == Some("start_opsd_nodes"));
        if starts_nodes {
            super::selfdeploy::nodes_spec(spec, &self.host)?;
        }
        Ok(())
    }

    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult {
        if let Some(step) = req.step.as_deref().and_then(OpsdStep::named) {
            return step_result(self.opsd_step(step, &req, &log, &cancel).await);
        }
        let _ = &self.lookup;
        step_result(Err(format!("the docker provider cannot run {} yet", req.state).into()))
    }
}
