//! `opsctl create`, `ls`, `get`, `delete` and `do`: resources and the changes
//! that move them between the states of their kind.

use anyhow::{anyhow, Context, Result};
use clap::Args;
use opsd_client::Nodes;
use opsd_proto::json::to_struct;
use opsd_proto::v1::{
    CreateResourceRequest, DeleteResourceRequest, DoRequest, GetResourceRequest, ListResourcesRequest, ResourceChange,
};

use crate::render::Printer;
use crate::spec::{self, KeyValue, ResourceRef, SetArg};
use crate::wait;

/// `opsctl create KIND/NAME` (or `KIND NAME`).
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The new resource, as KIND/NAME like every other command takes it
    /// (`KIND NAME`, two words, works too). KIND is one of `opsctl kinds
    /// ls`; NAME is unique within the kind: 1 to 128 letters, digits, '-',
    /// '_' and '.'.
    #[arg(value_name = "KIND/NAME")]
    target: String,
    /// The name, when KIND and NAME are given as two words.
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// A file with the spec: a JSON object, or TOML (a file that is not JSON
    /// is read as TOML); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "SPEC_FILE")]
    file: Option<String>,
    /// Set KEY in the spec to VALUE, after the file is read, in order. A
    /// dotted KEY sets a key of a nested object (`--set image.tag=v2`),
    /// creating the objects on the way. VALUE is JSON when it is valid JSON
    /// (2, 1.5, true, null, [1,2], {"a":1}, "quoted") and a string otherwise
    /// (v2, abc); quote it to make a string of a number: --set 'tag="2"'.
    /// `do --arg` reads values by the same rule.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = SetArg::parse)]
    sets: Vec<SetArg>,
    /// Label the resource with KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = KeyValue::parse)]
    labels: Vec<KeyValue>,
    /// Why: recorded on the runs the creation starts.
    #[arg(long, value_name = "TEXT", default_value = "", hide_default_value = true)]
    reason: String,
    /// Wait until the resource rests in a stable state, showing progress on
    /// stderr; fail unless every run succeeded.
    #[arg(long)]
    wait: bool,
    /// Print only the id of the run started (nothing if none did), for
    /// scripts: `run=$(opsctl do app/web deploy -q)`.
    #[arg(short = 'q', long, conflicts_with = "wait")]
    quiet: bool,
}

/// `opsctl ls [KIND]`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only resources of this kind (all kinds by default).
    #[arg(value_name = "KIND", default_value = "", hide_default_value = true)]
    kind: String,
    /// Read the answering node's state without confirming with the leader:
    /// faster and works without quorum, but may miss the latest changes.
    #[arg(long)]
    stale: bool,
}

/// `opsctl get KIND/NAME`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The resource, as KIND/NAME.
    #[arg(value_name = "KIND/NAME", value_parser = ResourceRef::parse)]
    target: ResourceRef,
    /// Read the answering node's state without confirming with the leader:
    /// faster and works without quorum, but may miss the latest changes.
    #[arg(long)]
    stale: bool,
}

/// `opsctl delete KIND/NAME`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The resource, as KIND/NAME.
    #[arg(value_name = "KIND/NAME", value_parser = ResourceRef::parse)]
    target: ResourceRef,
    /// Why: recorded on the runs the deletion starts.
    #[arg(long, value_name = "TEXT", default_value = "", hide_default_value = true)]
    reason: String,
    /// Wait until the resource is gone or rests (e.g. `destroyed`), showing
    /// progress on stderr; fail unless every run succeeded.
    #[arg(long)]
    wait: bool,
    /// Print only the id of the run started (nothing if none did), for
    /// scripts: `run=$(opsctl do app/web deploy -q)`.
    #[arg(short = 'q', long, conflicts_with = "wait")]
    quiet: bool,
}

/// `opsctl do KIND/NAME EVENT`.
#[derive(Debug, Args)]
pub struct DoArgs {
    /// The resource, as KIND/NAME.
    #[arg(value_name = "KIND/NAME", value_parser = ResourceRef::parse)]
    target: ResourceRef,
    /// The event, one the resource's current state takes (`opsctl kinds show
    /// KIND` has the kind's source).
    #[arg(value_name = "EVENT")]
    event: String,
    /// An argument of the event, KEY=VALUE (repeatable); providers and
    /// scripts get them with the resource. VALUE follows the rule of `create
    /// --set`: JSON when it is valid JSON (2, true, null, [1,2], {"a":1},
    /// "quoted"), a string otherwise; --arg version=2 gives a script the
    /// number 2, --arg 'version="2"' the string "2". The run records the text
    /// as typed.
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = KeyValue::parse)]
    args: Vec<KeyValue>,
    /// Why: recorded on the runs the event starts.
    #[arg(long, value_name = "TEXT", default_value = "", hide_default_value = true)]
    reason: String,
    /// Wait until the resource rests in a stable state, showing progress on
    /// stderr; fail unless every run succeeded.
    #[arg(long)]
    wait: bool,
    /// Print only the id of the run started (nothing if none did), for
    /// scripts: `run=$(opsctl do app/web deploy -q)`.
    #[arg(short = 'q', long, conflicts_with = "wait")]
    quiet: bool,
}

