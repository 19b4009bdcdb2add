//! PLACEHOLDER so the crate compiles while the exec provider is written: replace this whole file.
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{LogSink, Provider, StepRequest, StepResult};

/// Placeholder.
pub struct ExecProvider;

impl ExecProvider {
    /// Placeholder.
    pub fn new(_grace: Duration) -> Self {
        ExecProvider
    }
}

#[async_trait::async_trait]
impl Provider for ExecProvider {
    async fn step(&self, _req: StepRequest, _log: LogSink, _cancel: CancellationToken) -> StepResult {
        StepResult::failed("not written yet")
    }
}
