//! The `docker` provider: the built-in `image` and `cluster` kinds made real
//! with the Docker engine (`spec.provider = "docker"`, docs/providers.md):
//! an image is a Docker image built from a directory, a cluster is
//! containers of it on a user-defined network. It runs the same steps as the
//! local provider (a work state names its step), so the acceptance checks,
//! services and the load balancer work on containers as on processes.

pub mod engine;

use std::sync::Arc;

use opsd_cluster::ClusterNode;
use tokio_util::sync::CancellationToken;

use super::{refuse_run, step_result, LogSink, Provider, ResourceLookup, StepRequest, StepResult};
use crate::domain::kind::Kind;

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
        Err(format!("kind {:?}: the docker provider is not built yet", kind.name))
    }

    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult {
        let _ = (&self.lookup, &self.scope, &self.host, &self.node, &log, &cancel);
        step_result(Err(format!("the docker provider cannot run {} yet", req.state).into()))
    }
}
