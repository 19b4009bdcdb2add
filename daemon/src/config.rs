//! opsd's settings: command-line flags, each also read from `OPSD_<FLAG>` in
//! the environment, over an optional TOML file (`--config`), over defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use serde::Deserialize;

use crate::ops::process::ExecUser;

/// The opsd operations daemon: one node of a replicated opsd cluster.
///
/// Started with an empty data dir and no --join, it bootstraps a single-node
/// cluster. With --join it asks an existing member to add it; it becomes a
/// voter automatically once it has caught up. With a data dir that has state
/// it resumes: a restarted node needs nothing but its data dir.
///
/// `opsd check` verifies a stopped node's data dir; `opsd recover --rejoin`
/// brings back a node whose state is damaged or lost, as a new member.
#[derive(Debug, Parser, Default)]
#[command(name = "opsd", version, about, long_about)]
pub struct Flags {
    /// Without a subcommand, opsd starts the node.
    #[command(subcommand)]
    pub command: Option<Subcommand>,
    /// A TOML file with any of the settings below (keys as the flags, with
    /// underscores: data_dir, listen, join = [..], ...). Flags and
    /// environment variables override it.
    #[arg(long, env = "OPSD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where the node keeps its state [default: ./opsd-data].
    #[arg(long, env = "OPSD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Client gRPC address, IP:PORT [default: 127.0.0.1:7700].
    #[arg(long, env = "OPSD_LISTEN", global = true, value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Raft peer address, IP:PORT [default: 127.0.0.1:7701].
    #[arg(long, env = "OPSD_PEER_LISTEN", global = true, value_parser = parse_listen)]
    pub peer_listen: Option<SocketAddr>,
    /// The host other nodes and clients reach this node at [default: the
    /// --listen host]. Required when listening on 0.0.0.0 or [::].
    #[arg(long, env = "OPSD_ADVERTISE", global = true)]
    pub advertise: Option<String>,
    /// The host this node's load balancer listens on, at each service's
    /// port [default: the --listen host]. Several nodes on one machine need
    /// one each (127.0.0.2, 127.0.0.3, ...: all of 127.0.0.0/8 is loopback).
    #[arg(long, env = "OPSD_LB_HOST", global = true)]
    pub lb_host: Option<String>,
    /// The client address (HOST:PORT) of any member to join through; may be
    /// repeated (or comma-separated) to try several. Ignored by a node whose
    /// data dir already belongs to that cluster.
    #[arg(long, env = "OPSD_JOIN", value_delimiter = ',', global = true)]
    pub join: Vec<String>,
    /// The join token a new node joins with (made on a member by `opsctl
    /// cluster join-token`; single use, 1 h by default): the node gets its
    /// certificate from the member it contacts, which it trusts by the
    /// cluster CA's fingerprint the token carries. Not needed by a node
    /// that already has its certificate (node.pem in its data dir).
    #[arg(long, env = "OPSD_JOIN_TOKEN", global = true, hide_env_values = true)]
    pub join_token: Option<String>,
    /// Log format: text or json [default: text]. RUST_LOG sets the level.
    #[arg(long, env = "OPSD_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Leader heartbeat interval in milliseconds [default: 50].
    #[arg(long, env = "OPSD_HEARTBEAT_MS", global = true)]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds; the maximum is 1.5 times it
    /// [default: 150]. At least three heartbeats. A voter that hears nothing
    /// from its leader for 1.5 times this and one to two heartbeats more
    /// stands for election: a dead leader is replaced about 0.3-0.4 s after
    /// its last heartbeat with the defaults, and a leader that stalls that
    /// long (an fsync, an overloaded machine) loses its leadership.
    #[arg(long, env = "OPSD_ELECTION_TIMEOUT_MS", global = true)]
    pub election_timeout_ms: Option<u64>,
    /// Build a snapshot and compact the log every this many applied entries
    /// [default: 10000].
    #[arg(long, env = "OPSD_SNAPSHOT_THRESHOLD", global = true)]
    pub snapshot_threshold: Option<u64>,
    /// Promote learners to voters while there are fewer voters than this
    /// [default: 5].
    #[arg(long, env = "OPSD_MAX_VOTERS", global = true)]
    pub max_voters: Option<usize>,
    /// How long a write or linearizable read waits for the cluster before
    /// failing, in milliseconds [default: 5000].
    #[arg(long, env = "OPSD_WRITE_TIMEOUT_MS", global = true)]
    pub write_timeout_ms: Option<u64>,
    /// How long to keep retrying unanswering --join addresses before giving
    /// up, in milliseconds [default: 60000].
    #[arg(long, env = "OPSD_JOIN_TIMEOUT_MS", global = true)]
    pub join_timeout_ms: Option<u64>,
    /// The free space, in MiB, the data dir's filesystem must keep: below it
    /// the node refuses writes (and to start) until there is room again; 0
    /// turns the check off [default: 64].
    #[arg(long, env = "OPSD_MIN_FREE_MB", global = true)]
    pub min_free_mb: Option<u64>,
    /// Run user commands (exec steps, exec checks, the local provider's
    /// build commands and machines) as this unprivileged user, rather than
    /// as opsd's own user: the advice for production. opsd must start as
    /// root to switch users; it refuses to start if the user does not exist.
    #[arg(long, env = "OPSD_EXEC_USER", global = true, value_name = "USER")]
    pub exec_user: Option<String>,
}

