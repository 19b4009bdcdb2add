//! `opsctl runs`, `run`, `logs`, `cancel`, `history` and `stats`: the audit
//! trail of runs, their logs, and analytics over them.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use opsd_client::{describe_status, is_stream_break, CallError, Nodes, Patience};
use opsd_proto::time;
use opsd_proto::v1::{
    CancelRequest, GetRunRequest, HistoryRequest, ListRunsRequest, LogsRequest, RunOutcome, StatsRequest,
};

use crate::render::Printer;
use crate::spec::{self, ResourceRef};

/// How many times in a row a log stream may break before `logs` gives up.
const MAX_BREAKS: u32 = 10;

/// The outcome of a run, for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Outcome {
    /// Still executing.
    Running,
    /// Ended well.
    Succeeded,
    /// The step failed.
    Failed,
    /// Stopped by `opsctl cancel`.
    Cancelled,
    /// Its node went away; another attempt may have taken it over.
    Interrupted,
}

impl Outcome {
    /// The outcome as the API has it.
    fn proto(self) -> RunOutcome {
        match self {
            Outcome::Running => RunOutcome::Running,
            Outcome::Succeeded => RunOutcome::Succeeded,
            Outcome::Failed => RunOutcome::Failed,
            Outcome::Cancelled => RunOutcome::Cancelled,
            Outcome::Interrupted => RunOutcome::Interrupted,
        }
    }
}

/// `opsctl runs [KIND/NAME]`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only this resource's runs, as KIND/NAME (every resource's by default).
    #[arg(value_name = "KIND/NAME", value_parser = ResourceRef::parse)]
    target: Option<ResourceRef>,
    /// Only runs with this outcome.
    #[arg(long, value_enum, value_name = "OUTCOME")]
    outcome: Option<Outcome>,
    /// Only runs started within this long before now, like 10m, 2h or 7d.
    #[arg(long, value_name = "DURATION", value_parser = spec::parse_since)]
    since: Option<Duration>,
    /// At most N runs (the server's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
}

/// `opsctl run RUN_ID`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The run's id, as `opsctl runs` shows it.
    #[arg(value_name = "RUN_ID")]
    run_id: String,
}

/// `opsctl logs RUN_ID`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run's id, as `opsctl runs` shows it.
    #[arg(value_name = "RUN_ID")]
    run_id: String,
    /// Keep printing new lines as the run writes them, until it ends (or
    /// Ctrl-C).
    #[arg(long, short = 'f')]
    follow: bool,
}

/// `opsctl cancel RUN_ID`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run's id, as `opsctl runs` shows it.
    #[arg(value_name = "RUN_ID")]
    run_id: String,
    /// Why: recorded with the cancellation.
    #[arg(long, value_name = "TEXT", default_value = "", hide_default_value = true)]
    reason: String,
}

/// `opsctl history KIND/NAME`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The resource, as KIND/NAME.
    #[arg(value_name = "KIND/NAME", value_parser = ResourceRef::parse)]
    target: ResourceRef,
}

/// `opsctl stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this kind's transitions (every kind by default).
    #[arg(long, value_name = "KIND", default_value = "", hide_default_value = true)]
    kind: String,
    /// Only runs finished within this long before now, like 10m, 2h or 7d.
    #[arg(long, value_name = "DURATION", value_parser = spec::parse_since)]
    since: Option<Duration>,
}

/// `opsctl runs`: runs, newest first.
pub async fn runs(args: RunsArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let (kind, name) = args.target.map(|t| (t.kind, t.name)).unwrap_or_default();
    let request = ListRunsRequest {
        kind,
        name,
        outcome: args.outcome.map_or(RunOutcome::Unspecified, Outcome::proto) as i32,
        since: args.since.map(|since| time::duration(spec::millis(since))),
        limit: args.limit.unwrap_or(0),
    };
    let answer = nodes
        .call_with(&request, |mut api, r| async move { api.resources.list_runs(r).await })
        .await?;
    printer.runs(&answer.runs)?;
    Ok(())
}

/// `opsctl run`: one run in full.
pub async fn run(args: RunArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let request = GetRunRequest { run_id: args.run_id };
    let run = nodes
        .call_with(&request, |mut api, r| async move { api.resources.get_run(r).await })
        .await?;
    printer.run(&run)?;
    Ok(())
}

/// `opsctl cancel`: asks a running run to stop and prints it.
pub async fn cancel(args: CancelArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let request = CancelRequest {
        run_id: args.run_id,
        reason: args.reason,
    };
    let run = nodes
        .write_with(&request, |mut api, r| async move { api.resources.cancel(r).await })
        .await
        .with_context(|| format!("cannot cancel run {}", request.run_id))?;
    printer.run_summary(&run)?;
    Ok(())
}

/// `opsctl history`: one resource's runs, oldest first.
pub async fn history(args: HistoryArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let request = HistoryRequest {
        kind: args.target.kind,
        name: args.target.name,
    };
    let answer = nodes
        .call_with(&request, |mut api, r| async move { api.resources.history(r).await })
        .await?;
    printer.history(&answer.runs)?;
    Ok(())
}

