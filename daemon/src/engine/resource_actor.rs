//! The actor of one resource: it serialises the events done to the resource
//! and, on the leader, drives the resource's run in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::decide::{decide, Action, Executing, Pending, Proposal, Situation, Stage};
use super::step::{self, Job};
use super::{Committed, EngineCtx, EngineError};
use crate::domain::resources::{self, refuse_event, ResourceRecord, RunEnd, RunOutcome, RunRecord};
use crate::domain::{Command, Rejection, Trigger};

/// The attempt this process executes for the resource's run.
struct Executor {
    index: u64,
    attempt: u32,
    cancel: CancellationToken,
    /// The cancel came from a user (the run ends `cancelled`), not from this
    /// node losing the leadership (the run goes on elsewhere).
    by_user: Arc<AtomicBool>,
    /// Once the step ended: how, and where recording it stands.
    finish: Option<Finish>,
}

/// An ended step's finish, to be recorded.
struct Finish {
    end: RunEnd,
    at_ms: i64,
    pending: Pending,
}

impl Executor {
    fn new(run: &RunRecord) -> Self {
        Executor {
            index: run.index,
            attempt: run.attempt,
            cancel: CancellationToken::new(),
            by_user: Arc::new(AtomicBool::new(run.cancel_requested)),
            finish: None,
        }
    }
}

/// One resource's actor.
pub struct ResourceActor {
    ctx: Arc<EngineCtx>,
    kind: String,
    name: String,
    resource: Option<ResourceRecord>,
    active: Option<RunRecord>,
    executor: Option<Executor>,
    /// A proposal to take over (or give up) the run at an attempt.
    takeover: Option<Proposal>,
    /// The delays before proposing again after the cluster could not commit.
    backoff: Backoff,
    /// The actor's own address while its resource has a run in flight or
    /// this process executes one: it keeps the actor alive. At rest, the
    /// actor lives only while someone holds its address (a request being
    /// served) or a future of its own is pending; then actix stops it.
    keep_alive: Option<Addr<ResourceActor>>,
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
            backoff: Backoff::default(),
            keep_alive: None,
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