/// `opsctl create`: builds the spec, creates the resource, and prints the run
/// the creation started (or waits for the resource to rest).
pub async fn create(args: CreateArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    // A usage error, like clap's own (exit code 2).
    let target = ResourceRef::from_words(&args.target, args.name.as_deref())
        .unwrap_or_else(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")).exit());
    let file_spec = match &args.file {
        Some(file) => {
            let text = spec::read_file_or_stdin(file).with_context(|| format!("cannot read spec file {file}"))?;
            Some(spec::parse_spec(&text, file).map_err(|e| anyhow!(e))?)
        }
        None => None,
    };
    let spec = spec::build_spec(file_spec, &args.sets).map_err(|e| anyhow!(e))?;
    let labels = spec::key_values(args.labels, "--label").map_err(|e| anyhow!(e))?;
    let request = CreateResourceRequest {
        kind: target.kind.clone(),
        name: target.name.clone(),
        spec: Some(to_struct(spec)),
        labels,
        reason: args.reason,
    };
    let change = nodes
        .write_with(&request, |mut api, r| async move { api.resources.create(r).await })
        .await
        .with_context(|| format!("cannot create {target}"))?;
    if args.wait {
        // The resource did not exist before: its watch opens now, and the
        // wait catches up with what its runs did meanwhile.
        wait::wait_for_change(nodes, &target, &change, None, printer).await
    } else {
        print_change(&target, &change, args.quiet, printer)
    }
}

/// `opsctl ls`: resources by kind and name.
pub async fn ls(args: LsArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let request = ListResourcesRequest {
        kind: args.kind,
        stale: args.stale,
    };
    let answer = nodes
        .call_with(&request, |mut api, r| async move { api.resources.list(r).await })
        .await?;
    printer.resources(&answer.resources)?;
    Ok(())
}

/// One resource, read through the first node that answers.
pub async fn fetch(target: &ResourceRef, stale: bool, nodes: &Nodes) -> Result<opsd_proto::v1::Resource> {
    let request = GetResourceRequest {
        kind: target.kind.clone(),
        name: target.name.clone(),
        stale,
    };
    Ok(nodes
        .call_with(&request, |mut api, r| async move { api.resources.get(r).await })
        .await?)
}

/// `opsctl get`: one resource.
pub async fn get(args: GetArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let resource = fetch(&args.target, args.stale, nodes).await?;
    if resource.kind == crate::services::SERVICE_KIND {
        return crate::services::get_service(&resource, nodes, args.stale, printer).await;
    }
    printer.resource(&resource)?;
    Ok(())
}

/// `opsctl delete`: removes a resource in a final state, or starts its
/// destroy path.
pub async fn delete(args: DeleteArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let target = args.target;
    let request = DeleteResourceRequest {
        kind: target.kind.clone(),
        name: target.name.clone(),
        reason: args.reason,
    };
    let send = async {
        nodes
            .write_with(&request, |mut api, r| async move { api.resources.delete(r).await })
            .await
            .with_context(|| format!("cannot delete {target}"))
    };
    change_existing(nodes, &target, args.wait, args.quiet, printer, send).await
}

/// `opsctl do`: does an event to a resource.
pub async fn event(args: DoArgs, nodes: &Nodes, printer: Printer) -> Result<()> {
    let target = args.target;
    let request = DoRequest {
        kind: target.kind.clone(),
        name: target.name.clone(),
        event: args.event,
        args: spec::key_values(args.args, "--arg").map_err(|e| anyhow!(e))?,
        reason: args.reason,
    };
    let send = async {
        nodes
            .write_with(&request, |mut api, r| async move { api.resources.r#do(r).await })
            .await
            .with_context(|| format!("cannot do {} to {target}", request.event))
    };
    change_existing(nodes, &target, args.wait, args.quiet, printer, send).await
}

/// Makes a change to an existing resource (`send`) and prints it, or with
/// `wait` waits for the resource to rest, watching from before the change so
/// that nothing it starts is missed.
async fn change_existing(
    nodes: &Nodes,
    target: &ResourceRef,
    wait: bool,
    quiet: bool,
    printer: Printer,
    send: impl std::future::Future<Output = Result<ResourceChange>>,
) -> Result<()> {
    if wait {
        let opened = wait::watch_before_change(nodes, target).await?;
        let change = send.await?;
        wait::wait_for_change(nodes, target, &change, Some(opened), printer).await
    } else {
        print_change(target, &send.await?, quiet, printer)
    }
}

/// What a change prints without --wait: the run it started; else the
/// resource after it; for a deletion that removed the resource, `deleted`.
/// `quiet`: only the id of the run started, if one did.
fn print_change(target: &ResourceRef, change: &ResourceChange, quiet: bool, printer: Printer) -> Result<()> {
    if quiet {
        if let Some(run) = &change.run {
            printer.run_id(run)?;
        }
    } else if change.deleted {
        printer.deleted(target)?;
    } else if let Some(run) = &change.run {
        printer.run_summary(run)?;
    } else if let Some(resource) = &change.resource {
        printer.resource(resource)?;
    } else {
        return Err(anyhow!(
            "the server answered the change to {target} with neither a run nor the resource"
        ));
    }
    Ok(())
}