/// `opsctl stats`: finished runs aggregated per kind and transition.
pub async fn stats(args: StatsArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let request = StatsRequest {
        kind: args.kind,
        since: args.since.map(|since| time::duration(spec::millis(since))),
    };
    let answer = nodes
        .call_with(&request, |mut api, r| async move { api.resources.stats(r).await })
        .await?;
    printer.stats(&answer.transitions)?;
    Ok(())
}

/// `opsctl logs`: prints a run's stored log and, with --follow, new lines
/// until the run ends. A followed stream that breaks (its node died) is
/// reopened through the next address, and lines already printed are not
/// printed again.
pub async fn logs(args: LogsArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let request = LogsRequest {
        run_id: args.run_id.clone(),
        follow: args.follow,
    };
    // The position of the next line to print; None until the first chunk.
    let mut next: Option<u64> = None;
    let mut dropped_noted = false;
    let mut breaks = 0;
    let mut first = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let (served, mut stream) = open_logs(nodes, first, &request).await?;
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                interrupted = &mut ctrl_c => {
                    interrupted.context("cannot listen for Ctrl-C")?;
                    return Ok(());
                }
            };
            let chunk = match message {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(()),
                Err(status) if args.follow && is_stream_break(&status) => {
                    breaks += 1;
                    if breaks > MAX_BREAKS {
                        return Err(CallError::Status(status))
                            .with_context(|| format!("the log stream of run {} keeps breaking", args.run_id));
                    }
                    eprintln!(
                        "note: the log stream through {} broke ({}); reconnecting",
                        nodes.addr(served),
                        describe_status(&status)
                    );
                    first = served + 1;
                    break;
                }
                Err(status) => {
                    return Err(CallError::Status(status))
                        .with_context(|| format!("the log stream of run {} ended", args.run_id))
                }
            };
            if chunk.dropped > 0 && !dropped_noted {
                dropped_noted = true;
                eprintln!(
                    "note: {} earlier line{} of run {} were dropped (the stored log is bounded)",
                    chunk.dropped,
                    if chunk.dropped == 1 { "" } else { "s" },
                    args.run_id
                );
            }
            if !chunk.note.is_empty() {
                eprintln!("note: {}", chunk.note);
            }
            let (skip, lines) = unseen_lines(next, chunk.first_line, &chunk.lines);
            if !lines.is_empty() {
                printer.log_lines(&args.run_id, chunk.first_line + skip, lines)?;
            }
            let end = chunk.first_line + chunk.lines.len() as u64;
            next = Some(next.map_or(end, |n| n.max(end)));
        }
    }
}

/// Opens a log stream from address position `first` on. Only a reopen
/// (`first` > 0) waits while no node can serve it: a first try that finds no
/// node fails at once, like every other command.
async fn open_logs(
    nodes: &Nodes,
    first: usize,
    request: &LogsRequest,
) -> Result<(usize, tonic::codec::Streaming<opsd_proto::v1::LogLines>)> {
    let patience = if first == 0 {
        Patience::NONE
    } else {
        Patience::default()
    };
    nodes
        .call_patiently(first, patience, |mut api| {
            let request = request.clone();
            async move { api.resources.logs(request).await }
        })
        .await
        .with_context(|| format!("cannot read the log of run {}", request.run_id))
}

/// Of a chunk of lines starting at position `first`, the ones not printed
/// yet when the next line to print is `next` (None: nothing printed yet), and
/// how many were skipped.
fn unseen_lines(next: Option<u64>, first: u64, lines: &[String]) -> (u64, &[String]) {
    let skip = next.map_or(0, |n| n.saturating_sub(first));
    let skip_index = usize::try_from(skip).unwrap_or(usize::MAX).min(lines.len());
    (skip_index as u64, &lines[skip_index..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn log_lines_already_printed_are_skipped_after_a_reconnect() {
        let chunk = lines(&["a", "b", "c"]);
        assert_eq!(unseen_lines(None, 4, &chunk), (0, &chunk[..]));
        assert_eq!(unseen_lines(Some(5), 4, &chunk), (1, &chunk[1..]));
        assert_eq!(unseen_lines(Some(9), 4, &chunk), (3, &chunk[3..]));
        assert_eq!(unseen_lines(Some(2), 4, &chunk), (0, &chunk[..]));
    }

    #[test]
    fn outcomes_are_named_as_the_api_names_them() {
        let outcomes: Vec<RunOutcome> = Outcome::value_variants().iter().map(|o| o.proto()).collect();
        assert_eq!(outcomes, RunOutcome::ALL);
        for outcome in Outcome::value_variants() {
            let possible = outcome.to_possible_value().map(|p| p.get_name().to_string());
            assert_eq!(possible.as_deref(), Some(outcome.proto().label()));
        }
    }
}
