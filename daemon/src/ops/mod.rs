//! Providers: the code that makes a work state real. A provider's step is one
//! async function that does the work and says success or failure with
//! outputs; recording, retries, cancellation, timeouts, logs and takeover
//! belong to the engine. Steps must be idempotent (a step may run again after
//! a leader change) and must return promptly once their cancellation token
//! fires.

pub mod exec;
pub mod local;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A JSON object: a resource's spec or outputs.
pub type Object = Map<String, Value>;

/// What a step gets to work on.
#[derive(Debug, Clone)]
pub struct StepRequest {
    /// The resource's kind.
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// What the user asked for.
    pub spec: Object,
    /// What earlier steps reported.
    pub outputs: Object,
    /// The arguments of the event that started the chain of runs.
    pub args: BTreeMap<String, String>,
    /// The event that started the chain (`create` for the first one).
    pub event: String,
    /// The work state being entered, whose step this is.
    pub state: String,
    /// The run this step belongs to.
    pub run_id: String,
    /// 1 for the first execution, +1 for each takeover by a new leader.
    pub attempt: u32,
    /// The state's script (`run`), for the exec provider.
    pub script: Option<String>,
    /// A scratch directory for this attempt, created and owned by the engine.
    pub work_dir: PathBuf,
    /// The node executing the step.
    pub node_id: u64,
}

/// How a step ended. Cancellation is not a result: the engine knows it fired
/// the token, and records the run as cancelled whatever the step returns.
#[derive(Debug, Clone, PartialEq)]
pub enum StepResult {
    /// The work is done; `outputs` are merged into the resource's.
    Succeeded {
        /// Keys to merge into the resource's outputs.
        outputs: Object,
    },
    /// The work failed, for the reason in `error`.
    Failed {
        /// What went wrong, for the run record.
        error: String,
        /// Outputs reported before the failure (kept with the run).
        outputs: Object,
    },
}

impl StepResult {
    /// A failure without outputs.
    pub fn failed(error: impl Into<String>) -> Self {
        StepResult::Failed {
            error: error.into(),
            outputs: Object::new(),
        }
    }
}

/// Where a step writes its log lines; the engine stores them with the run
/// and streams them to anyone following. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<String>,
}

impl LogSink {
    /// A sink and the receiving end the engine drains.
    pub fn channel() -> (LogSink, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (LogSink { tx }, rx)
    }

    /// Writes one line (a trailing newline is not needed). Lines written
    /// after the run ended are dropped.
    pub fn line(&self, line: impl Into<String>) {
        let _ = self.tx.send(line.into());
    }
}

/// Looks up another resource a step depends on (a cluster's image, say):
/// its state and outputs as applied on this node.
pub trait ResourceLookup: Send + Sync {
    /// The resource's current state and outputs, or `None` if it does not exist.
    fn lookup(&self, kind: &str, name: &str) -> Option<(String, Object)>;
}

/// The provider contract.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Runs the step of `req.state`. Returns when the work is done, has
    /// failed, or `cancel` fired (then any result is fine: the run is
    /// recorded as cancelled).
    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult;
}

/// The providers by the name kinds use for them.
pub type Providers = BTreeMap<String, Arc<dyn Provider>>;
