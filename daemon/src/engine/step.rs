//! Executing one attempt of a run: the provider's step, under the state's
//! timeout and the run's cancellation, with its log lines written to this
//! node's file of the attempt and a bounded tail of them batched into the
//! replicated run log.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
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
use crate::ops::{LogRoom, LogSink, Object, StepRequest, StepResult};
use crate::run_logs::{self, LogFile};

/// Log lines are proposed in batches of at most this many lines...
const LOG_BATCH_LINES: usize = 200;
/// ...and this many bytes...
const LOG_BATCH_BYTES: usize = 64 << 10;
/// ...at most one batch this often; lines beyond that are on this node only.
const LOG_BATCH_WAIT: Duration = Duration::from_millis(200);
/// Lines a step may have printed that are not yet written and batched: past
/// this, its output waits in its pipe.
const LOG_QUEUE_LINES: usize = 4096;
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
    let (sink, lines, room) = LogSink::bounded(LOG_QUEUE_LINES);
    let prepared = prepare(&ctx, &run, &resource);
    // The secret settings in scope are masked out of everything the step
    // reports before it is proposed: its log lines, its error, its outputs.
    let masker = match &prepared {
        Ok((_, _, _, masker)) => masker.clone(),
        Err(_) => Masker::default(),
    };
    let file = open_file(&ctx, &run);
    let forwarder = tokio::spawn(forward_log(
        ctx.clone(),
        run.index,
        run.attempt,
        (lines, room),
        masker.clone(),
        file,
    ));
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

/// The most recent lines not proposed yet, at most [`LOG_BATCH_LINES`] and
/// [`LOG_BATCH_BYTES`] (but always the newest line), and what was let go to
/// keep them so.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    skipped_lines: u64,
    skipped_bytes: u64,
}

impl Tail {
    fn push(&mut self, line: String) {
        self.bytes += stored_len(&line);
        self.lines.push_back(line);
        while self.lines.len() > LOG_BATCH_LINES || (self.bytes > LOG_BATCH_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= stored_len(&old);
                self.skipped_lines += 1;
                self.skipped_bytes += old.len() as u64 + 1;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.skipped_lines == 0
    }

    /// The next batch to propose: a marker for the lines let go since the
    /// last one, if any, then the lines kept.
    fn take(&mut self, node_id: u64) -> Vec<String> {
        let mut batch = Vec::with_capacity(self.lines.len() + 1);
        if self.skipped_lines > 0 {
            batch.push(run_logs::skip_marker(self.skipped_lines, self.skipped_bytes, node_id));
        }
        batch.extend(self.lines.drain(..));
        *self = Tail::default();
        batch
    }
}

/// The bytes a line takes in the replicated log (apply cuts long ones).
fn stored_len(line: &str) -> usize {
    line.len().min(resources::MAX_LOG_LINE) + 1
}

/// Writes every line of the step's output, the secret values masked out,
/// to this node's file of the attempt, and proposes a bounded tail of them:
/// at most one batch per [`LOG_BATCH_WAIT`] (one in flight at a time), of the
/// newest lines, with a marker line for those left out. When the step drops
/// its sink, the last lines are proposed, so the replicated log ends as the
/// output did.
async fn forward_log(
    ctx: Arc<EngineCtx>,
    run: u64,
    attempt: u32,
    (mut lines, room): (mpsc::UnboundedReceiver<String>, Arc<LogRoom>),
    masker: Masker,
    mut file: LogFile,
) {
    let propose = |batch: Vec<String>| {
        for line in &batch {
            debug!(run_id = %resources::run_id(run), "{line}");
        }
        let committed = ctx.propose(Command::AppendRunLog {
            run,
            attempt,
            lines: batch,
        });
        async move {
            if let Err(e) = committed.await {
                warn!(run_id = %resources::run_id(run), error = %e, "engine: log lines not recorded");
            }
        }
    };
    let mut tail = Tail::default();
    let mut ticks = tokio::time::interval(LOG_BATCH_WAIT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => {
                    room.took_one();
                    let line = if masker.is_empty() { line } else { masker.mask(&line) };
                    file.line(&line);
                    tail.push(line);
                }
                None => break,
            },
            _ = ticks.tick(), if in_flight.is_none() && !tail.is_empty() => {
                file.flush();
                in_flight = Some(Box::pin(propose(tail.take(ctx.node_id))));
            }
            _ = async { in_flight.as_mut().expect("in flight").await }, if in_flight.is_some() => in_flight = None,
        }
    }
    file.finish();
    if let Some(proposal) = in_flight {
        proposal.await;
    }
    if !tail.is_empty() {
        propose(tail.take(ctx.node_id)).await;
    }
}

/// This node's file for an attempt. A takeover's file starts with the
/// replicated lines of the earlier attempts (their whole log was on the node
/// that ran them), then a line saying where this attempt starts.
fn open_file(ctx: &EngineCtx, run: &RunRecord) -> LogFile {
    let mut file = ctx.run_logs.create(run.index, run.attempt);
    if run.attempt > 1 {
        let earlier = resources::read_log(&ctx.node.reader().view(), run.index).unwrap_or_default();
        if earlier.dropped > 0 {
            file.line(&format!(
                "[opsd: the first {} replicated lines of the earlier attempts were dropped (the replicated log is bounded)]",
                earlier.dropped
            ));
        }
        for line in &earlier.lines {
            file.line(line);
        }
        file.line(&format!(
            "[opsd: attempt {} starts here, on node {}; the lines above are the replicated lines of the earlier attempts]",
            run.attempt, ctx.node_id
        ));
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_newest_lines_and_counts_the_others() {
        let mut tail = Tail::default();
        for i in 0..1000 {
            tail.push(format!("line {i:05}"));
        }
        let batch = tail.take(3);
        assert_eq!(batch.len(), LOG_BATCH_LINES + 1);
        assert_eq!(batch[0], run_logs::skip_marker(800, 800 * 11, 3));
        assert_eq!(batch[1], "line 00800");
        assert_eq!(batch[LOG_BATCH_LINES], "line 00999");
        assert!(tail.is_empty());

        // Few lines: all of them, no marker.
        tail.push("a".into());
        tail.push("b".into());
        assert_eq!(tail.take(3), ["a", "b"]);

        // Long lines: the byte budget, but always the newest line.
        for _ in 0..100 {
            tail.push("x".repeat(10_000));
        }
        let batch = tail.take(3);
        assert_eq!(batch.len(), 1 + LOG_BATCH_BYTES / (resources::MAX_LOG_LINE + 1));
        assert!(run_logs::is_skip_marker(&batch[0]));
    }
}
