//! `opsctl`, the command-line client of opsd: cluster status and membership,
//! and the settings store. It speaks the public gRPC API (`proto/opsd/v1`) to
//! any node, trying the given addresses in order until one answers.

mod client;
mod cluster;
mod render;
mod settings;

use std::io;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::client::{NodeAddr, Nodes};
use crate::cluster::ClusterCommand;
use crate::render::{OutputFormat, Printer};
use crate::settings::SettingsCommand;

/// The command line: global options, then one command.
#[derive(Debug, Parser)]
#[command(
    name = "opsctl",
    version,
    about = "Command-line client of the opsd operations daemon.",
    long_about = "Command-line client of the opsd operations daemon.\n\n\
        opsctl talks to any node of an opsd cluster over gRPC. Writes are \
        forwarded to the Raft leader by the node that receives them; reads are \
        linearizable unless --stale is given.",
    after_long_help = "Addresses: each request goes to the first address in --addr \
        that answers. opsctl moves on to the next address when a node cannot be \
        reached within 2 seconds or answers \"unavailable\" (no leader or no \
        quorum); if every address fails, the error lists each one and why. A \
        node that accepted a request must answer within 15 seconds (a watch \
        may then run forever).\n\n\
        Output: --output table (the default) is for people. --output json \
        prints exactly one JSON document on stdout (an object, or an array for \
        listings) and nothing else; `settings watch` is the one exception and \
        prints one JSON object per line.\n\n\
        Exit codes: 0 on success, 1 when the request failed (the error is \
        printed on stderr as `error: MESSAGE (what the code means)`), 2 for a \
        usage error.\n\n\
        Environment:\n  OPSD_ADDR  default for --addr, e.g. \
        OPSD_ADDR=10.0.0.1:7700,10.0.0.2:7700\n\n\
        Examples:\n  \
        opsctl status\n  \
        opsctl --addr 10.0.0.1:7700,10.0.0.2:7700 cluster members\n  \
        opsctl settings put db/url postgres://db:5432/app\n  \
        opsctl --output json settings ls db/\n  \
        opsctl settings watch db/"
)]
struct Cli {
    /// Client addresses of opsd nodes, comma-separated or repeated, tried in order.
    #[arg(
        long,
        global = true,
        env = "OPSD_ADDR",
        value_name = "HOST:PORT[,HOST:PORT...]",
        value_delimiter = ',',
        default_value = "127.0.0.1:7700",
        value_parser = NodeAddr::parse
    )]
    addr: Vec<NodeAddr>,

    /// How to print results: `table` for people, `json` for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,

    #[command(subcommand)]
    command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Show the answering node's view: its id and role, the leader, the Raft
    /// term and indexes, and the members.
    ///
    /// Answered by the node itself, never forwarded, so it works even when the
    /// cluster has no leader or quorum. With --output json, the object has
    /// node_id, cluster_id, leader_id, leader_addr, term, role,
    /// last_log_index, applied_index, snapshot_index, purged_index, version
    /// and members (each with id, addr, peer_addr, voter).
    Status,
    /// Show or change the cluster's membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Read, write and watch the replicated settings store.
    #[command(subcommand)]
    Settings(SettingsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`opsctl settings ls | head`):
        // nothing left to say to anyone.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command on a single-threaded runtime: opsctl makes one request
/// at a time.
fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let nodes = Nodes::new(cli.addr);
    let printer = Printer::new(cli.output);
    runtime.block_on(async {
        match cli.command {
            Command::Status => cluster::status(&nodes, printer).await,
            Command::Cluster(command) => cluster::run(command, &nodes, printer).await,
            Command::Settings(command) => settings::run(command, &nodes, printer).await,
        }
    })
}

/// True when printing failed because stdout was closed.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
