//! `--wait` for `create`, `do` and `delete`: follow the resource's watch
//! stream until it rests, showing progress on stderr, and say whether every
//! run of the change succeeded.
//!
//! The bookkeeping is a pure state machine, [`Tracker`], fed the change and
//! then every [`ResourceEvent`]; it returns what to show ([`Note`]) and says
//! when the wait is over ([`Status`]). [`wait_for_change`] drives it from the
//! stream and, when the stream breaks (the serving node died), reopens the
//! watch through the next address and catches up with the resource's history.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use opsd_client::{describe_status, is_stream_break, CallError, Nodes, Patience};
use opsd_proto::v1::resource_event::Event;
use opsd_proto::v1::{
    HistoryRequest, LogLines, Resource, ResourceChange, ResourceEvent, Run, RunOutcome, WatchResourceRequest,
};
use tokio::time::Instant;
use tonic::codec::Streaming;
use tonic::Code;

use crate::render::{duration_text, run_duration_ms, transition_text, Printer};
use crate::spec::ResourceRef;

/// The outcome of a run that ended well.
const SUCCEEDED: RunOutcome = RunOutcome::Succeeded;

/// The outcome of a run in flight.
const RUNNING: RunOutcome = RunOutcome::Running;

/// How long a watch's first message may take (the server sends it at once).
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long to wait before reopening a watch that broke soon after it opened.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);

/// A watch that lived less than this before breaking counts as a quick break.
const QUICK_BREAK: Duration = Duration::from_secs(5);

/// How many quick breaks in a row end the wait with an error.
const MAX_QUICK_BREAKS: u32 = 10;

/// Once the resource rests, how long to wait for the final event of a run
/// still shown running before asking for the resource's history instead.
const SETTLE_WAIT: Duration = Duration::from_secs(1);

/// How many times to ask the history for runs still shown running after the
/// resource rested before giving up on them.
const MAX_SETTLE_CHECKS: u32 = 10;

/// Where a wait stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The change is still in progress.
    Waiting,
    /// The resource rests (or was deleted) but some run of the change is
    /// still shown running: its final event has not arrived yet.
    Settling,
    /// The resource rests (or was deleted) and every run of the change ended.
    Done,
}

/// Something to show while waiting, on stderr.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// The resource moved between states.
    State {
        /// The state it left.
        from: String,
        /// The state it is in now.
        to: String,
    },
    /// A run of the change started (or was taken over with a new attempt).
    RunStarted(Run),
    /// A run of the change ended.
    RunEnded(Run),
    /// Log lines of a run, the first at position `first`.
    Log {
        /// The run they belong to.
        run_id: String,
        /// The position of the first line in the run's log.
        first: u64,
        /// The lines.
        lines: Vec<String>,
    },
    /// Lines of a run's log that were written while nobody was watching.
    LogGap {
        /// The run they belong to.
        run_id: String,
        /// How many lines were missed.
        missing: u64,
    },
    /// The resource was deleted.
    Deleted,
}

impl Note {
    /// The note as lines for stderr; `target` is the resource as `kind/name`.
    pub fn text(&self, target: &str) -> Vec<String> {
        match self {
            Note::State { from, to } => vec![format!("{target}: {from} -> {to}")],
            Note::RunStarted(run) => vec![format!(
                "{target}: run {} started: {} (event {}, attempt {}, node {})",
                run.run_id,
                transition_text(run, " -> "),
                run.event,
                run.attempt,
                run.node_id
            )],
            Note::RunEnded(run) => {
                let took = if let Some(duration) = run_duration_ms(run) {
                    let preposition = if run.outcome() == SUCCEEDED { "in" } else { "after" };
                    format!(" {preposition} {}", duration_text(duration))
                } else {
                    String::new()
                };
                let error = if run.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", run.error.trim_end())
                };
                vec![format!(
                    "{target}: run {} {}{took} ({}){error}",
                    run.run_id,
                    run.outcome().label(),
                    transition_text(run, " -> ")
                )]
            }
            Note::Log { run_id, lines, .. } => lines.iter().map(|line| format!("[{run_id}] {line}")).collect(),
            Note::LogGap { run_id, missing } => vec![format!(
                "[{run_id}] ({missing} line{} not shown; see `opsctl logs {run_id}`)",
                if *missing == 1 { "" } else { "s" }
            )],
            Note::Deleted => vec![format!("{target}: deleted")],
        }
    }
}