/// What opsd does instead of starting the node.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Subcommand {
    /// Verify a stopped node's data dir offline.
    ///
    /// Reads everything and writes nothing: node.json and its lock, every
    /// column family read whole with checksums, the Raft log's continuity,
    /// the vote and committed index, the log mark, the snapshot. Prints one
    /// line per check; exits 0 if all pass, 1 if any fails.
    Check,
    /// Bring back a node whose state is damaged or lost, as a new member.
    ///
    /// Removes its old id from the cluster, moves its state into
    /// DATA_DIR/damaged-TIME/, gives it a new id, then starts it and joins
    /// the cluster through --rejoin (the other flags as for a normal start,
    /// before or after `recover`).
    Recover {
        /// The client address (HOST:PORT) of any member; may be repeated (or
        /// comma-separated) to try several.
        #[arg(long, value_delimiter = ',', required = true)]
        rejoin: Vec<String>,
    },
}

/// The default of `--min-free-mb`.
pub const DEFAULT_MIN_FREE_MB: u64 = 64;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The settings a TOML config file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    peer_listen: Option<String>,
    advertise: Option<String>,
    lb_host: Option<String>,
    #[serde(default)]
    join: Vec<String>,
    join_token: Option<String>,
    log_format: Option<LogFormat>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    snapshot_threshold: Option<u64>,
    max_voters: Option<usize>,
    write_timeout_ms: Option<u64>,
    join_timeout_ms: Option<u64>,
    min_free_mb: Option<u64>,
    exec_user: Option<String>,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data dir.
    pub data_dir: PathBuf,
    /// Client address.
    pub listen: SocketAddr,
    /// Peer address.
    pub peer_listen: SocketAddr,
    /// Host others reach this node at.
    pub advertise: String,
    /// Host the load balancer listens on.
    pub lb_host: String,
    /// Members to join through.
    pub join: Vec<String>,
    /// The join token, parsed.
    pub join_token: Option<crate::pki::JoinToken>,
    /// Log format.
    pub log_format: LogFormat,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Minimum election timeout.
    pub election_timeout: Duration,
    /// Entries between snapshots.
    pub snapshot_threshold: u64,
    /// Voter limit.
    pub max_voters: usize,
    /// Write/read timeout.
    pub write_timeout: Duration,
    /// Join retry budget.
    pub join_timeout: Duration,
    /// Free space the data dir's filesystem must keep, in MiB (0: no floor).
    pub min_free_mb: u64,
    /// The user user commands run as (`--exec-user`); `None`: opsd's own.
    pub exec_user: Option<ExecUser>,
}

