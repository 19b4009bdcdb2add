//! `opsctl`, the command-line client of opsd: cluster status and membership,
//! the settings store, kinds, resources and the runs that change them. It
//! speaks the public gRPC API (`proto/opsd/v1`) to any node, trying the given
//! addresses in order until one answers.

mod cluster;
mod completion;
mod kind_file;
mod kinds;
mod render;
mod resources;
mod runs;
mod security;
mod services;
mod settings;
mod shell;
mod spec;
mod verify;
mod wait;

use std::io;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use opsd_client::{Credentials, NodeAddr, Nodes, Timeouts};

use crate::cluster::ClusterCommand;
use crate::completion::Shell;
use crate::kinds::KindsCommand;
use crate::render::{OutputFormat, Printer};
use crate::resources::{CreateArgs, DeleteArgs, DoArgs, GetArgs, LsArgs};
use crate::runs::{CancelArgs, HistoryArgs, LogsArgs, RunArgs, RunsArgs, StatsArgs};
use crate::security::{RolesCommand, TokensCommand, UsersCommand};
use crate::services::ResolveArgs;
use crate::settings::SettingsCommand;
use crate::shell::ShellArgs;
use crate::verify::{MachinesArgs, VerifyArgs};

/// The command line: global options, then one command.
#[derive(Debug, Parser)]
#[command(
    name = "opsctl",
    version,
    about = "Command-line client of the opsd operations daemon.",
    long_about = "Command-line client of the opsd operations daemon.\n\n\
        opsctl talks to any node of an opsd cluster over gRPC. Writes are \
        forwarded to the Raft leader by the node that receives them; reads are \
        linearizable unless --stale is given.\n\n\
        Resources (images, clusters, services, anything a kind file describes) \
        are state machines: `kinds apply` registers a kind, `create` makes a \
        resource of it, `do` sends it an event, and every work state it enters \
        is a run, recorded with who asked (the user of your token) and why \
        (`runs`, `history`, `logs`, `stats`).\n\n\
        Every request carries a token (`opsd1.ID.SECRET`), found in this \
        order: --token or OPSD_TOKEN; else --token-file or OPSD_TOKEN_FILE; \
        else ./opsd-data/admin.token if it exists (what `make run` leaves); \
        else none, and the node answers \"unauthenticated\". The node that \
        bootstraps a cluster writes its admin token to DATA_DIR/admin.token; \
        make narrower tokens with `opsctl tokens create`.",
    after_long_help = "Addresses: each request goes to the first address in --addr \
        that answers. opsctl moves on to the next address when a node cannot be \
        reached within 2 seconds or answers \"unavailable\" (no leader or no \
        quorum), and for a read also when a node gives no answer within 2 \
        seconds (a stopped node); if every address fails, the error lists each \
        one and what it did. The last address tried has 15 seconds to answer a \
        read. A write is sent to another node only if it certainly was not \
        applied: a node that accepted a write has 15 seconds to answer, after \
        which opsctl stops and says the write's outcome is unknown. A watch, once \
        started, may run forever.\n\n\
        Output: --output table (the default) is for people. --output json \
        prints exactly one JSON document on stdout (an object, or an array for \
        listings) and nothing else; `settings watch` and `logs` are the \
        exceptions and print one JSON object per line. --wait prints its \
        progress on stderr, so stdout still holds one document.\n\n\
        Exit codes: 0 on success, 1 when the request failed (the error is \
        printed on stderr as `error: MESSAGE (what the code means)`) or a run \
        waited for with --wait did not succeed, 2 for a usage error.\n\n\
        Environment:\n  OPSD_ADDR  default for --addr, e.g. \
        OPSD_ADDR=10.0.0.1:7700,10.0.0.2:7700\n  \
        OPSD_TOKEN  the token, as --token\n  \
        OPSD_TOKEN_FILE  a file holding the token, as --token-file\n  \
        OPSD_CA  default for --ca: the cluster's ca.pem (in every node's data \
        dir), which nodes' certificates are checked against\n\n\
        Examples:\n  \
        opsctl status\n  \
        opsctl whoami\n  \
        opsctl --addr 10.0.0.1:7700,10.0.0.2:7700 cluster members\n  \
        opsctl settings put db/url postgres://db:5432/app\n  \
        opsctl --output json settings ls db/\n  \
        opsctl settings watch db/\n  \
        opsctl kinds apply app.toml\n  \
        opsctl create app/web --set repo=git@example.com:web.git --set replicas=2 --wait\n  \
        opsctl create app/api -f api.toml --set image.tag=v7 --label team=core\n  \
        opsctl do app/web deploy --arg version=2 --reason \"release 2\" --wait\n  \
        opsctl get app/web\n  \
        opsctl runs app/web --outcome failed --since 2h\n  \
        run=$(opsctl do app/web deploy -q)\n  \
        opsctl cancel \"$run\"\n  \
        opsctl logs \"$run\" --follow\n  \
        opsctl history app/web\n  \
        opsctl stats --since 7d\n  \
        opsctl delete app/web --wait"
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

    /// The token to send (`opsd1.ID.SECRET`). Prefer OPSD_TOKEN or a token
    /// file: a command line is visible to other users of the host.
    #[arg(
        long,
        global = true,
        env = "OPSD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,

    /// A file holding the token (mode 0600); default ./opsd-data/admin.token
    /// when it exists.
    #[arg(long, global = true, env = "OPSD_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The cluster's CA certificate (its `ca.pem`, in every node's data
    /// dir): the node must prove itself with a certificate of it. Default:
    /// `./opsd-data/ca.pem` when that file exists, else plain connections
    /// (a cluster made before TLS).
    #[arg(long, global = true, env = "OPSD_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,

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
    /// and members (each as `cluster members` prints them).
    ///
    /// With --wait DURATION it keeps asking (every address in turn, a round
    /// every 200 ms) until a node answers and knows a leader, for scripts
    /// that have just started opsd. When the time is up, a node's answer
    /// without a leader is printed with a note on stderr; if no node answered
    /// at all, it fails naming every address and what each did.
    #[command(after_long_help = "Examples:\n  \
        opsctl status\n  \
        opsctl status --wait 10s")]
    Status {
        /// Keep trying this long for a node to answer, like 10s or 1m.
        #[arg(long, value_name = "DURATION", value_parser = spec::parse_since)]
        wait: Option<std::time::Duration>,
    },
    /// Show or change the cluster's membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Read, write and watch the replicated settings store.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Register and inspect kinds: the state machines resources follow.
    #[command(subcommand)]
    Kinds(KindsCommand),
    /// Create the resource KIND/NAME in its kind's initial state.
    ///
    /// The resource is KIND/NAME, as every command names it (`create KIND
    /// NAME`, in two words, works too). The spec is SPEC_FILE (JSON, or TOML), or {} without one, with every
    /// --set applied on top. If the initial state is a work state, its first
    /// run starts at once. Without --wait, prints that run (with --output
    /// json, one run object as `run` prints it; with -q, only its id), or the
    /// resource (as `get` prints it) if none started. With --wait, follows the resource until it
    /// rests in a stable state, printing state changes, runs and their log
    /// lines on stderr; then prints the runs waited for (with --output json,
    /// the last of them) and exits 0 only if every one succeeded.
    #[command(after_long_help = "Examples:\n  \
        opsctl create app/shop --set repo=git@example.com:shop.git --set replicas=2 --wait\n  \
        opsctl create app blog -f blog.json --set image.tag=v2 --label team=core --wait\n  \
        opsctl create image/base --set source=\"$PWD\" --set 'build=[\"ls -l\", \"echo built > BUILT\"]' \
        --reason \"new base image\" --wait")]
    Create(CreateArgs),
    /// List resources (of KIND, or of every kind), by kind and name.
    ///
    /// With --output json, an array of resources as `get` prints them.
    Ls(LsArgs),
    /// Show one resource: its state, version, labels, run in flight, spec and outputs.
    ///
    /// With --output json, an object with kind, name, state, version (the log
    /// index of its last change), spec and outputs (objects), labels,
    /// active_run_id (null if none), working, final, and created_at and
    /// updated_at (RFC 3339).
    ///
    /// A service (service/NAME) is followed by every node's load balancer
    /// for it: its endpoint (or why it does not listen) and, per backend
    /// machine, its health, open and total connections and bytes in and
    /// out; with --output json, in an extra field `balancers` (an array with
    /// one object per node, as `resolve` documents).
    Get(GetArgs),
    /// Show where a service is reached: the load balancer endpoint on every
    /// node, and the machines of its active cluster.
    ///
    /// Every node is asked for its own load balancer (1 s each): a node that
    /// does not answer, or cannot listen on the port (in use there), is
    /// listed with the error. With --watch, prints the endpoints again each
    /// time they change (a swap, a swap back, machines added or removed),
    /// so a client follows a swap without polling; the watch goes on through
    /// the next address if its node dies. With --output json, an object
    /// with name, state, port, active and previous (null if none),
    /// endpoints (node_id, address, listening, error) and backends (index,
    /// address); with --watch, one such object per line.
    #[command(after_long_help = "Examples:\n  \
        opsctl resolve service/web\n  \
        opsctl --output json resolve service/web | jq -r '.endpoints[].address'\n  \
        opsctl resolve service/web --watch")]
    Resolve(ResolveArgs),
    /// Delete a resource through its kind's destroy path.
    ///
    /// A resource in a final state is removed at once (its runs stay, for
    /// audit) and this prints `deleted KIND/NAME` (with --output json,
    /// {"deleted": true, "kind": ..., "name": ...}). Otherwise the `destroy`
    /// event is done to it and this prints the run it started, like `do`.
    /// With --wait, follows the resource until it is gone or rests, like
    /// `do --wait`.
    #[command(after_long_help = "Examples:\n  \
        opsctl delete app/blog --reason \"replaced by shop\"\n  \
        opsctl delete app/web --wait")]
    Delete(DeleteArgs),
    /// Do EVENT to a resource, moving it to the state its current state
    /// names for that event.
    ///
    /// Refused, listing the events the state takes, if it does not take this
    /// one, or naming the run in flight if one is. Without --wait, prints the
    /// run the event started (with --output json, one run object as `run`
    /// prints it; with -q, only its id), or the resource if none started. With --wait, follows the
    /// resource until it rests in a stable state, printing state changes
    /// (`app/web: ready -> deploying`), runs with their outcome and error, and
    /// every log line (`[RUN_ID] line`) on stderr; then prints the runs waited
    /// for (with --output json, the last of them) and exits 0 only if every
    /// one succeeded, else names the runs that did not. If the node serving
    /// the wait dies, the wait goes on through the next address.
    #[command(after_long_help = "Examples:\n  \
        opsctl do app/shop deploy --arg version=2 --reason \"release 2\" --wait\n  \
        opsctl do image/base rebuild\n  \
        opsctl --output json do app/shop deploy --wait > run.json")]
    Do(DoArgs),
    /// Run a resource's acceptance checks again, now, and show the results
    /// per machine.
    ///
    /// Does the `verify` event (a cluster that is running or failed takes
    /// it; it enters `verifying`, runs every check of its spec.checks on
    /// every machine, and lands in `running` if all passed, else in `failed`
    /// with its machines kept), waits for the resource to rest showing
    /// progress on stderr like `do --wait`, then prints one table per
    /// machine: MACHINE ADDRESS CHECK RESULT ATTEMPTS TIME DETAIL. Exits 1
    /// if any check failed. With --output json, the verify run as `run`
    /// prints it; its outputs.checks has passed and results (machine,
    /// address, check, passed, attempts, detail, ms).
    #[command(after_long_help = "Examples:\n  \
        opsctl create image/site --set source=\"$PWD\" \
        --set start='exec python3 -m http.server \"$PORT\" --bind \"$OPSD_HOST\"' --wait\n  \
        opsctl create cluster/web --set image=site --set size=2 \
        --set 'checks=[{\"type\": \"http\", \"path\": \"/\", \"retries\": 5}, {\"type\": \"tcp\"}]' --wait\n  \
        opsctl verify cluster/web --reason \"after the network change\"\n  \
        opsctl --output json verify cluster/web | jq .outputs.checks.passed")]
    Verify(VerifyArgs),
    /// List a resource's machines: address, node, state and the verdict of
    /// the last checks run on each.
    ///
    /// Read from the resource's outputs: STATE is running when a process is
    /// recorded for the machine, else stopped; CHECKS is passed, failed
    /// (naming the checks that failed) or - when no check ran on it. A
    /// failed cluster keeps its machines until it is destroyed. With
    /// --output json, an array with one object per machine: machine,
    /// address, node, state, pid, port, dir, log, checks (passed, failed or
    /// null) and results (its check results, as `verify` has them).
    #[command(after_long_help = "Examples:\n  \
        opsctl machines cluster/web\n  \
        opsctl --output json machines cluster/web | jq -r '.[].address'\n  \
        opsctl delete cluster/web --wait")]
    Machines(MachinesArgs),
    /// List runs, newest first: of one resource, or of every resource.
    ///
    /// With --output json, an array of runs as `run` prints them.
    #[command(after_long_help = "Examples:\n  \
        opsctl runs\n  \
        opsctl runs app/shop --outcome failed --since 7d\n  \
        opsctl runs --outcome running --limit 10")]
    Runs(RunsArgs),
    /// Show one run in full: resource, event, transition, outcome, attempt,
    /// node, who and why, times, args, outputs and error.
    ///
    /// With --output json, an object with run_id, kind, name, event, from,
    /// to, outcome (running, succeeded, failed, cancelled or interrupted),
    /// attempt, node_id, principal, reason, source (api, schedule or
    /// recovery), args, index, started_at, finished_at (RFC 3339; null while
    /// running), duration_ms (null while running), error (null if none),
    /// outputs (an object) and cancel_requested.
    Run(RunArgs),
    /// Print a run's log; with --follow, keep printing new lines until the run ends.
    ///
    /// Lines are printed as they are. With --output json, each line is one
    /// JSON object {"run_id", "line_no" (0-based), "line"} on its own line:
    /// like `settings watch`, a stream of JSON documents rather than one.
    /// Without --follow (or once the run ended) the whole log is printed, from
    /// the node that ran the step; if that node or its file is gone, the
    /// replicated lines only, and a note on stderr says what is missing.
    /// While the run runs, --follow prints the replicated lines: a bounded
    /// tail, with a line "[opsd: N lines (X MiB) not replicated; the whole log
    /// is on node K]" where lines were left out. Ctrl-C stops following
    /// (exit code 0).
    #[command(after_long_help = "Examples:\n  \
        run=$(opsctl do app/shop deploy -q)\n  \
        opsctl logs \"$run\" --follow\n  \
        opsctl logs \"$run\"\n  \
        opsctl --output json logs \"$run\" | jq -r .line")]
    Logs(LogsArgs),
    /// Ask a running run to stop, and print it.
    ///
    /// The step's cancellation fires; the run ends `cancelled` and the
    /// resource moves to its state's cancel target. Refused if the run already
    /// ended. With --output json, the run object as `run` prints it.
    #[command(after_long_help = "Examples:\n  \
        run=$(opsctl do app/shop deploy -q)\n  \
        opsctl cancel \"$run\" --reason \"wrong version\"")]
    Cancel(CancelArgs),
    /// List one resource's runs, oldest first: its audit trail.
    ///
    /// With --output json, an array of runs as `run` prints them.
    #[command(after_long_help = "Examples:\n  \
        opsctl history app/shop\n  \
        opsctl --output json history app/shop > shop-history.json")]
    History(HistoryArgs),
    /// Aggregate finished runs per kind and transition: counts by outcome,
    /// durations of successful runs (mean, p50, p95, max) and the mean
    /// duration of failed ones.
    ///
    /// With --output json, an array with one object per kind and transition:
    /// kind, from, to, count, succeeded, failed, cancelled, interrupted,
    /// mean_ms, p50_ms, p95_ms, max_ms and fail_mean_ms.
    #[command(after_long_help = "Examples:\n  \
        opsctl stats --since 7d\n  \
        opsctl --output json stats --kind app")]
    Stats(StatsArgs),
    /// Open a shell on one of a resource's machines, or run CMD there.
    ///
    /// Takes machine N (--machine, 0 by default) from the resource's
    /// outputs.machines. A machine of a local cluster is entered on this
    /// host: $SHELL (else /bin/sh) runs interactively, or CMD ARGS when given
    /// after `--`, in the machine's directory and with the variables the
    /// machine gets (its settings in scope, then the cluster's spec.env, then
    /// PORT, OPSD_CLUSTER and OPSD_MACHINE, as of now) on top of your own
    /// environment. The exit code is the shell's or CMD's (128 + N if
    /// signal N ended it); Ctrl-C goes to it, not to opsctl. Fails, exit
    /// code 1, if the resource has no machines recorded, if there is no
    /// machine N (naming the ones there are), or if the machine's directory
    /// is not on this host (naming the node that runs it: run opsctl shell
    /// there).
    #[command(after_long_help = "Examples:\n  \
        opsctl create image/box --set source=\"$PWD\" --set start='exec python3 -m http.server \"$PORT\" --bind \"$OPSD_HOST\"' --wait\n  \
        opsctl create cluster/box --set image=box --set size=2 --wait\n  \
        opsctl shell cluster/box\n  \
        opsctl shell cluster/box --machine 1 -- sh -c 'pwd; ls; echo \"port $PORT\"'\n  \
        opsctl delete cluster/box --wait")]
    Shell(ShellArgs),
    /// Manage roles: what users may do (needs admin:security).
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Manage users: who may call the cluster (needs admin:security).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Make, list and revoke tokens (needs admin:security).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Show who the token acts as: its user, roles, rules and expiry.
    ///
    /// With --output json, an object with user, token_id, roles, rules and
    /// expires_at (null: never).
    Whoami,
    /// Print a completion script for SHELL on stdout.
    ///
    /// Load it in the current shell, or install it where the shell looks for
    /// completions. Needs no running opsd.
    #[command(after_long_help = "Examples:\n  \
        source <(opsctl completion bash)\n  \
        opsctl completion zsh > ~/.zfunc/_opsctl    # with fpath=(~/.zfunc $fpath) in ~/.zshrc\n  \
        opsctl completion fish > ~/.config/fish/completions/opsctl.fish")]
    Completion {
        /// The shell to print completions for.
        #[arg(value_enum)]
        shell: Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`opsctl settings ls | head`):
        // nothing left to say to anyone.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command on a single-threaded runtime, answering the exit code
