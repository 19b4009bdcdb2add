//! The actor of one resource: it serialises the events done to the resource
//! and, on the leader, drives the resource's run in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::step::{self, Job};
use super::{Committed, EngineCtx, EngineError, MAX_ATTEMPTS};
use crate::domain::resources::{self, refuse_event, ResourceRecord, RunEnd, RunOutcome, RunRecord};
use crate::domain::{Command, Rejection, Trigger};

/// How long to wait before proposing a run's finish again after the cluster
/// could not commit it (no quorum, an election).
const FINISH_RETRY: Duration = Duration::from_millis(500);

/// The step this node executes for the resource's run.
struct Executor {
    index: u64,
    attempt: u32,
    cancel: CancellationToken,
    /// The cancel came from a user (the run ends `cancelled`), not from this
    /// node losing the leadership (the run goes on elsewhere).
    by_user: Arc<AtomicBool>,
}

/// One resource's actor.
pub struct ResourceActor {
    ctx: Arc<EngineCtx>,
    kind: String,
    name: String,
    resource: Option<ResourceRecord>,
    active: Option<RunRecord>,
    executor: Option<Executor>,
    /// A takeover proposal in flight, for (run, attempt).
    takeover: Option<(u64, u32)>,
}

impl ResourceActor {
    pub(crate) fn new(ctx: Arc<EngineCtx>, kind: String, name: String) -> Self {
        ResourceActor {
            ctx,
            kind,
            name,
            resource: None,
            active: None,
            executor: None,
            takeover: None,
        }
    }

    fn who(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// Re-reads the resource and its run in flight from the applied state,
    /// then makes sure the run is driven. A deleted resource's actor stops.
    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let view = self.ctx.node.reader().view();
        let read = resources::read_resource(&view, &self.kind, &self.name).and_then(|r| {
            let active = match r.as_ref().and_then(|r| r.active_run) {
                Some(index) => resources::read_run(&view, index)?,
                None => None,
            };
            Ok((r, active))
        });
        drop(view);
        match read {
            Ok((Some(resource), active)) => {
                self.resource = Some(resource);
                self.active = active.filter(|r| r.outcome == RunOutcome::Running);
                self.drive(ctx);
            }
            Ok((None, _)) => {
                self.resource = None;
                self.active = None;
                self.abandon();
                ctx.stop();
            }
            Err(e) => warn!(resource = %self.who(), error = %e, "engine: cannot read the resource"),
        }
    }

    /// Stops this node's execution of the step, if any, without finishing
    /// the run: another node drives it now, or it already ended.
    fn abandon(&mut self) {
        if let Some(ex) = self.executor.take() {
            ex.cancel.cancel();
        }
    }