impl Config {
    /// Resolves flags over the config file over defaults, and checks them.
    pub fn resolve(flags: Flags) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
                toml::from_str::<FileConfig>(&text).with_context(|| format!("--config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let from_file = |key: &str, value: Option<String>| {
            value
                .map(|text| parse_listen(&text).map_err(|e| anyhow!("--config: {key}: {e}")))
                .transpose()
        };
        let listen = match flags.listen {
            Some(addr) => addr,
            None => from_file("listen", file.listen)?.unwrap_or(([127, 0, 0, 1], 7700).into()),
        };
        let peer_listen = match flags.peer_listen {
            Some(addr) => addr,
            None => from_file("peer_listen", file.peer_listen)?.unwrap_or(([127, 0, 0, 1], 7701).into()),
        };
        let advertise = match flags.advertise.or(file.advertise) {
            Some(host) => check_advertise(host.trim())?,
            None if listen.ip().is_unspecified() => {
                bail!(
                    "--advertise: required when --listen is {listen} (other nodes cannot reach an unspecified address)"
                )
            }
            None => listen.ip().to_string(),
        };
        let lb_host = match flags.lb_host.or(file.lb_host) {
            Some(host) => check_lb_host(host.trim())?,
            None => listen.ip().to_string(),
        };
        let join = if flags.join.is_empty() { file.join } else { flags.join };
        check_addrs("--join", &join)?;
        let join_token = flags
            .join_token
            .or(file.join_token)
            .filter(|t| !t.trim().is_empty())
            .map(|t| crate::pki::JoinToken::parse(&t).map_err(|e| anyhow!("--join-token: {e}")))
            .transpose()?;
        let heartbeat_ms = flags.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(50);
        let election_ms = flags.election_timeout_ms.or(file.election_timeout_ms).unwrap_or(150);
        if heartbeat_ms == 0 {
            bail!("--heartbeat-ms: must be at least 1");
        }
        if election_ms < heartbeat_ms * 3 {
            bail!(
                "--election-timeout-ms: {election_ms} is less than three heartbeats ({} ms)",
                heartbeat_ms * 3
            );
        }
        let snapshot_threshold = flags.snapshot_threshold.or(file.snapshot_threshold).unwrap_or(10_000);
        if snapshot_threshold < 2 {
            bail!("--snapshot-threshold: must be at least 2");
        }
        let max_voters = flags.max_voters.or(file.max_voters).unwrap_or(5);
        if max_voters == 0 {
            bail!("--max-voters: must be at least 1");
        }
        let write_timeout_ms = flags.write_timeout_ms.or(file.write_timeout_ms).unwrap_or(5000);
        if write_timeout_ms < 10 {
            bail!("--write-timeout-ms: must be at least 10");
        }
        let exec_user = match flags.exec_user.or(file.exec_user) {
            Some(name) if name.trim().is_empty() => bail!("--exec-user: must not be empty"),
            Some(name) => Some(ExecUser::resolve(name.trim()).map_err(|e| anyhow!(e))?),
            None => None,
        };
        Ok(Config {
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("opsd-data")),
            listen,
            peer_listen,
            advertise,
            lb_host,
            join,
            join_token,
            log_format: flags.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            heartbeat: Duration::from_millis(heartbeat_ms),
            election_timeout: Duration::from_millis(election_ms),
            snapshot_threshold,
            max_voters,
            write_timeout: Duration::from_millis(write_timeout_ms),
            join_timeout: Duration::from_millis(flags.join_timeout_ms.or(file.join_timeout_ms).unwrap_or(60_000)),
            min_free_mb: flags.min_free_mb.or(file.min_free_mb).unwrap_or(DEFAULT_MIN_FREE_MB),
            exec_user,
        })
    }
}

/// Checks that each of a flag's addresses is HOST:PORT.
pub fn check_addrs(flag: &str, addrs: &[String]) -> anyhow::Result<()> {
    for addr in addrs {
        opsd_client::NodeAddr::parse(addr).map_err(|e| anyhow!("{flag}: {e}"))?;
    }
    Ok(())
}

