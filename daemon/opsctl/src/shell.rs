//! `opsctl shell KIND/NAME [--machine N] [-- CMD ARGS...]`: a shell (or one
//! command) in the context of one of a resource's machines.
//!
//! Which way in a machine takes is decided in one place, [`way_in`], from
//! the machine's record in the resource's `outputs.machines`: a local
//! machine (it has a `dir`) is entered by running the command here, in its
//! directory, with the environment it was started with. A container of the
//! docker provider (it has a `container`) is entered with the Docker CLI,
//! `docker exec -i [-t] ID sh` (or the command): the CLI already does what
//! an interactive session needs (a raw terminal, its size, signals), and
//! it reaches the engine the operator's `DOCKER_HOST` names. Providers that
//! run machines elsewhere add their way there (a host: `ssh -t HOST`) and
//! [`Way::command`] builds it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use opsd_client::Nodes;
use opsd_proto::json::struct_value;
use opsd_proto::machine_env::machine_env;
use opsd_proto::v1::{EffectiveRequest, StatusRequest};
use serde_json::Value;

use crate::spec::ResourceRef;

/// `opsctl shell KIND/NAME`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The resource whose machine to enter, as KIND/NAME (a cluster).
    #[arg(value_name = "KIND/NAME", value_parser = ResourceRef::parse)]
    target: ResourceRef,
    /// The machine, by its index in the resource's outputs.machines.
    #[arg(long, short = 'm', value_name = "N", default_value_t = 0)]
    machine: u64,
    /// A command to run instead of an interactive shell, after `--`.
    #[arg(last = true, value_name = "CMD ARGS")]
    command: Vec<String>,
}

/// How to get into one machine: the one mapping from a machine record to a
/// way in. New providers add a variant here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Way {
    /// A process of the `local` provider: run the command on this host, in
    /// the machine's directory, with its environment.
    Local {
        /// The machine's directory (its current directory).
        dir: PathBuf,
        /// The variables opsd gave the machine.
        env: Vec<(String, String)>,
    },
    /// A container of the `docker` provider: `docker exec` into it (it
    /// already has the environment opsd gave it).
    Docker {
        /// The container's id.
        container: String,
    },
    /// An instance of the `ec2` provider: `ssh` to its address with the
    /// private key of the key pair opsd made for its cluster.
    Ssh {
        /// Who to log in as.
        user: String,
        /// The instance's public address, else its private one.
        host: String,
        /// The private key, saved where ssh reads it.
        key_file: PathBuf,
    },
}

impl Way {
    /// The process to run: `command`, or an interactive `$SHELL` (else
    /// /bin/sh) without one.
    fn command(&self, command: &[String]) -> tokio::process::Command {
        match self {
            Way::Local { dir, env } => {
                let (program, args) = match command.split_first() {
                    Some((program, args)) => (program.clone(), args.to_vec()),
                    None => (login_shell(), Vec::new()),
                };
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args).current_dir(dir).envs(env.iter().cloned());
                cmd
            }
            Way::Docker { container } => {
                let mut cmd = tokio::process::Command::new("docker");
                cmd.args(docker_exec_args(container, command, std::io::stdin().is_terminal()));
                cmd
            }
            Way::Ssh { user, host, key_file } => {
                let mut cmd = tokio::process::Command::new("ssh");
                cmd.arg("-i").arg(key_file).args([
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "StrictHostKeyChecking=accept-new",
                ]);
                if command.is_empty() {
                    cmd.arg("-t");
                }
                cmd.arg(format!("{user}@{host}"));
                if !command.is_empty() {
                    cmd.arg("--").args(command);
                }
                cmd
            }
        }
    }
}

/// The arguments of `docker` entering `container`: `exec -i`, `-t` when
/// opsctl runs on a terminal, then the command, or `sh` (a container's
/// image need not have the user's `$SHELL`).
fn docker_exec_args(container: &str, command: &[String], terminal: bool) -> Vec<String> {
    let mut args = vec!["exec".to_string(), "-i".to_string()];
    if terminal {
        args.push("-t".into());
    }
    args.push(container.to_string());
    if command.is_empty() {
        args.push("sh".into());
    } else {
        args.extend(command.iter().cloned());
    }
    args
}

/// The user's shell: `$SHELL`, else /bin/sh.
fn login_shell() -> String {
    std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into())
}

/// What a machine needs from its resource to be entered.
struct MachineContext {
    /// `KIND/NAME`, for messages.
    what: String,
    /// The resource's name (a local machine's `OPSD_CLUSTER`).
    name: String,
    /// The resource's `spec.env`, as the machines got it.
    spec_env: Vec<(String, String)>,
    /// The settings in scope of the resource, key to value.
    settings: std::collections::BTreeMap<String, String>,
}

