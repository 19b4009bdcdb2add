//! Docker for the scenarios that need it: whether a Docker engine is usable
//! here (else the scenario skips, or fails under `OPSD_TEST_STRICT`), and
//! the engine's own CLI to make and inspect what a test owns.

use std::process::Command;

/// Runs `docker ARGS`; its stdout, trimmed, or what went wrong.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether a Docker engine answers here (the `docker` CLI, `DOCKER_HOST`
/// or the local socket); `Err` says why not.
pub fn usable() -> Result<(), String> {
    docker(&["info", "--format", "{{.ID}}"])
        .and_then(|id| {
            if id.is_empty() {
                Err("docker info gave no engine ID".to_string())
            } else {
                Ok(())
            }
        })
        .map_err(|e| format!("no usable Docker engine: {e}"))
}

/// True if Docker is usable; otherwise reports the skip of `test` (a
/// failure under `OPSD_TEST_STRICT`) and returns false.
pub fn require(test: &str) -> bool {
    match usable() {
        Ok(()) => true,
        Err(why) => {
            crate::skip(test, &why);
            false
        }
    }
}