    /// On the leader: executes the run in flight if this very process was
    /// given it (by an entry of its current term, appended since it started),
    /// else takes it over; elsewhere: executes nothing.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        let (Some(term), Some(run)) = (self.ctx.leader_term(), self.active.clone()) else {
            self.abandon();
            return;
        };
        if let Some(ex) = &self.executor {
            if (ex.index, ex.attempt) == (run.index, run.attempt) {
                if run.cancel_requested && !ex.cancel.is_cancelled() {
                    info!(run_id = %run.run_id(), resource = %self.who(), "engine: cancelling the step");
                    ex.by_user.store(true, Ordering::SeqCst);
                    ex.cancel.cancel();
                }
                return;
            }
            self.abandon();
        }
        if run.node_id == self.ctx.node_id && run.term == term && run.since > self.ctx.boot_index {
            self.execute(run, ctx);
        } else if self.takeover != Some((run.index, run.attempt)) {
            self.take_over(run, ctx);
        }
    }

    /// Starts the step of `run` on the daemon's runtime.
    fn execute(&mut self, run: RunRecord, ctx: &mut Context<Self>) {
        let Some(resource) = self.resource.clone() else { return };
        let ex = Executor {
            index: run.index,
            attempt: run.attempt,
            cancel: CancellationToken::new(),
            by_user: Arc::new(AtomicBool::new(run.cancel_requested)),
        };
        let (index, attempt) = (run.index, run.attempt);
        if run.cancel_requested {
            // Cancelled before this attempt began (while no leader drove it).
            self.executor = Some(ex);
            let end = RunEnd::Cancelled {
                error: "cancelled before the step ran".into(),
                outputs_json: String::new(),
            };
            self.propose_finish(index, attempt, end, step::now_ms(), ctx);
            return;
        }
        info!(run_id = %run.run_id(), attempt, resource = %self.who(), state = %run.to, "engine: running the step");
        let job = Job {
            run,
            resource,
            cancel: ex.cancel.clone(),
            by_user: ex.by_user.clone(),
        };
        self.executor = Some(ex);
        let task = self.ctx.runtime.spawn(step::execute(self.ctx.clone(), job));
        ctx.spawn(task.into_actor(self).map(move |joined, act, ctx| {
            let end = joined.unwrap_or_else(|e| RunEnd::Failed {
                error: format!("the step crashed: {e}"),
                outputs_json: String::new(),
            });
            let current = act.executor.as_ref().map(|e| (e.index, e.attempt));
            if current == Some((index, attempt)) {
                act.propose_finish(index, attempt, end, step::now_ms(), ctx);
            }
        }));
    }

    /// Proposes the run's finish until it commits, apply refuses it, or this
    /// node stops executing the run.
    fn propose_finish(&mut self, index: u64, attempt: u32, end: RunEnd, at_ms: i64, ctx: &mut Context<Self>) {
        let cmd = Command::FinishRun {
            run: index,
            attempt,
            end: end.clone(),
            at_ms,
        };
        let fut = self.ctx.propose(cmd);
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let current = act.executor.as_ref().map(|e| (e.index, e.attempt)) == Some((index, attempt));
            match result {
                Ok(_) => {}
                Err(EngineError::Rejected(r)) => {
                    warn!(run_id = %resources::run_id(index), attempt, reason = ?r, "engine: the run's finish was refused");
                }
                Err(EngineError::Cluster(e)) if current => {
                    warn!(run_id = %resources::run_id(index), attempt, error = %e, "engine: cannot record the run's finish yet; retrying");
                    ctx.run_later(FINISH_RETRY, move |act, ctx| {
                        if act.executor.as_ref().map(|e| (e.index, e.attempt)) == Some((index, attempt)) {
                            act.propose_finish(index, attempt, end, at_ms, ctx);
                        }
                    });
                }
                Err(_) => {}
            }
        }));
    }

    /// Takes over a run an earlier leader started (or ends it as
    /// interrupted once it had its attempts).
    fn take_over(&mut self, run: RunRecord, ctx: &mut Context<Self>) {
        self.takeover = Some((run.index, run.attempt));
        let cmd = if run.attempt >= MAX_ATTEMPTS {
            Command::FinishRun {
                run: run.index,
                attempt: run.attempt,
                end: RunEnd::Interrupted {
                    error: format!("given up after {} attempts", run.attempt),
                },
                at_ms: step::now_ms(),
            }
        } else {
            info!(run_id = %run.run_id(), attempt = run.attempt + 1, resource = %self.who(), "engine: taking over the run");
            Command::TakeOverRun {
                run: run.index,
                attempt: run.attempt + 1,
            }
        };
        ctx.spawn(self.ctx.propose(cmd).into_actor(self).map(move |result, act, ctx| {
            act.takeover = None;
            if let Err(EngineError::Cluster(e)) = result {
                warn!(run_id = %run.run_id(), error = %e, "engine: cannot take the run over yet; retrying");
                ctx.run_later(FINISH_RETRY, |act, ctx| act.refresh(ctx));
            }
        }));
    }

    fn rejected(r: Rejection) -> Committed {
        Err(EngineError::Rejected(r))
    }
}

impl Actor for ResourceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.refresh(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.abandon();
    }
}

/// The resource changed: re-read it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Refresh;

impl Handler<Refresh> for ResourceActor {
    type Result = ();

    fn handle(&mut self, _: Refresh, ctx: &mut Self::Context) {
        self.refresh(ctx);
    }
}

/// Do an event to the resource.
#[derive(Message)]
#[rtype(result = "Committed")]
pub struct DoEvent {
    /// The event.
    pub event: String,
    /// Its arguments.
    pub args: std::collections::BTreeMap<String, String>,
    /// Who, why, when.
    pub trigger: Trigger,
}