/// The bookkeeping of one wait: which runs belong to the change, how they
/// ended, and whether the resource rests.
///
/// The runs of a change are the run it started and those numbered after it
/// (runs are numbered in the order they start); without a run, those
/// numbered at or after the change's log index (a run's number is at least
/// the index of the entry that started it). The wait is over when a resource event at or after that index
/// shows the resource in a stable state with no run in flight, or when the
/// resource is deleted, and every run of the change has ended. Events may
/// arrive twice or late (after a reconnect, the history and the new stream
/// overlap): older resource versions, and updates of an ended run by the
/// same attempt, are ignored.
#[derive(Debug)]
pub struct Tracker {
    /// The log index of the change.
    index: u64,
    /// The number of the change's first run (its log index until known).
    first_run: u64,
    /// The version of the newest resource event seen.
    version: u64,
    /// The newest resource seen.
    resource: Option<Resource>,
    /// True once the newest resource event shows it resting.
    rested: bool,
    /// True once the resource was deleted.
    deleted: bool,
    /// The change's runs, by index.
    runs: Vec<Run>,
    /// Per run, the position of the next log line to show.
    log_next: HashMap<String, u64>,
}

impl Tracker {
    /// Bookkeeping for the change committed at log index `index`.
    pub fn new(index: u64) -> Self {
        Self {
            index,
            first_run: index,
            version: 0,
            resource: None,
            rested: false,
            deleted: false,
            runs: Vec::new(),
            log_next: HashMap::new(),
        }
    }

    /// Takes in the answer to the change: the resource after it and the run
    /// it started, which belongs to the change whatever its index says.
    pub fn change(&mut self, change: &ResourceChange) -> Vec<Note> {
        let mut notes = Vec::new();
        if let Some(resource) = &change.resource {
            notes.extend(self.resource(resource));
        }
        if let Some(run) = &change.run {
            self.first_run = self.first_run.max(run.index);
            notes.extend(self.track_run(run));
        }
        if change.deleted {
            notes.extend(self.deleted(None));
        }
        notes
    }

    /// Takes in one event of the watch stream.
    pub fn event(&mut self, event: &ResourceEvent) -> Vec<Note> {
        match &event.event {
            Some(Event::Resource(resource)) => self.resource(resource),
            Some(Event::Run(run)) => self.run(run),
            Some(Event::Log(lines)) => self.log(lines),
            Some(Event::Deleted(resource)) => self.deleted(Some(resource)),
            None => Vec::new(),
        }
    }

    /// Takes in the resource as it is now.
    pub fn resource(&mut self, resource: &Resource) -> Vec<Note> {
        if resource.version < self.version {
            return Vec::new();
        }
        let mut notes = Vec::new();
        if let Some(previous) = &self.resource {
            if previous.state != resource.state {
                notes.push(Note::State {
                    from: previous.state.clone(),
                    to: resource.state.clone(),
                });
            }
        }
        self.version = resource.version;
        self.rested = !resource.working && resource.active_run_id.is_empty() && resource.version >= self.index;
        self.resource = Some(resource.clone());
        notes
    }

    /// Takes in a run's record; runs older than the change are not its own
    /// and are ignored.
    pub fn run(&mut self, run: &Run) -> Vec<Note> {
        let known = self.runs.iter().any(|r| r.run_id == run.run_id);
        if !known && run.index < self.first_run {
            return Vec::new();
        }
        self.track_run(run)
    }