/// Parses a listening address, IP:PORT. The error says what is missing,
/// with an example, for a usage message.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port = text.trim_start_matches(':');
    if !port.is_empty() && port.parse::<u16>().is_ok() {
        return Err(format!(
            "{text:?} has no host, only a port (expected IP:PORT, e.g. 127.0.0.1:{port}, or 0.0.0.0:{port} for every interface)"
        ));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => Err(format!(
            "{text:?}: {host:?} is not an IP address (expected IP:PORT, e.g. 127.0.0.1:{port}; listen on an IP, and give a host name to others with --advertise)"
        )),
        _ => Err(format!("{text:?} is not IP:PORT (expected e.g. 127.0.0.1:7700)")),
    }
}

/// Checks `--advertise`: a host name or IP, without a port (the ports are
/// those of --listen and --peer-listen).
fn check_advertise(host: &str) -> anyhow::Result<String> {
    if host.is_empty() {
        bail!("--advertise: must not be empty");
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(bare.to_string());
    }
    if let Some((name, _)) = host.rsplit_once(':') {
        bail!(
            "--advertise: {host:?} has a port; give the host only (e.g. {name}): the ports are those of --listen and --peer-listen"
        );
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        bail!("--advertise: {host:?} is not a host name or IP address");
    }
    Ok(host.to_string())
}

