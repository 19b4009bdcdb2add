//! The Docker side of the self-deploy scenarios (opsd deploying itself into
//! containers, the `opsd-cluster` kind): whether this machine has a Docker
//! engine, the `docker` commands a test runs as an operator would (`docker
//! kill`), and a guard that removes everything opsd made for one opsd
//! cluster when the test ends, even by a panic.
//!
//! Everything the docker provider makes for an opsd-cluster carries the
//! label `opsd.scope=<the opsd cluster's id>`, and each test runs its own
//! opsd cluster: the guard removes exactly that test's containers, volumes
//! and images, never another's.

use std::process::Command;

/// The label every container, volume and image of an opsd-cluster carries:
/// the id of the opsd cluster that made it.
pub const LABEL_SCOPE: &str = "opsd.scope";

/// Runs `docker ARGS`; its stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why this machine cannot run the self-deploy scenarios, if it cannot:
/// no `docker` command, or no engine answering it.
pub fn docker_missing() -> Option<String> {
    match docker(&["info", "--format", "{{.ServerVersion}}"]) {
        Ok(version) if !version.trim().is_empty() => None,
        Ok(_) => Some("the Docker engine did not say its version".into()),
        Err(e) => Some(format!("no Docker engine here: {e}")),
    }
}

/// The containers of an opsd cluster (by name), running or not.
pub fn containers(scope: &str) -> Vec<String> {
    let filter = format!("label={LABEL_SCOPE}={scope}");
    docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
        .map(|out| out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
        .unwrap_or_default()
}

/// Removes, when dropped, every container, volume and image labelled with
/// one opsd cluster's id.
pub struct DockerScope {
    /// The opsd cluster's id.
    pub scope: String,
}

impl DockerScope {
    /// A guard for what opsd makes for the opsd cluster `scope`.
    pub fn new(scope: &str) -> DockerScope {
        DockerScope {
            scope: scope.to_string(),
        }
    }

    /// Prints the last lines of each of its containers' output (for a
    /// failing test).
    pub fn print_logs(&self, lines: usize) {
        for name in containers(&self.scope) {
            let tail = Command::new("docker")
                .args(["logs", "--tail", &lines.to_string(), &name])
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default();
            eprintln!("==== container {name}, last {lines} lines ====\n{tail}");
        }
    }
}

impl Drop for DockerScope {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs(40);
        }
        let filter = format!("label={LABEL_SCOPE}={}", self.scope);
        let ids = |args: &[&str]| -> Vec<String> {
            docker(args)
                .map(|out| out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
                .unwrap_or_default()
        };
        let containers = ids(&["ps", "-aq", "--filter", &filter]);
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            let _ = docker(&args);
        }
        let volumes = ids(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            let _ = docker(&args);
        }
        let images = ids(&["images", "-q", "--filter", &filter]);
        if !images.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(images.iter().map(String::as_str));
            let _ = docker(&args);
        }
    }
}
