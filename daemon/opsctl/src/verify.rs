//! `opsctl verify` and `opsctl machines`: a resource's acceptance checks run
//! again on demand, and the machines it runs with their last check results
//! (docs/services.md, "Acceptance checks").

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use opsd_client::Nodes;
use opsd_proto::v1::{DoRequest, RunOutcome};

use crate::render::Printer;
use crate::spec::ResourceRef;
use crate::wait;

/// The event that runs a resource's checks again, and the state it enters.
const VERIFY_EVENT: &str = "verify";

/// `opsctl verify KIND/NAME`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The resource, as KIND/NAME: one whose state takes the `verify` event
    /// (a cluster that is running or failed).
    #[arg(value_name = "KIND/NAME", value_parser = ResourceRef::parse)]
    target: ResourceRef,
    /// Why: recorded on the verify run.
    #[arg(long, value_name = "TEXT", default_value = "", hide_default_value = true)]
    reason: String,
}

/// `opsctl machines KIND/NAME`.
#[derive(Debug, Args)]
pub struct MachinesArgs {
    /// The resource, as KIND/NAME (a cluster).
    #[arg(value_name = "KIND/NAME", value_parser = ResourceRef::parse)]
    target: ResourceRef,
    /// Read the answering node's state without confirming with the leader:
    /// faster and works without quorum, but may miss the latest changes.
    #[arg(long)]
    stale: bool,
}

/// `opsctl verify`: does `verify` to the resource, waits for it to rest
/// (progress on stderr), and prints the results of the verify run; fails
/// unless every check passed on every machine.
pub async fn verify(args: VerifyArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let target = args.target;
    let request = DoRequest {
        kind: target.kind.clone(),
        name: target.name.clone(),
        event: VERIFY_EVENT.into(),
        args: Default::default(),
        reason: args.reason,
    };
    let opened = wait::watch_before_change(nodes, &target).await?;
    let change = nodes
        .write_with(&request, |mut api, r| async move { api.resources.r#do(r).await })
        .await
        .with_context(|| format!("cannot verify {target}"))?;
    let tracker = wait::follow_change(nodes, &target, &change, Some(opened)).await?;
    // The run that ran the checks: the last one with results, else the last.
    let runs = tracker.runs();
    let run = runs
        .iter()
        .rev()
        .find(|r| !crate::render::check_results(&opsd_proto::json::struct_value(r.outputs.as_ref())).is_empty())
        .or_else(|| runs.last())
        .ok_or_else(|| anyhow!("{target}: the verify event started no run"))?;
    printer.verify_run(run)?;
    let failures = tracker.failures();
    if !failures.is_empty() {
        bail!("{}", wait::failure_message(&target.to_string(), &failures));
    }
    if run.outcome() != RunOutcome::Succeeded {
        bail!("{target}: the verify run {} did not succeed", run.run_id);
    }
    Ok(())
}

/// `opsctl machines`: the machines recorded in the resource's outputs.
pub async fn machines(args: MachinesArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let resource = crate::resources::fetch(&args.target, args.stale, nodes).await?;
    printer.machines(&resource)?;
    Ok(())
}