    /// What the decision needs to know, as this actor knows it now.
    fn situation(&self) -> Situation<'_> {
        Situation {
            leader_term: self.ctx.leader_term(),
            node_id: self.ctx.node_id,
            boot_index: self.ctx.boot_index,
            run: self.active.as_ref(),
            executing: self.executor.as_ref().map(|ex| Executing {
                run: ex.index,
                attempt: ex.attempt,
                stage: match &ex.finish {
                    None => Stage::Stepping {
                        cancelled: ex.cancel.is_cancelled(),
                    },
                    Some(f) => Stage::Finishing(f.pending),
                },
            }),
            takeover: self.takeover,
        }
    }

    /// Does what [`decide`] says. Abandoning a step is followed by a fresh
    /// decision (the run may need taking over); nothing else is.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        let mut action = decide(&self.situation());
        if action == Action::Abandon {
            self.abandon();
            action = decide(&self.situation());
        }
        match action {
            Action::Wait => {}
            Action::Abandon => self.abandon(),
            Action::Execute => self.execute(ctx),
            Action::FinishCancelled => self.finish_cancelled(ctx),
            Action::ProposeFinish => self.propose_finish(ctx),
            Action::CancelStep => self.cancel_step(),
            Action::TakeOver { attempt } => self.take_over(attempt, ctx),
            Action::GiveUp => self.give_up(ctx),
        }
        let busy = self.active.is_some() || self.executor.is_some();
        if !busy {
            self.keep_alive = None;
        } else if self.keep_alive.is_none() {
            self.keep_alive = Some(ctx.address());
        }
    }

    /// Stops this node's execution of the step, if any, without finishing
    /// the run: another node drives it now, or it already ended.
    fn abandon(&mut self) {
        if let Some(ex) = self.executor.take() {
            ex.cancel.cancel();
        }
    }

    /// The finish of attempt `attempt` of run `index`, if this process still
    /// executes that attempt and its step ended.
    fn finish_of(&mut self, index: u64, attempt: u32) -> Option<&mut Finish> {
        self.executor
            .as_mut()
            .filter(|ex| (ex.index, ex.attempt) == (index, attempt))
            .and_then(|ex| ex.finish.as_mut())
    }

    /// Starts the step of the run in flight on the daemon's runtime.
    fn execute(&mut self, ctx: &mut Context<Self>) {
        let (Some(run), Some(resource)) = (self.active.clone(), self.resource.clone()) else {
            return;
        };
        let ex = Executor::new(&run);
        let (index, attempt) = (run.index, run.attempt);
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
            let Some(ex) = act
                .executor
                .as_mut()
                .filter(|ex| (ex.index, ex.attempt) == (index, attempt))
            else {
                return;
            };
            ex.finish = Some(Finish {
                end,
                at_ms: step::now_ms(),
                pending: Pending::Ready,
            });
            act.drive(ctx);
        }));
    }

    /// Ends the run in flight as cancelled without running its step: it was
    /// cancelled before this attempt began (while no leader drove it).
    fn finish_cancelled(&mut self, ctx: &mut Context<Self>) {
        let Some(run) = &self.active else { return };
        let mut ex = Executor::new(run);
        ex.finish = Some(Finish {
            end: RunEnd::Cancelled {
                error: "cancelled before the step ran".into(),
                outputs_json: String::new(),
            },
            at_ms: step::now_ms(),
            pending: Pending::Ready,
        });
        self.executor = Some(ex);
        self.propose_finish(ctx);
    }

    /// Fires the running step's cancellation: a user asked.
    fn cancel_step(&mut self) {
        if let Some(ex) = &self.executor {
            info!(run_id = %resources::run_id(ex.index), resource = %self.who(), "engine: cancelling the step");
            ex.by_user.store(true, Ordering::SeqCst);
            ex.cancel.cancel();
        }
    }

    /// Proposes the ended step's finish; if the cluster cannot commit it, it
    /// is proposed again after the backoff, as long as this node still
    /// executes the attempt.
    fn propose_finish(&mut self, ctx: &mut Context<Self>) {
        let Some(ex) = self.executor.as_mut() else { return };
        let (index, attempt) = (ex.index, ex.attempt);
        let Some(finish) = ex.finish.as_mut() else { return };
        finish.pending = Pending::InFlight;
        let cmd = Command::FinishRun {
            run: index,
            attempt,
            end: finish.end.clone(),
            at_ms: finish.at_ms,
        };
        ctx.spawn(self.ctx.propose(cmd).into_actor(self).map(move |result, act, ctx| {
            if let Err(EngineError::Rejected(r)) = &result {
                warn!(run_id = %resources::run_id(index), attempt, reason = ?r, "engine: the run's finish was refused");
            }
            if act.finish_of(index, attempt).is_none() {
                return; // no longer this node's to record
            }
            let retry = act.answered(&result);
            if let Err(EngineError::Cluster(e)) = &result {
                warn!(run_id = %resources::run_id(index), attempt, error = %e, "engine: cannot record the run's finish yet; retrying");
            }
            if let Some(finish) = act.finish_of(index, attempt) {
                finish.pending = if retry.is_some() {
                    Pending::Retrying
                } else {
                    Pending::Answered
                };
            }
            let Some(delay) = retry else { return };
            ctx.run_later(delay, move |act, ctx| {
                if let Some(finish) = act.finish_of(index, attempt).filter(|f| f.pending == Pending::Retrying) {
                    finish.pending = Pending::Ready;
                    act.drive(ctx);
                }
            });
        }));
    }

    /// Takes over the run in flight, which an earlier leader or process was
    /// given, as attempt `attempt`.
    fn take_over(&mut self, attempt: u32, ctx: &mut Context<Self>) {
        let Some(run) = &self.active else { return };
        info!(run_id = %run.run_id(), attempt, resource = %self.who(), "engine: taking over the run");
        let cmd = Command::TakeOverRun {
            run: run.index,
            attempt,
        };
        self.claim(cmd, ctx);
    }

    /// Ends the run in flight as interrupted: it had its attempts.
    fn give_up(&mut self, ctx: &mut Context<Self>) {
        let Some(run) = &self.active else { return };
        info!(run_id = %run.run_id(), attempts = run.attempt, resource = %self.who(), "engine: giving up the run");
        let cmd = Command::FinishRun {
            run: run.index,
            attempt: run.attempt,
            end: RunEnd::Interrupted {
                error: format!("given up after {} attempts", run.attempt),
            },
            at_ms: step::now_ms(),
        };
        self.claim(cmd, ctx);
    }

    /// Proposes a takeover (or giving up) of the run in flight at its current
    /// attempt; if the cluster cannot commit it, the actor re-reads the state
    /// after the backoff and decides again.
    fn claim(&mut self, cmd: Command, ctx: &mut Context<Self>) {
        let Some(run) = &self.active else { return };
        let (index, attempt) = (run.index, run.attempt);
        let proposal = move |pending| Proposal {
            run: index,
            attempt,
            pending,
        };
        self.takeover = Some(proposal(Pending::InFlight));
        ctx.spawn(self.ctx.propose(cmd).into_actor(self).map(move |result, act, ctx| {
            if act.takeover != Some(proposal(Pending::InFlight)) {
                return;
            }
            let retry = act.answered(&result);
            act.takeover = match (&result, retry) {
                (Err(EngineError::Cluster(e)), Some(delay)) => {
                    warn!(run_id = %resources::run_id(index), error = %e, "engine: cannot take the run over yet; retrying");
                    ctx.run_later(delay, move |act, ctx| {
                        if act.takeover == Some(proposal(Pending::Retrying)) {
                            act.takeover = Some(proposal(Pending::Ready));
                            act.refresh(ctx);
                        }
                    });
                    Some(proposal(Pending::Retrying))
                }
                // Committed: the applied state moves on to the new attempt.
                (Ok(_), _) => Some(proposal(Pending::Answered)),
                // Refused: the run moved on already; decide afresh on the next change.
                _ => None,
            };
        }));
    }

    /// Keeps the backoff up to date with a proposal's answer, and says how
    /// long to wait before proposing again if the cluster could not commit it.
    fn answered(&mut self, result: &Committed) -> Option<std::time::Duration> {
        match result {
            Err(EngineError::Cluster(_)) => Some(self.backoff.next_delay()),
            Ok(_) => {
                self.backoff.reset();
                None
            }
            Err(EngineError::Rejected(_)) => None,
        }
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