    /// Records a run of the change, new or updated, and says what changed.
    fn track_run(&mut self, run: &Run) -> Vec<Note> {
        let Some(position) = self.runs.iter().position(|r| r.run_id == run.run_id) else {
            let note = if run.outcome() == RUNNING {
                Note::RunStarted(run.clone())
            } else {
                Note::RunEnded(run.clone())
            };
            let at = self
                .runs
                .partition_point(|r| (r.index, &r.run_id) < (run.index, &run.run_id));
            self.runs.insert(at, run.clone());
            return vec![note];
        };
        let old = &self.runs[position];
        let retaken = run.attempt > old.attempt;
        let newer = retaken || (run.attempt == old.attempt && old.outcome() == RUNNING);
        if !newer {
            return Vec::new();
        }
        let mut notes = Vec::new();
        if retaken && run.outcome() == RUNNING {
            notes.push(Note::RunStarted(run.clone()));
        }
        if (retaken || old.outcome() == RUNNING) && run.outcome() != RUNNING {
            notes.push(Note::RunEnded(run.clone()));
        }
        self.runs[position] = run.clone();
        notes
    }

    /// Takes in log lines, showing each line once: lines already shown are
    /// skipped and lines missed (written before the watch, or while it was
    /// broken) are counted.
    pub fn log(&mut self, lines: &LogLines) -> Vec<Note> {
        let next = self.log_next.entry(lines.run_id.clone()).or_insert(0);
        let mut notes = Vec::new();
        if lines.first_line > *next {
            notes.push(Note::LogGap {
                run_id: lines.run_id.clone(),
                missing: lines.first_line - *next,
            });
        }
        let skip = usize::try_from(next.saturating_sub(lines.first_line)).unwrap_or(usize::MAX);
        if skip < lines.lines.len() {
            notes.push(Note::Log {
                run_id: lines.run_id.clone(),
                first: lines.first_line + skip as u64,
                lines: lines.lines[skip..].to_vec(),
            });
        }
        *next = (*next).max(lines.first_line + lines.lines.len() as u64);
        notes
    }

    /// The resource was deleted (`resource` is how it was, if known).
    pub fn deleted(&mut self, resource: Option<&Resource>) -> Vec<Note> {
        if self.deleted {
            return Vec::new();
        }
        self.deleted = true;
        if let Some(resource) = resource {
            self.resource = Some(resource.clone());
        }
        vec![Note::Deleted]
    }

    /// Where the wait stands.
    pub fn status(&self) -> Status {
        if !(self.rested || self.deleted) {
            Status::Waiting
        } else if self.runs.iter().any(|r| r.outcome() == RUNNING) {
            Status::Settling
        } else {
            Status::Done
        }
    }

    /// True once the resource was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// The change's runs, by index.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The newest resource seen.
    pub fn last_resource(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }

    /// The change's runs that did not succeed (including any still shown
    /// running when the wait ended).
    pub fn failures(&self) -> Vec<&Run> {
        self.runs.iter().filter(|r| r.outcome() != SUCCEEDED).collect()
    }
}

/// The error for runs of a change that did not succeed, naming each run, its
/// transition, outcome and error.
pub fn failure_message(target: &str, failures: &[&Run]) -> String {
    let describe = |run: &Run| {
        let outcome = if run.outcome() == RUNNING {
            "is still running".to_string()
        } else {
            run.outcome().label().to_string()
        };
        let error = if run.error.is_empty() {
            String::new()
        } else {
            format!(": {}", run.error.trim_end())
        };
        format!("run {} ({}) {outcome}{error}", run.run_id, transition_text(run, " -> "))
    };
    match failures {
        [one] => format!("{target}: {}", describe(one)),
        many => {
            let mut text = format!("{target}: {} runs did not succeed:", many.len());
            for run in many {
                text.push_str("\n  ");
                text.push_str(&describe(run));
            }
            text
        }
    }
}

/// A resource's watch stream and the position (in `--addr`) of the node
/// serving it.
pub struct Watch {
    served: usize,
    opened: Instant,
    stream: Streaming<ResourceEvent>,
}

/// Opens the watch of `target` before a change (`do`, `delete`) and reads its
/// first message, the resource as it is, so every event of the change will
/// be seen.
pub async fn watch_before_change(nodes: &Nodes, target: &ResourceRef) -> Result<(Watch, Option<ResourceEvent>)> {
    let mut watch = open_watch(nodes, 0, Patience::NONE, target)
        .await
        .with_context(|| format!("cannot watch {target}"))?;
    let first = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, watch.stream.message()).await {
        Ok(Ok(first)) => first,
        Ok(Err(status)) => return Err(CallError::Status(status)).with_context(|| format!("cannot watch {target}")),
        Err(_) => bail!(
            "cannot watch {target}: {} sent nothing within {}s",
            nodes.addr(watch.served),
            FIRST_MESSAGE_TIMEOUT.as_secs()
        ),
    };
    Ok((watch, first))
}

