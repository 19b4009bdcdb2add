//! Executing one attempt of a run: the provider's step, under the state's
//! timeout and the run's cancellation, with its log lines batched into the
//! replicated run log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::EngineCtx;
use crate::domain::mask::Masker;
use crate::domain::resources::{self, parse_object, ResourceRecord, RunEnd, RunRecord, MAX_OUTPUTS_BYTES};
use crate::domain::scope;
use crate::domain::Command;
use crate::ops::{LogSink, Object, StepRequest, StepResult};

/// Log lines are proposed in batches of at most this many...
const LOG_BATCH_LINES: usize = 200;
/// ...or after this long, whichever comes first.
const LOG_BATCH_WAIT: Duration = Duration::from_millis(200);
/// How long a step gets to wind down after a timeout fired its cancellation.
const WIND_DOWN: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch, by this node's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One attempt to execute.
pub(crate) struct Job {
    pub run: RunRecord,
    pub resource: ResourceRecord,
    pub cancel: CancellationToken,
    pub by_user: Arc<AtomicBool>,
}

/// Runs the step and says how the run ends.
pub(crate) async fn execute(ctx: Arc<EngineCtx>, job: Job) -> RunEnd {
    let Job {
        run,
        resource,
        cancel,
        by_user,
    } = job;
    let (sink, lines) = LogSink::channel();
    let prepared = prepare(&ctx, &run, &resource);
    // The secret settings in scope are masked out of everything the step
    // reports before it is proposed: its log lines, its error, its outputs.
    let masker = match &prepared {
        Ok((_, _, _, masker)) => masker.clone(),
        Err(_) => Masker::default(),
    };
    let forwarder = tokio::spawn(forward_log(ctx.clone(), run.index, run.attempt, lines, masker.clone()));
    let (result, timed_out) = match prepared {
        Err(error) => (StepResult::failed(error), None),
        Ok((provider, req, timeout, _)) => {
            let step = provider.step(req, sink, cancel.clone());
            tokio::pin!(step);
            tokio::select! {
                r = &mut step => (r, None),
                _ = tokio::time::sleep(timeout) => {
                    cancel.cancel();
                    let r = tokio::time::timeout(WIND_DOWN, &mut step).await;
                    (r.unwrap_or_else(|_| StepResult::failed("")), Some(timeout))
                }
            }
        }
    };
    let result = mask_result(&masker, result);
    // Every line is recorded before the finish, which closes the run's log.
    let _ = forwarder.await;
    if by_user.load(Ordering::SeqCst) {
        // A step that failed on its own before it saw the cancel keeps its error.
        let (error, outputs) = match result {
            StepResult::Failed { error, outputs } => (error, outputs),
            StepResult::Cancelled { outputs } | StepResult::Succeeded { outputs } => (String::new(), outputs),
        };
        return RunEnd::Cancelled {
            error,
            outputs_json: bounded(outputs_text(outputs)),
        };
    }
    match (result, timed_out) {
        (
            StepResult::Failed { outputs, .. } | StepResult::Succeeded { outputs } | StepResult::Cancelled { outputs },
            Some(t),
        ) => RunEnd::Failed {
            error: format!("the step timed out after {}s", t.as_secs()),
            outputs_json: bounded(outputs_text(outputs)),
        },
        (StepResult::Succeeded { outputs }, None) => {
            let outputs_json = outputs_text(outputs);
            if outputs_json.len() > MAX_OUTPUTS_BYTES {
                RunEnd::Failed {
                    error: format!(
                        "the step's outputs are {} bytes, more than the limit of {MAX_OUTPUTS_BYTES}",
                        outputs_json.len()
                    ),
                    outputs_json: String::new(),
                }
            } else {
                RunEnd::Succeeded { outputs_json }
            }
        }
        (StepResult::Failed { error, outputs }, None) => RunEnd::Failed {
            error,
            outputs_json: bounded(outputs_text(outputs)),
        },
        // Neither the user nor the timeout cancelled it: the engine abandoned
        // it (another node drives the run now, or it ended); this end is not
        // proposed.
        (StepResult::Cancelled { outputs }, None) => RunEnd::Failed {
            error: "cancelled".into(),
            outputs_json: bounded(outputs_text(outputs)),
        },
    }
}

