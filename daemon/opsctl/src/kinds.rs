//! `opsctl kinds ...`: the kinds of resources, built in or registered from
//! kind files.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use opsd_client::Nodes;
use opsd_proto::v1::{ApplyKindRequest, GetKindRequest, ListKindsRequest};

use crate::kind_file;
use crate::render::Printer;
use crate::spec::read_file_or_stdin;

/// Commands on kinds. A kind is a declarative state machine written in TOML
/// (`kind`, `initial`, `provider`, and one `[states.NAME]` table per state
/// with `work`, `next`, `fail`, `cancel`, `on`, `final`, `timeout`, `run`).
#[derive(Debug, Subcommand)]
pub enum KindsCommand {
    /// Register the kind in a TOML kind file, or update it, and print its
    /// name and version.
    ///
    /// FILE may be `-` for standard input. The whole file is sent, so every
    /// node keeps the same source (including the `run` scripts of an `exec`
    /// kind). A work state's `run = { file = "deploy.sh" }` names a script
    /// file, relative to the kind file (to the current directory for `-`):
    /// opsctl reads it (UTF-8, at most 128 KiB) and sends the script inline in
    /// its place, so `kinds show` prints it. A broken file is refused with the
    /// kind, state and key at fault; an update that removes a state some
    /// resource is in is refused too.
    /// With --output json, prints the kind as `kinds show` does: name,
    /// builtin, version, provider, initial, states, source.
    #[command(after_long_help = "Examples:\n  opsctl kinds apply app.toml\n  opsctl kinds apply - < app.toml")]
    Apply {
        /// The kind file (TOML), or `-` for standard input.
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// List the kinds: name, provider, initial state, states, built-in or not,
    /// version (the log index of the last apply, or of the built-in kinds'
    /// install; 0 for a built-in kind not installed yet).
    ///
    /// With --output json, an array of kinds, each as `kinds show` prints it.
    Ls,
    /// Show one kind and its source.
    ///
    /// With --output json, an object with name, builtin, version, provider,
    /// initial, states (sorted) and source (the kind file as applied).
    Show {
        /// The kind's name.
        #[arg(value_name = "KIND")]
        kind: String,
    },
}

/// Runs one `opsctl kinds ...` command.
pub async fn run(command: KindsCommand, nodes: &Nodes, printer: Printer) -> Result<()> {
    match command {
        KindsCommand::Apply { file } => {
            let source = read_file_or_stdin(&file).with_context(|| format!("cannot read kind file {file}"))?;
            // Script files are relative to the kind file (to the current
            // directory for standard input).
            let base = match Path::new(&file).parent() {
                Some(dir) if file != "-" && !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let source = kind_file::resolve_run_files(&source, &base)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("kind file {file} was not applied"))?;
            let request = ApplyKindRequest { source };
            let kind = nodes
                .write_with(&request, |mut api, r| async move { api.resources.apply_kind(r).await })
                .await
                .with_context(|| format!("kind file {file} was not applied"))?;
            printer.kind_applied(&kind)?;
        }
        KindsCommand::Ls => {
            let answer = nodes
                .call(|mut api| async move { api.resources.list_kinds(ListKindsRequest {}).await })
                .await?;
            printer.kinds(&answer.kinds)?;
        }
        KindsCommand::Show { kind } => {
            let request = GetKindRequest { name: kind };
            let kind = nodes
                .call_with(&request, |mut api, r| async move { api.resources.get_kind(r).await })
                .await?;
            printer.kind(&kind)?;
        }
    }
    Ok(())
}
