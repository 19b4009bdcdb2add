//! PLACEHOLDER so the crate compiles while the local provider is written: replace this whole file.
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{LogSink, Provider, ResourceLookup, StepRequest, StepResult};

/// Placeholder.
pub struct LocalProvider;

impl LocalProvider {
    /// Placeholder.
    pub fn new(_root: PathBuf, _lookup: Arc<dyn ResourceLookup>) -> Self {
        LocalProvider
    }
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    async fn step(&self, _req: StepRequest, _log: LogSink, _cancel: CancellationToken) -> StepResult {
        StepResult::failed("not written yet")
    }
}