/// Why a machine cannot be entered from here.
#[derive(Debug, PartialEq, Eq)]
enum NoWay {
    /// A local machine whose directory is not on this host (another node's).
    NotHere {
        /// Its directory, as recorded.
        dir: String,
    },
    /// Anything else, said in full.
    Other(String),
}

/// The way into `machine` (a record of `outputs.machines`), or why there is
/// none from this host.
fn way_in(machine: &Value, cx: &MachineContext, index: u64) -> Result<Way, NoWay> {
    if let Some(container) = machine
        .get("container")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    {
        return Ok(Way::Docker {
            container: container.to_string(),
        });
    }
    if let Some(dir) = machine.get("dir").and_then(Value::as_str) {
        if !std::path::Path::new(dir).is_dir() {
            return Err(NoWay::NotHere { dir: dir.to_string() });
        }
        let port = machine
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| NoWay::Other(format!("machine {index} of {} has no port recorded", cx.what)))?;
        // The host of its recorded address (an older record has none: loopback).
        let address = machine.get("address").and_then(Value::as_str).unwrap_or("127.0.0.1:0");
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let env = machine_env(&cx.settings, &cx.spec_env, &cx.name, index, host, port);
        return Ok(Way::Local {
            dir: PathBuf::from(dir),
            env,
        });
    }
    if machine.get("instance_id").and_then(Value::as_str).is_some() {
        return ssh_way(machine, cx, index, &ssh_key_dir());
    }
    Err(NoWay::Other(format!(
        "machine {index} of {} has no directory recorded, and opsctl knows no other way into it",
        cx.what
    )))
}

/// The setting (in the cluster's scope) where the ec2 provider keeps the
/// private key of the cluster's key pair.
const SSH_KEY_SETTING: &str = "ec2/ssh_private_key";

/// Where opsctl saves the private keys of EC2 clusters' key pairs for ssh:
/// `~/.ssh/opsd` (else `.opsd-ssh` in the current directory, without a home).
fn ssh_key_dir() -> PathBuf {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".ssh").join("opsd"),
        None => PathBuf::from(".opsd-ssh"),
    }
}

/// The way into an EC2 instance (a machine record with an `instance_id`):
/// ssh as its `ssh_user` to its public address (else its private one),
/// with the private key of its key pair (`key_name`), read from the
/// cluster's settings and saved under `key_dir` (mode 0600) for ssh.
fn ssh_way(machine: &Value, cx: &MachineContext, index: u64, key_dir: &std::path::Path) -> Result<Way, NoWay> {
    let field = |key: &str| machine.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let host = field("public_ip")
        .or_else(|| field("private_ip"))
        .ok_or_else(|| NoWay::Other(format!("machine {index} of {} has no address recorded", cx.what)))?;
    let user = field("ssh_user").unwrap_or("ec2-user");
    let key_name = field("key_name")
        .ok_or_else(|| NoWay::Other(format!("machine {index} of {} has no key pair recorded", cx.what)))?;
    let key = cx
        .settings
        .get(SSH_KEY_SETTING)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            NoWay::Other(format!(
                "opsd holds no private key for key pair {key_name} of {} (the setting {SSH_KEY_SETTING} in its scope)",
                cx.what
            ))
        })?;
    let key_file = key_dir.join(format!("{key_name}.pem"));
    save_private_key(key_dir, &key_file, key)
        .map_err(|e| NoWay::Other(format!("cannot save the private key to {}: {e}", key_file.display())))?;
    Ok(Way::Ssh {
        user: user.to_string(),
        host: host.to_string(),
        key_file,
    })
}

/// Writes `key` to `file` readable by its owner only (ssh refuses others),
/// in `dir` (made, mode 0700, if missing).
fn save_private_key(dir: &std::path::Path, file: &std::path::Path, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(key.as_bytes())?;
    if !key.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    Ok(())
}