impl ResourceActor {
    /// Checks an event against the state as this actor knows it (apply
    /// checks again), then proposes it; the actor handles nothing else until
    /// the proposal is answered.
    fn propose_event(&mut self, msg: DoEvent) -> AtomicResponse<Self, Committed> {
        let early = match (&self.resource, self.kind_def()) {
            (None, _) => Some(Rejection::NotFound(format!("resource {} not found", self.who()))),
            (Some(r), Ok(kind)) => refuse_event(&kind, r, &msg.event),
            (Some(_), Err(r)) => Some(r),
        };
        if let Some(r) = early {
            return AtomicResponse::new(Box::pin(fut::ready(Self::rejected(r))));
        }
        let cmd = Command::DoEvent {
            kind: self.kind.clone(),
            name: self.name.clone(),
            event: msg.event,
            args: msg.args,
            trigger: msg.trigger,
        };
        AtomicResponse::new(Box::pin(self.ctx.propose(cmd).into_actor(self)))
    }

    fn kind_def(&self) -> Result<crate::domain::kind::Kind, Rejection> {
        let view = self.ctx.node.reader().view();
        match resources::read_kind(&view, &self.kind) {
            Ok(Some((kind, _))) => Ok(kind),
            Ok(None) => Err(Rejection::NotFound(format!("kind: no kind {:?}", self.kind))),
            Err(e) => Err(Rejection::FailedPrecondition(format!(
                "cannot read kind {}: {e}",
                self.kind
            ))),
        }
    }
}

impl Handler<DoEvent> for ResourceActor {
    type Result = AtomicResponse<Self, Committed>;

    fn handle(&mut self, msg: DoEvent, ctx: &mut Self::Context) -> Self::Result {
        // The change that let this event in may be applied but not yet seen
        // here: check against the state as applied now.
        self.refresh(ctx);
        self.propose_event(msg)
    }
}

/// Delete the resource through its kind's destroy path.
#[derive(Message)]
#[rtype(result = "Committed")]
pub struct DeleteResource {
    /// Who, why, when.
    pub trigger: Trigger,
}

impl Handler<DeleteResource> for ResourceActor {
    type Result = AtomicResponse<Self, Committed>;

    /// A resource in a final state is removed; otherwise the `destroy` event
    /// is done to it, if its state takes one.
    fn handle(&mut self, msg: DeleteResource, ctx: &mut Self::Context) -> Self::Result {
        self.refresh(ctx);
        let state = match (&self.resource, self.kind_def()) {
            (Some(r), Ok(kind)) => kind.state(&r.state).cloned().map(|s| (r.state.clone(), s)),
            (None, _) => None,
            (_, Err(r)) => return AtomicResponse::new(Box::pin(fut::ready(Self::rejected(r)))),
        };
        let Some((name, state)) = state else {
            let r = Rejection::NotFound(format!("resource {} not found", self.who()));
            return AtomicResponse::new(Box::pin(fut::ready(Self::rejected(r))));
        };
        if state.is_final {
            let cmd = Command::DeleteResource {
                kind: self.kind.clone(),
                name: self.name.clone(),
            };
            return AtomicResponse::new(Box::pin(self.ctx.propose(cmd).into_actor(self)));
        }
        if !state.on.contains_key("destroy") && self.active.is_none() {
            let takes = state.event_names();
            let r = Rejection::FailedPrecondition(format!(
                "{} cannot be deleted from state {name:?}: its kind has no destroy path from there \
                 (the state takes: {})",
                self.who(),
                if takes.is_empty() {
                    "nothing".to_string()
                } else {
                    takes.join(", ")
                }
            ));
            return AtomicResponse::new(Box::pin(fut::ready(Self::rejected(r))));
        }
        self.propose_event(DoEvent {
            event: "destroy".into(),
            args: Default::default(),
            trigger: msg.trigger,
        })
    }
}

/// Ask the resource's run to stop.
#[derive(Message)]
#[rtype(result = "Committed")]
pub struct CancelRun {
    /// The run's index.
    pub run: u64,
    /// Who, why, when.
    pub trigger: Trigger,
}

impl Handler<CancelRun> for ResourceActor {
    type Result = ResponseFuture<Committed>;

    fn handle(&mut self, msg: CancelRun, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.ctx.propose(Command::CancelRun {
            run: msg.run,
            trigger: msg.trigger,
        }))
    }
}