/// A step's result with the secret values masked out of its error and the
/// strings of its outputs.
fn mask_result(masker: &Masker, result: StepResult) -> StepResult {
    if masker.is_empty() {
        return result;
    }
    let outputs = |o: Object| {
        let mut v = serde_json::Value::Object(o);
        masker.mask_json(&mut v);
        match v {
            serde_json::Value::Object(o) => o,
            _ => Object::new(),
        }
    };
    match result {
        StepResult::Succeeded { outputs: o } => StepResult::Succeeded { outputs: outputs(o) },
        StepResult::Failed { error, outputs: o } => StepResult::Failed {
            error: masker.mask(&error),
            outputs: outputs(o),
        },
        StepResult::Cancelled { outputs: o } => StepResult::Cancelled { outputs: outputs(o) },
    }
}

/// Outputs within the limit, or none: a failure's outputs are a courtesy.
fn bounded(outputs_json: String) -> String {
    if outputs_json.len() > MAX_OUTPUTS_BYTES {
        String::new()
    } else {
        outputs_json
    }
}

fn outputs_text(outputs: Object) -> String {
    serde_json::Value::Object(outputs).to_string()
}

/// What a run's step needs: its provider, request, timeout, and the masker of
/// the secret settings in scope.
type Prepared = (Arc<dyn crate::ops::Provider>, StepRequest, Duration, Masker);

/// The provider, request, timeout and masker of a run's step, or why it
/// cannot run.
fn prepare(ctx: &EngineCtx, run: &RunRecord, resource: &ResourceRecord) -> Result<Prepared, String> {
    let view = ctx.node.reader().view();
    let (kind, _) = resources::read_kind(&view, &run.kind)
        .map_err(|e| format!("cannot read kind {}: {e}", run.kind))?
        .ok_or_else(|| format!("kind {} no longer exists", run.kind))?;
    let settings = scope::in_scope(&view, &run.kind, &run.name)
        .map_err(|e| format!("cannot read the settings in scope of {}/{}: {e}", run.kind, run.name))?;
    drop(view);
    let masker = Masker::new(scope::secret_values(&settings));
    let state = kind
        .state(&run.to)
        .ok_or_else(|| format!("kind {} has no state {}", kind.name, run.to))?;
    let spec = parse_object("spec", &resource.spec_json)?;
    let provider = ctx
        .providers
        .for_resource(&kind, &spec)
        .cloned()
        .map_err(|e| format!("node {}: {e}", ctx.node_id))?;
    let work_dir = ctx.work_root.join(format!("{}-{}", run.run_id(), run.attempt));
    std::fs::create_dir_all(&work_dir).map_err(|e| format!("cannot create {}: {e}", work_dir.display()))?;
    crate::ops::process::give_to_exec_user(&work_dir)?;
    let req = StepRequest {
        kind: run.kind.clone(),
        name: run.name.clone(),
        spec,
        outputs: parse_object("outputs", &resource.outputs_json)?,
        args: run.args.clone(),
        event: run.event.clone(),
        state: run.to.clone(),
        run_id: run.run_id(),
        attempt: run.attempt,
        step: state.step.clone(),
        run: state.run.clone(),
        work_dir,
        node_id: ctx.node_id,
        settings: scope::values(settings),
    };
    let timeout = Duration::from_secs(state.timeout_secs());
    Ok((provider, req, timeout, masker))
}

/// Proposes the step's log lines, the secret values masked out, in batches
/// until the step drops its sink.
async fn forward_log(
    ctx: Arc<EngineCtx>,
    run: u64,
    attempt: u32,
    mut lines: mpsc::UnboundedReceiver<String>,
    masker: Masker,
) {
    let mut open = true;
    while open {
        let Some(first) = lines.recv().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LOG_BATCH_WAIT;
        while batch.len() < LOG_BATCH_LINES {
            match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(line)) => batch.push(line),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        if !masker.is_empty() {
            for line in &mut batch {
                *line = masker.mask(line);
            }
        }
        for line in &batch {
            debug!(run_id = %resources::run_id(run), "{line}");
        }
        let cmd = Command::AppendRunLog {
            run,
            attempt,
            lines: batch,
        };
        if let Err(e) = ctx.propose(cmd).await {
            warn!(run_id = %resources::run_id(run), error = %e, "engine: log lines not recorded");
        }
    }
}