/// Checks `--lb-host`: an IP address or a host name, without a port (each
/// service has its own).
fn check_lb_host(host: &str) -> anyhow::Result<String> {
    if host.is_empty() {
        bail!("--lb-host: must not be empty");
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(bare.to_string());
    }
    if host.contains(':') {
        bail!("--lb-host: {host:?} has a port; give the host only: each service listens on its own port");
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        bail!("--lb-host: {host:?} is not a host name or IP address");
    }
    Ok(host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        Config::resolve(Flags::try_parse_from(
            std::iter::once("opsd").chain(args.iter().copied()),
        )?)
    }

    #[test]
    fn a_join_token_is_checked_when_parsed() {
        let token = format!("opsdjoin1.{}.{}.{}", "0".repeat(16), "a".repeat(64), "b".repeat(64));
        let c = parse(&["--join", "a:1", "--join-token", &token]).unwrap();
        assert_eq!(c.join_token.map(|t| t.to_string()), Some(token));
        assert!(parse(&["--join-token", ""]).unwrap().join_token.is_none());
        let e = parse(&["--join-token", "opsdjoin1.x"]).unwrap_err().to_string();
        assert!(e.starts_with("--join-token: join token: expected"), "{e}");
        assert!(parse(&[]).unwrap().join_token.is_none());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7700");
        assert_eq!(c.peer_listen.to_string(), "127.0.0.1:7701");
        assert_eq!(c.advertise, "127.0.0.1");
        assert_eq!(c.data_dir, PathBuf::from("opsd-data"));
        assert!(c.join.is_empty());
        assert_eq!(c.min_free_mb, 64);
        assert_eq!(parse(&["--min-free-mb", "0"]).unwrap().min_free_mb, 0);
    }

    #[test]
    fn exec_user_is_resolved_or_refused_naming_the_flag() {
        assert_eq!(parse(&[]).unwrap().exec_user, None);
        let root = parse(&["--exec-user", "root"]).unwrap().exec_user.expect("root exists");
        assert_eq!((root.name.as_str(), root.uid, root.gid), ("root", 0, 0));
        let err = parse(&["--exec-user", "no-such-user-here"]).unwrap_err().to_string();
        assert!(
            err.starts_with("--exec-user: ") && err.contains("no-such-user-here"),
            "{err}"
        );
        let err = parse(&["--exec-user", " "]).unwrap_err().to_string();
        assert!(err.starts_with("--exec-user: must not be empty"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("opsd.toml");
        std::fs::write(&f, "exec_user = \"root\"\n").unwrap();
        let c = parse(&["--config", f.to_str().unwrap()]).unwrap();
        assert_eq!(c.exec_user.map(|u| u.uid), Some(0), "from the file too");
    }

    #[test]
    fn lb_host_defaults_to_the_listen_host_and_takes_no_port() {
        assert_eq!(parse(&[]).unwrap().lb_host, "127.0.0.1");
        assert_eq!(parse(&["--listen", "127.0.0.5:9000"]).unwrap().lb_host, "127.0.0.5");
        assert_eq!(parse(&["--lb-host", "127.0.0.2"]).unwrap().lb_host, "127.0.0.2");
        assert_eq!(parse(&["--lb-host", "[::1]"]).unwrap().lb_host, "::1");
        let err = parse(&["--lb-host", "127.0.0.2:80"]).unwrap_err().to_string();
        assert!(err.starts_with("--lb-host: ") && err.contains("has a port"), "{err}");
        let err = parse(&["--lb-host", ""]).unwrap_err().to_string();
        assert!(err.starts_with("--lb-host: "), "{err}");
    }

    #[test]
    fn file_is_overridden_by_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("opsd.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9000\"\nmax_voters = 3\njoin = [\"a:1\"]\n").unwrap();
        let c = parse(&["--config", f.to_str().unwrap(), "--max-voters", "7"]).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_voters, 7);
        assert_eq!(c.join, vec!["a:1".to_string()]);
    }

    #[test]
    fn subcommands_take_the_data_dir_before_or_after_their_name() {
        for args in [&["--data-dir", "/d", "check"][..], &["check", "--data-dir", "/d"][..]] {
            let flags = Flags::try_parse_from(std::iter::once("opsd").chain(args.iter().copied())).unwrap();
            assert_eq!(flags.command, Some(Subcommand::Check));
            assert_eq!(flags.data_dir, Some(PathBuf::from("/d")));
        }
        for args in [
            &[
                "--data-dir",
                "/d",
                "--listen",
                "127.0.0.1:9000",
                "recover",
                "--rejoin",
                "a:1,b:2",
            ][..],
            &[
                "--data-dir",
                "/d",
                "recover",
                "--rejoin",
                "a:1",
                "--listen",
                "127.0.0.1:9000",
                "--rejoin",
                "b:2",
            ][..],
        ] {
            let flags = Flags::try_parse_from(std::iter::once("opsd").chain(args.iter().copied())).unwrap();
            assert_eq!(
                flags.command,
                Some(Subcommand::Recover {
                    rejoin: vec!["a:1".into(), "b:2".into()]
                })
            );
            assert_eq!(flags.listen, Some("127.0.0.1:9000".parse().unwrap()));
        }
        assert!(
            Flags::try_parse_from(["opsd", "recover"]).is_err(),
            "--rejoin is required"
        );
        assert_eq!(Flags::try_parse_from(["opsd"]).unwrap().command, None);
    }

    #[test]
    fn an_address_without_a_host_says_so_with_an_example() {
        let err = parse(&["--join", "7700"]).unwrap_err().to_string();
        assert!(err.starts_with("--join: "), "{err}");
        assert!(err.contains("has no host, only a port"), "{err}");
        assert!(err.contains("e.g. 127.0.0.1:7700"), "{err}");
        let err = Flags::try_parse_from(["opsd", "--listen", "7700"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no host, only a port"), "{err}");
        assert!(err.contains("e.g. 127.0.0.1:7700"), "{err}");
        let err = Flags::try_parse_from(["opsd", "--peer-listen", "localhost:7701"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"localhost\" is not an IP address"), "{err}");
        let err = parse(&["--advertise", "10.0.0.5:7700"]).unwrap_err().to_string();
        assert!(err.contains("has a port; give the host only (e.g. 10.0.0.5)"), "{err}");
        assert_eq!(parse(&["--advertise", "[::1]"]).unwrap().advertise, "::1");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("opsd.toml");
        std::fs::write(&f, "listen = \"7700\"\n").unwrap();
        let err = parse(&["--config", f.to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.contains("--config: listen: \"7700\" has no host"), "{err}");
    }

    #[test]
    fn bad_settings_name_the_flag() {
        assert!(parse(&["--join", "nohost"]).unwrap_err().to_string().contains("--join"));
        assert!(parse(&["--listen", "0.0.0.0:7700"])
            .unwrap_err()
            .to_string()
            .contains("--advertise"));
        assert!(parse(&["--election-timeout-ms", "10"])
            .unwrap_err()
            .to_string()
            .contains("--election-timeout-ms"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "listen_port = 1\n").unwrap();
        let err = format!("{:#}", parse(&["--config", f.to_str().unwrap()]).unwrap_err());
        assert!(err.contains("listen_port"), "{err}");
    }
}
