//! The `ec2` provider: the built-in `image` and `cluster` kinds made real on
//! Amazon EC2 (`spec.provider = "ec2"`, docs/providers.md), through
//! `aws-sdk-ec2` with aws-config's standard credential chain and endpoint
//! settings. An image is an AMI, a cluster is instances started with the
//! run id as their client token, tagged with the resource and the run.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{refuse_run, step_result, LogSink, Provider, ResourceLookup, StepRequest, StepResult};
use crate::domain::kind::Kind;

/// The provider of the built-in kinds on EC2.
pub struct Ec2Provider {
    /// The registry, to find a cluster's image.
    lookup: Arc<dyn ResourceLookup>,
}

impl Ec2Provider {
    /// A provider finding a cluster's image through `lookup`.
    pub fn new(lookup: Arc<dyn ResourceLookup>) -> Self {
        Ec2Provider { lookup }
    }
}

#[async_trait::async_trait]
impl Provider for Ec2Provider {
    fn name(&self) -> &'static str {
        "ec2"
    }

    fn check_kind(&self, kind: &Kind) -> Result<(), String> {
        refuse_run(kind)?;
        Err(format!("kind {:?}: the ec2 provider is not built yet", kind.name))
    }

    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult {
        let _ = (&self.lookup, &log, &cancel);
        step_result(Err(format!("the ec2 provider cannot run {} yet", req.state).into()))
    }
}