/// The indices present, as a range when they are contiguous (`0 to 2`).
fn describe_indices(indices: &[u64]) -> String {
    match (indices.first(), indices.last()) {
        (Some(first), Some(last)) if (last - first) as usize + 1 == indices.len() => {
            if first == last {
                format!("only machine {first}")
            } else {
                format!("machines {first} to {last}")
            }
        }
        _ => format!(
            "machines {}",
            indices.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The string values of a spec's `env` table, as the local provider gives
/// them to machines (it refuses any other).
fn spec_env(spec: &Value) -> Vec<(String, String)> {
    match spec.get("env") {
        Some(Value::Object(vars)) => vars
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect(),
        _ => Vec::new(),
    }
}

/// Runs `opsctl shell`: its exit code is the command's (128 + the signal if a
/// signal ended it).
pub async fn run(args: ShellArgs, nodes: &Nodes) -> Result<ExitCode> {
    let target = args.target;
    let what = format!("{}/{}", target.kind, target.name);
    let resource = crate::resources::fetch(&target, false, nodes).await?;
    let outputs = struct_value(resource.outputs.as_ref());
    let machines: Vec<&Value> = outputs
        .get("machines")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter(|m| m.get("index").and_then(Value::as_u64).is_some())
                .collect()
        })
        .unwrap_or_default();
    if machines.is_empty() {
        bail!(
            "{what} has no machines recorded (its outputs.machines is empty; it is {})",
            resource.state
        );
    }
    let mut indices: Vec<u64> = machines
        .iter()
        .filter_map(|m| m.get("index").and_then(Value::as_u64))
        .collect();
    indices.sort_unstable();
    indices.dedup();
    let machine = machines
        .iter()
        .find(|m| m.get("index").and_then(Value::as_u64) == Some(args.machine))
        .ok_or_else(|| anyhow!("--machine {}: {what} has {}", args.machine, describe_indices(&indices)))?;

    // The shell gets what the machine gets: the real values of secret
    // settings too, so the caller must be allowed to reveal them.
    let request = EffectiveRequest {
        kind: target.kind.clone(),
        name: target.name.clone(),
        stale: false,
        reveal: true,
    };
    let settings = nodes
        .call_with(&request, |mut api, r| async move { api.settings.effective(r).await })
        .await?
        .settings
        .into_iter()
        .map(|s| (s.key, s.value))
        .collect();
    let cx = MachineContext {
        what: what.clone(),
        name: target.name.clone(),
        spec_env: spec_env(&struct_value(resource.spec.as_ref())),
        settings,
    };
    let way = match way_in(machine, &cx, args.machine) {
        Ok(way) => way,
        Err(NoWay::NotHere { dir }) => bail!("{}", elsewhere(nodes, machine, &what, args.machine, &dir).await),
        Err(NoWay::Other(e)) => bail!("{e}"),
    };
    let mut cmd = way.command(&args.command);
    let shown = if args.command.is_empty() {
        match &way {
            Way::Docker { .. } => "sh".to_string(),
            Way::Local { .. } | Way::Ssh { .. } => login_shell(),
        }
    } else {
        args.command.join(" ")
    };
    // Ctrl-C and Ctrl-\ are for the command (it shares the terminal's
    // process group): opsctl ignores them while it runs, and ends with it.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    let mut quit =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit()).context("cannot listen for Ctrl-\\")?;
    let mut child = cmd.spawn().with_context(|| {
        let via = match &way {
            Way::Docker { container } => {
                format!(" (with `docker exec` into container {container}: is the docker CLI installed?)")
            }
            Way::Ssh { host, .. } => format!(" (with `ssh` to {host}: is ssh installed?)"),
            Way::Local { .. } => String::new(),
        };
        format!("cannot run {shown:?} in machine {} of {what}{via}", args.machine)
    })?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.with_context(|| format!("waiting for {shown:?}"))?,
            _ = interrupt.recv() => {}
            _ = quit.recv() => {}
        }
    };
    Ok(exit_code(status))
}

/// The exit code that reports a child's end: its own, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