/// Opens the watch of `target`, trying addresses from position `first` on,
/// with `patience` while no node can serve it.
async fn open_watch(nodes: &Nodes, first: usize, patience: Patience, target: &ResourceRef) -> Result<Watch, CallError> {
    let request = WatchResourceRequest {
        kind: target.kind.clone(),
        name: target.name.clone(),
    };
    let (served, stream) = nodes
        .call_patiently(first, patience, |mut api| {
            let request = request.clone();
            async move { api.resources.watch(request).await }
        })
        .await?;
    Ok(Watch {
        served,
        opened: Instant::now(),
        stream,
    })
}

/// Waits for a change to `target` to finish: `watch` is the stream opened
/// before the change (with `first`, its first message), or `None` to open it
/// now (after `create`, whose runs may already have progressed: they are
/// caught up from the history). Shows progress on stderr, prints the result
/// on stdout (the last run waited for; the resource if the change started no
/// run; `deleted` if it is gone) and fails, naming them, unless every run of
/// the change succeeded.
pub async fn wait_for_change(
    nodes: &Nodes,
    target: &ResourceRef,
    change: &ResourceChange,
    opened: Option<(Watch, Option<ResourceEvent>)>,
    printer: Printer,
) -> Result<()> {
    let tracker = follow_change(nodes, target, change, opened).await?;
    let failures = tracker.failures();
    if !failures.is_empty() {
        bail!("{}", failure_message(&target.to_string(), &failures));
    }
    if !tracker.runs().is_empty() {
        printer.waited_runs(tracker.runs())?;
    } else if tracker.is_deleted() {
        printer.deleted(target)?;
    } else if let Some(resource) = tracker.last_resource() {
        printer.resource(resource)?;
    } else {
        bail!("the server answered the change to {target} without the resource");
    }
    Ok(())
}

/// Follows a change as [`wait_for_change`] does, showing its progress on
/// stderr, and returns the bookkeeping once the resource rests (or is
/// gone): its runs and how they ended, for the caller to print.
pub async fn follow_change(
    nodes: &Nodes,
    target: &ResourceRef,
    change: &ResourceChange,
    opened: Option<(Watch, Option<ResourceEvent>)>,
) -> Result<Tracker> {
    let name = target.to_string();
    let show = |notes: Vec<Note>| {
        for note in notes {
            for line in note.text(&name) {
                eprintln!("{line}");
            }
        }
    };
    let mut tracker = Tracker::new(change.index);
    let mut watch = None;
    if let Some((opened, first)) = opened {
        if let Some(first) = first {
            show(tracker.event(&first));
        }
        watch = Some(opened);
    }
    show(tracker.change(change));

    let mut reopen_from = 0;
    let mut quick_breaks = 0;
    let mut settle_checks = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let status = tracker.status();
        if status == Status::Done {
            break;
        }
        if watch.is_none() && tracker.is_deleted() {
            // No stream left to bring the last run events: the history has them.
            show(catch_up(nodes, target, &mut tracker).await?);
            break;
        }
        let Some(current) = watch.as_mut() else {
            watch = reopen(nodes, target, reopen_from, &mut tracker, &show).await?;
            continue;
        };
        let settling = status == Status::Settling;
        // Set when the stream is over (deleted) or broken.
        let mut close = false;
        tokio::select! {
            next = current.stream.message() => {
                let broke = match next {
                    Ok(Some(event)) => {
                        show(tracker.event(&event));
                        None
                    }
                    Ok(None) if tracker.is_deleted() => {
                        close = true;
                        None
                    }
                    Ok(None) => Some("the server ended the stream".to_string()),
                    Err(status) if is_stream_break(&status) => Some(describe_status(&status)),
                    Err(status) => {
                        return Err(CallError::Status(status)).with_context(|| format!("watching {target}"));
                    }
                };
                if let Some(why) = broke {
                    let lived = current.opened.elapsed();
                    quick_breaks = if lived < QUICK_BREAK { quick_breaks + 1 } else { 0 };
                    if quick_breaks > MAX_QUICK_BREAKS {
                        bail!("the watch of {target} keeps breaking ({why}); the change goes on: see `opsctl history {target}`");
                    }
                    eprintln!(
                        "{target}: the watch through {} broke ({why}); reconnecting",
                        nodes.addr(current.served)
                    );
                    reopen_from = current.served + 1;
                    close = true;
                    if lived < QUICK_BREAK {
                        tokio::time::sleep(REOPEN_PAUSE).await;
                    }
                }
            }
            _ = tokio::time::sleep(SETTLE_WAIT), if settling => {
                settle_checks += 1;
                show(catch_up(nodes, target, &mut tracker).await?);
                if settle_checks >= MAX_SETTLE_CHECKS && tracker.status() == Status::Settling {
                    break;
                }
            }
            interrupted = &mut ctrl_c => {
                interrupted.context("cannot listen for Ctrl-C")?;
                bail!("stopped waiting for {target}; the change goes on: see `opsctl history {target}`");
            }
        }
        if close {
            watch = None;
        }
    }
    Ok(tracker)
}