/// (`shell`'s is its command's): opsctl makes one request
/// at a time (a wait reads one stream and, when it breaks, makes the calls
/// that re-sync it in turn).
fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Completion { shell } = cli.command {
        return completion::print(shell, &mut io::stdout().lock())
            .context("printing completions")
            .map(|()| ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let wait_for_files = match &cli.command {
        Command::Status { wait } => *wait,
        _ => None,
    };
    // The CA beside the token file, when a token file is given.
    let beside = cli
        .token_file
        .as_deref()
        .and_then(|f| f.parent())
        .map(|d| d.join("ca.pem"));
    // `status --wait` also waits for a token file a node just started has
    // not written yet.
    if let (Some(wait), Some(file)) = (wait_for_files, cli.token_file.as_deref()) {
        let deadline = std::time::Instant::now() + wait;
        while !file.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let mut credentials = Credentials::anonymous();
    if let Some(token) = security::find_token(cli.token, cli.token_file)? {
        credentials = credentials.with_token(&token).map_err(|e| anyhow::anyhow!(e))?;
    }
    if let Some(pem) = ca_file(cli.ca.as_deref(), beside.as_deref(), wait_for_files)? {
        credentials = credentials.with_ca(pem);
    }
    let nodes = Nodes::new(cli.addr, Timeouts::default(), credentials);
    let printer = Printer::new(cli.output);
    runtime.block_on(async {
        let done = match cli.command {
            Command::Status { wait } => cluster::status(&nodes, wait, printer).await,
            Command::Cluster(command) => cluster::run(command, &nodes, printer).await,
            Command::Settings(command) => settings::run(command, &nodes, printer).await,
            Command::Kinds(command) => kinds::run(command, &nodes, printer).await,
            Command::Create(args) => resources::create(args, &nodes, printer).await,
            Command::Ls(args) => resources::ls(args, &nodes, printer).await,
            Command::Get(args) => resources::get(args, &nodes, printer).await,
            Command::Resolve(args) => services::resolve(args, &nodes, cli.output).await,
            Command::Delete(args) => resources::delete(args, &nodes, printer).await,
            Command::Do(args) => resources::event(args, &nodes, printer).await,
            Command::Verify(args) => verify::verify(args, &nodes, printer).await,
            Command::Machines(args) => verify::machines(args, &nodes, printer).await,
            Command::Runs(args) => runs::runs(args, &nodes, printer).await,
            Command::Run(args) => runs::run(args, &nodes, printer).await,
            Command::Logs(args) => runs::logs(args, &nodes, printer).await,
            Command::Cancel(args) => runs::cancel(args, &nodes, printer).await,
            Command::History(args) => runs::history(args, &nodes, printer).await,
            Command::Stats(args) => runs::stats(args, &nodes, printer).await,
            Command::Shell(args) => return shell::run(args, &nodes).await,
            Command::Users(command) => security::users(command, &nodes, printer).await,
            Command::Roles(command) => security::roles(command, &nodes, printer).await,
            Command::Tokens(command) => security::tokens(command, &nodes, printer).await,
            Command::Whoami => security::whoami(&nodes, printer).await,
            Command::Completion { .. } => Ok(()),
        };
        done.map(|()| ExitCode::SUCCESS)
    })
}

/// The data dir a local single-node setup uses by default, where its
/// `ca.pem` is found when --ca is not given.
const DEFAULT_DATA_DIR: &str = "opsd-data";

/// The cluster CA to trust: --ca/OPSD_CA (which must be readable), else
/// `ca.pem` beside the token file, else `./opsd-data/ca.pem` if it exists, else none. `status --wait` waits that
/// long for a --ca file that is not there yet (a node just started writes
/// it when it bootstraps).
fn ca_file(
    flag: Option<&std::path::Path>,
    beside_token: Option<&std::path::Path>,
    wait: Option<std::time::Duration>,
) -> Result<Option<Vec<u8>>> {
    if let Some(path) = flag.filter(|p| !p.as_os_str().is_empty()) {
        let deadline = std::time::Instant::now() + wait.unwrap_or_default();
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let pem = std::fs::read(path).with_context(|| format!("--ca {}", path.display()))?;
        if !pem.windows(17).any(|w| w == b"BEGIN CERTIFICATE") {
            anyhow::bail!(
                "--ca {}: not a PEM certificate (expected the cluster's ca.pem)",
                path.display()
            );
        }
        return Ok(Some(pem));
    }
    if let Some(pem) = beside_token.and_then(|path| std::fs::read(path).ok()) {
        return Ok(Some(pem));
    }
    let local = std::path::Path::new(DEFAULT_DATA_DIR).join("ca.pem");
    Ok(std::fs::read(local).ok())
}

/// True when printing failed because stdout was closed.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