/// The error for a machine whose directory is not on this host: which node
/// runs it, and where to run `opsctl shell` instead.
async fn elsewhere(nodes: &Nodes, machine: &Value, what: &str, index: u64, dir: &str) -> String {
    let Some(node) = machine.get("node").and_then(Value::as_u64) else {
        return format!("machine {index} of {what}: its directory {dir} is not on this host");
    };
    let addr = nodes
        .call(|mut api| async move { api.cluster.status(StatusRequest {}).await })
        .await
        .ok()
        .and_then(|s| s.members.into_iter().find(|m| m.id == node).map(|m| m.addr));
    let at = addr.map(|a| format!(" (client address {a})")).unwrap_or_default();
    format!(
        "machine {index} of {what} runs on node {node}{at}: its directory {dir} is not on this host; \
         run opsctl shell on node {node}'s host"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cx() -> MachineContext {
        MachineContext {
            what: "cluster/web".into(),
            name: "web".into(),
            spec_env: vec![("LEVEL".into(), "spec".into())],
            settings: [("LEVEL", "setting"), ("TOKEN", "t"), ("db/url", "x")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_local_machine_is_entered_in_its_dir_with_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let machine = json!({"index": 1, "node": 2, "port": 4000, "dir": dir.path()});
        let Ok(Way::Local { dir: got, env }) = way_in(&machine, &cx(), 1) else {
            panic!("a machine with a dir is local")
        };
        assert_eq!(got, dir.path());
        let env: std::collections::BTreeMap<_, _> = env.into_iter().collect();
        assert_eq!(env["LEVEL"], "spec");
        assert_eq!(env["TOKEN"], "t");
        assert_eq!(env["PORT"], "4000");
        assert_eq!(env["OPSD_CLUSTER"], "web");
        assert_eq!(env["OPSD_MACHINE"], "1");
        assert!(!env.contains_key("db/url"));
    }

    #[test]
    fn a_machine_elsewhere_or_without_a_way_in_is_explained() {
        let machine = json!({"index": 0, "port": 4000, "dir": "/nonexistent/opsd/machine-0"});
        assert_eq!(
            way_in(&machine, &cx(), 0).unwrap_err(),
            NoWay::NotHere {
                dir: "/nonexistent/opsd/machine-0".into()
            }
        );
        let machine = json!({"index": 0, "address": "10.0.0.1:80"});
        let Err(NoWay::Other(e)) = way_in(&machine, &cx(), 0) else {
            panic!("a machine without a dir has no way in")
        };
        assert!(e.contains("no directory recorded"), "{e}");
    }

    #[test]
    fn a_container_is_entered_with_docker_exec() {
        let machine = json!({"index": 0, "address": "172.18.0.2:8080", "container": "abc123", "name": "opsd-c-web-0"});
        let way = way_in(&machine, &cx(), 0).unwrap();
        assert_eq!(
            way,
            Way::Docker {
                container: "abc123".into()
            }
        );
        assert_eq!(
            docker_exec_args("abc123", &[], true),
            ["exec", "-i", "-t", "abc123", "sh"]
        );
        let command = ["cat".to_string(), "/etc/hostname".to_string()];
        assert_eq!(
            docker_exec_args("abc123", &command, false),
            ["exec", "-i", "abc123", "cat", "/etc/hostname"]
        );
    }

    #[test]
    fn an_ec2_instance_is_entered_by_ssh_with_its_clusters_key() {
        let keys = tempfile::tempdir().unwrap();
        let dir = keys.path().join("opsd");
        let mut cx = cx();
        cx.settings.insert(
            SSH_KEY_SETTING.into(),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----".into(),
        );
        let machine = json!({"index": 2, "address": "10.1.2.3:8080", "instance_id": "i-0abc",
            "private_ip": "10.1.2.3", "public_ip": null, "ssh_user": "admin", "key_name": "opsd-c1-cluster-web"});
        let way = ssh_way(&machine, &cx, 2, &dir).unwrap();
        let key_file = dir.join("opsd-c1-cluster-web.pem");
        assert_eq!(
            way,
            Way::Ssh {
                user: "admin".into(),
                host: "10.1.2.3".into(),
                key_file: key_file.clone()
            }
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(std::fs::read_to_string(&key_file).unwrap().ends_with("KEY-----\n"));
        let args = |cmd: tokio::process::Command| -> Vec<String> {
            let std = cmd.as_std();
            std::iter::once(std.get_program())
                .chain(std.get_args())
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let key = key_file.display().to_string();
        assert_eq!(
            args(way.command(&[])),
            [
                "ssh",
                "-i",
                &key,
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-t",
                "admin@10.1.2.3"
            ]
        );
        assert_eq!(
            args(way.command(&["uptime".into(), "-p".into()])),
            [
                "ssh",
                "-i",
                &key,
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "admin@10.1.2.3",
                "--",
                "uptime",
                "-p"
            ]
        );
        // A public address wins; the default user is ec2-user.
        let public = json!({"index": 0, "instance_id": "i-1", "private_ip": "10.0.0.1",
            "public_ip": "54.1.2.3", "key_name": "k"});
        let Ok(Way::Ssh { user, host, .. }) = ssh_way(&public, &cx, 0, &dir) else {
            panic!("an instance is entered by ssh")
        };
        assert_eq!((user.as_str(), host.as_str()), ("ec2-user", "54.1.2.3"));
        // Without the private key there is no way in, and the error says where it should be.
        let Err(NoWay::Other(e)) = ssh_way(&public, &super::tests::cx(), 0, &dir) else {
            panic!("no key, no way in")
        };
        assert!(
            e.contains("holds no private key for key pair k") && e.contains(SSH_KEY_SETTING),
            "{e}"
        );
    }

    #[test]
    fn indices_are_described_as_a_range_when_they_are_one() {
        assert_eq!(describe_indices(&[0, 1, 2]), "machines 0 to 2");
        assert_eq!(describe_indices(&[0]), "only machine 0");
        assert_eq!(describe_indices(&[0, 2]), "machines 0, 2");
    }
}