/// Reopens the watch of `target` from address position `first` on, then
/// catches up with the history so runs that progressed meanwhile are
/// counted. The new watch's first message is the resource as it is now, so
/// nothing between the break and the reopen is lost. Returns `None` if the
/// resource no longer exists. Keeps trying for a while when no node can
/// serve the watch (a leader election, the node being restarted).
async fn reopen(
    nodes: &Nodes,
    target: &ResourceRef,
    first: usize,
    tracker: &mut Tracker,
    show: &impl Fn(Vec<Note>),
) -> Result<Option<Watch>> {
    let watch = match open_watch(nodes, first, Patience::default(), target).await {
        Ok(watch) => Some(watch),
        Err(CallError::Status(status)) if status.code() == Code::NotFound => {
            show(tracker.deleted(None));
            None
        }
        Err(error @ (CallError::Unreachable(_) | CallError::Timeout { .. })) => {
            return Err(error).with_context(|| format!("cannot watch {target} again"));
        }
        Err(error) => return Err(error).with_context(|| format!("cannot watch {target}")),
    };
    show(catch_up(nodes, target, tracker).await?);
    Ok(watch)
}

/// Reads the resource's runs and feeds them to the tracker, which keeps those
/// of the change and ignores what it has already seen. Keeps trying for a
/// while when no node can answer.
async fn catch_up(nodes: &Nodes, target: &ResourceRef, tracker: &mut Tracker) -> Result<Vec<Note>> {
    let request = HistoryRequest {
        kind: target.kind.clone(),
        name: target.name.clone(),
    };
    let (_, answer) = nodes
        .call_patiently(0, Patience::default(), |mut api| {
            let request = request.clone();
            async move { api.resources.history(request).await }
        })
        .await
        .with_context(|| format!("cannot read the history of {target}"))?;
    Ok(answer.runs.iter().flat_map(|run| tracker.run(run)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(state: &str, version: u64, working: bool, active_run_id: &str) -> Resource {
        Resource {
            kind: "app".into(),
            name: "web".into(),
            state: state.into(),
            version,
            working,
            active_run_id: active_run_id.into(),
            ..Resource::default()
        }
    }

    fn run(run_id: &str, index: u64, from: &str, to: &str, outcome: &str) -> Run {
        Run {
            run_id: run_id.into(),
            kind: "app".into(),
            name: "web".into(),
            event: "deploy".into(),
            from: from.into(),
            to: to.into(),
            outcome: RunOutcome::from_label(outcome).expect("an outcome") as i32,
            attempt: 1,
            node_id: 1,
            index,
            ..Run::default()
        }
    }

    fn event(event: Event) -> ResourceEvent {
        ResourceEvent { event: Some(event) }
    }

    fn logs(run_id: &str, first_line: u64, lines: &[&str]) -> LogLines {
        LogLines {
            run_id: run_id.into(),
            first_line,
            lines: lines.iter().map(|l| l.to_string()).collect(),
            ..LogLines::default()
        }
    }

    /// A `do` moving ready -> deploying (work) -> ready, its run at index 11.
    fn deploy_change() -> ResourceChange {
        ResourceChange {
            resource: Some(resource("deploying", 10, true, "")),
            run: None,
            index: 10,
            deleted: false,
        }
    }

    #[test]
    fn a_successful_chain_is_done_once_the_resource_rests() {
        let mut tracker = Tracker::new(10);
        // The watch's first message: the resource before the change.
        assert!(tracker
            .event(&event(Event::Resource(resource("ready", 5, false, ""))))
            .is_empty());
        let notes = tracker.change(&deploy_change());
        assert_eq!(
            notes,
            vec![Note::State {
                from: "ready".into(),
                to: "deploying".into()
            }]
        );
        assert_eq!(tracker.status(), Status::Waiting);
        let started = run("r1", 11, "ready", "deploying", "running");
        assert_eq!(
            tracker.event(&event(Event::Run(started.clone()))),
            vec![Note::RunStarted(started.clone())]
        );
        tracker.event(&event(Event::Resource(resource("deploying", 11, true, "r1"))));
        assert_eq!(tracker.status(), Status::Waiting);
        let mut finished = run("r1", 11, "ready", "deploying", "succeeded");
        finished.finished_at = Some(opsd_proto::time::timestamp(2_000));
        finished.duration = Some(opsd_proto::time::duration(1_500));
        assert_eq!(
            tracker.event(&event(Event::Run(finished.clone()))),
            vec![Note::RunEnded(finished.clone())]
        );
        let notes = tracker.event(&event(Event::Resource(resource("ready", 12, false, ""))));
        assert_eq!(
            notes,
            vec![Note::State {
                from: "deploying".into(),
                to: "ready".into()
            }]
        );
        assert_eq!(tracker.status(), Status::Done);
        assert!(tracker.failures().is_empty());
        assert_eq!(tracker.runs(), &[finished]);
    }

    #[test]
    fn the_resource_before_the_change_does_not_end_the_wait() {
        let mut tracker = Tracker::new(10);
        tracker.change(&deploy_change());
        // A stale (older) resource event arriving late is ignored.
        assert!(tracker
            .event(&event(Event::Resource(resource("ready", 5, false, ""))))
            .is_empty());
        assert_eq!(tracker.status(), Status::Waiting);
    }

    #[test]
    fn a_change_that_starts_no_run_is_done_at_once() {
        let mut tracker = Tracker::new(7);
        tracker.change(&ResourceChange {
            resource: Some(resource("paused", 7, false, "")),
            run: None,
            index: 7,
            deleted: false,
        });
        assert_eq!(tracker.status(), Status::Done);
        assert!(tracker.runs().is_empty());
    }

    #[test]
    fn a_failed_run_fails_the_wait_and_is_named() {
        let mut tracker = Tracker::new(10);
        tracker.change(&deploy_change());
        let mut failed = run("r1", 11, "ready", "deploying", "failed");
        failed.error = "exit status 3".into();
        tracker.event(&event(Event::Run(failed)));
        tracker.event(&event(Event::Resource(resource("broken", 12, false, ""))));
        assert_eq!(tracker.status(), Status::Done);
        let failures = tracker.failures();
        assert_eq!(
            failure_message("app/web", &failures),
            "app/web: run r1 (ready -> deploying) failed: exit status 3"
        );
    }

    #[test]
    fn several_failures_are_listed() {
        let a = run("r1", 11, "a", "b", "failed");
        let b = run("r2", 12, "b", "c", "cancelled");
        assert_eq!(
            failure_message("app/web", &[&a, &b]),
            "app/web: 2 runs did not succeed:\n  run r1 (a -> b) failed\n  run r2 (b -> c) cancelled"
        );
    }

    #[test]
    fn rest_before_the_final_run_event_is_settling() {
        let mut tracker = Tracker::new(10);
        tracker.change(&deploy_change());
        tracker.event(&event(Event::Run(run("r1", 11, "ready", "deploying", "running"))));
        tracker.event(&event(Event::Resource(resource("ready", 12, false, ""))));
        assert_eq!(tracker.status(), Status::Settling);
        tracker.run(&run("r1", 11, "ready", "deploying", "succeeded"));
        assert_eq!(tracker.status(), Status::Done);
    }

    #[test]
    fn runs_before_the_change_are_not_waited_for() {
        let mut tracker = Tracker::new(10);
        tracker.change(&deploy_change());
        assert!(tracker.run(&run("old", 3, "x", "y", "failed")).is_empty());
        tracker.run(&run("r1", 11, "ready", "deploying", "succeeded"));
        tracker.resource(&resource("ready", 12, false, ""));
        assert_eq!(tracker.status(), Status::Done);
        assert!(tracker.failures().is_empty());
    }

    #[test]
    fn runs_numbered_before_the_changes_own_are_not_waited_for() {
        // An entry may start several runs, so run numbers can be ahead of log
        // indexes: an older run (replayed by the history) may be numbered at or
        // after the change's index, but before the change's own run.
        let mut tracker = Tracker::new(10);
        tracker.change(&ResourceChange {
            resource: Some(resource("deploying", 10, true, "r14")),
            run: Some(run("r14", 14, "ready", "deploying", "running")),
            index: 10,
            deleted: false,
        });
        assert!(tracker.run(&run("r12", 12, "x", "y", "failed")).is_empty());
        tracker.run(&run("r14", 14, "ready", "deploying", "succeeded"));
        tracker.run(&run("r15", 15, "deploying", "ready", "succeeded"));
        tracker.resource(&resource("ready", 11, false, ""));
        assert_eq!(tracker.status(), Status::Done);
        assert_eq!(tracker.runs().len(), 2);
        assert!(tracker.failures().is_empty());
    }

    #[test]
    fn the_changes_own_run_counts_whatever_its_index() {
        let mut tracker = Tracker::new(10);
        let started = run("r1", 0, "pending", "pending", "running");
        tracker.change(&ResourceChange {
            resource: Some(resource("pending", 10, true, "r1")),
            run: Some(started),
            index: 10,
            deleted: false,
        });
        assert_eq!(tracker.runs().len(), 1);
        tracker.run(&run("r1", 0, "pending", "pending", "failed"));
        tracker.resource(&resource("failed", 11, false, ""));
        assert_eq!(tracker.failures().len(), 1);
    }

    #[test]
    fn replayed_run_events_change_nothing_and_takeovers_restart() {
        let mut tracker = Tracker::new(10);
        tracker.change(&deploy_change());
        let running = run("r1", 11, "ready", "deploying", "running");
        tracker.run(&running);
        let done = run("r1", 11, "ready", "deploying", "succeeded");
        assert_eq!(tracker.run(&done), vec![Note::RunEnded(done.clone())]);
        // The history after a reconnect repeats both: nothing changes.
        assert!(tracker.run(&running).is_empty());
        assert!(tracker.run(&done).is_empty());
        assert_eq!(tracker.runs()[0].outcome(), RunOutcome::Succeeded);

        // A run interrupted by a leader change and taken over by attempt 2.
        let mut tracker = Tracker::new(10);
        tracker.change(&deploy_change());
        tracker.run(&run("r1", 11, "ready", "deploying", "running"));
        let interrupted = run("r1", 11, "ready", "deploying", "interrupted");
        assert_eq!(tracker.run(&interrupted), vec![Note::RunEnded(interrupted)]);
        let mut retaken = run("r1", 11, "ready", "deploying", "running");
        retaken.attempt = 2;
        assert_eq!(tracker.run(&retaken), vec![Note::RunStarted(retaken.clone())]);
        let mut done = run("r1", 11, "ready", "deploying", "succeeded");
        done.attempt = 2;
        tracker.run(&done);
        tracker.resource(&resource("ready", 13, false, ""));
        assert_eq!(tracker.status(), Status::Done);
        assert!(tracker.failures().is_empty());
    }

    #[test]
    fn runs_are_kept_in_index_order_and_the_last_is_the_newest() {
        let mut tracker = Tracker::new(10);
        tracker.change(&deploy_change());
        tracker.run(&run("r2", 14, "building", "built", "succeeded"));
        tracker.run(&run("r1", 11, "pending", "building", "succeeded"));
        let ids: Vec<&str> = tracker.runs().iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["r1", "r2"]);
    }

    #[test]
    fn deletion_ends_the_wait() {
        let mut tracker = Tracker::new(10);
        tracker.change(&ResourceChange {
            resource: Some(resource("destroying", 10, true, "")),
            run: None,
            index: 10,
            deleted: false,
        });
        tracker.run(&run("r1", 11, "ready", "destroying", "succeeded"));
        assert_eq!(tracker.status(), Status::Waiting);
        let notes = tracker.event(&event(Event::Deleted(resource("destroyed", 12, false, ""))));
        assert_eq!(notes, vec![Note::Deleted]);
        assert_eq!(tracker.status(), Status::Done);
        assert!(tracker.is_deleted());

        let mut removed = Tracker::new(10);
        removed.change(&ResourceChange {
            resource: None,
            run: None,
            index: 10,
            deleted: true,
        });
        assert_eq!(removed.status(), Status::Done);
    }

    #[test]
    fn log_lines_are_shown_once_and_gaps_are_counted() {
        let mut tracker = Tracker::new(10);
        assert_eq!(
            tracker.log(&logs("r1", 0, &["a", "b"])),
            vec![Note::Log {
                run_id: "r1".into(),
                first: 0,
                lines: vec!["a".into(), "b".into()]
            }]
        );
        // Overlap (after a reconnect): only the new line.
        assert_eq!(
            tracker.log(&logs("r1", 1, &["b", "c"])),
            vec![Note::Log {
                run_id: "r1".into(),
                first: 2,
                lines: vec!["c".into()]
            }]
        );
        assert!(tracker.log(&logs("r1", 0, &["a"])).is_empty());
        // Lines written while nobody watched.
        assert_eq!(
            tracker.log(&logs("r1", 5, &["f"])),
            vec![
                Note::LogGap {
                    run_id: "r1".into(),
                    missing: 2
                },
                Note::Log {
                    run_id: "r1".into(),
                    first: 5,
                    lines: vec!["f".into()]
                }
            ]
        );
    }

    #[test]
    fn notes_read_as_progress_lines() {
        let state = Note::State {
            from: "ready".into(),
            to: "deploying".into(),
        };
        assert_eq!(state.text("app/web"), ["app/web: ready -> deploying"]);
        let started = Note::RunStarted(run("r1", 11, "ready", "deploying", "running"));
        assert_eq!(
            started.text("app/web"),
            ["app/web: run r1 started: ready -> deploying (event deploy, attempt 1, node 1)"]
        );
        let mut failed = run("r1", 11, "ready", "deploying", "failed");
        failed.finished_at = Some(opsd_proto::time::timestamp(5_000));
        failed.duration = Some(opsd_proto::time::duration(2_500));
        failed.error = "boom\n".into();
        assert_eq!(
            Note::RunEnded(failed).text("app/web"),
            ["app/web: run r1 failed after 2.5s (ready -> deploying): boom"]
        );
        let mut succeeded = run("r1", 11, "ready", "deploying", "succeeded");
        succeeded.finished_at = Some(opsd_proto::time::timestamp(5_000));
        succeeded.duration = Some(opsd_proto::time::duration(300));
        assert_eq!(
            Note::RunEnded(succeeded).text("app/web"),
            ["app/web: run r1 succeeded in 300ms (ready -> deploying)"]
        );
        let log = Note::Log {
            run_id: "r1".into(),
            first: 0,
            lines: vec!["one".into(), "two".into()],
        };
        assert_eq!(log.text("app/web"), ["[r1] one", "[r1] two"]);
        let gap = Note::LogGap {
            run_id: "r1".into(),
            missing: 1,
        };
        assert_eq!(gap.text("app/web"), ["[r1] (1 line not shown; see `opsctl logs r1`)"]);
    }
}
