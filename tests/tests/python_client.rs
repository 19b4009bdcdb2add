//! The gRPC contract from a real non-Rust client: Python's `grpcio`, with
//! stubs generated from `proto/` by `grpcio-tools` at test time, drives one
//! real opsd node through `tests/python/opsd_client_check.py` (Cluster.Status,
//! the Settings service including errors and Watch, the Resources service's
//! typed fields read through protobuf's own canonical JSON — Struct specs and
//! outputs, Timestamps, Durations, outcome enums — with a malformed Struct and
//! Duration refused, the standard health service and server reflection).
//!
//! The Python libraries live in a virtualenv at `target/pyenv`, made by
//! `.ci/python-deps` (which `make test` runs through `.ci/deps`). Without it
//! the test skips with a message, or fails when `OPSD_TEST_STRICT` is set (CI).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use opsd_tests::{Cluster, Options};

/// How long the whole Python check may take. Each of its calls has its own
/// 15 s deadline; this only stops a wedged interpreter from hanging the run.
const CHECK_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the workspace root")
}

#[tokio::test]
async fn python_grpcio_client_passes_the_contract_checks() {
    let root = repo_root();
    let python = root.join("target").join("pyenv").join("bin").join("python");
    let script = root.join("tests").join("python").join("opsd_client_check.py");
    if !python.exists() {
        let why = format!(
            "{} does not exist: run .ci/python-deps to make the virtualenv with grpcio",
            python.display()
        );
        opsd_tests::skip("python_client", &format!("{why} (or `make test`, which runs it)"));
        return;
    }

    let cluster = Cluster::start(1, Options::default()).await;
    let leader = cluster.leader().await;
    let addr = cluster.node(leader).client_addr();

    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&script)
        .arg("--addr")
        .arg(&addr)
        .current_dir(&root)
        .stdin(Stdio::null())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("OPSD_CA")
        .env_remove("OPSD_TOKEN")
        .envs(opsd_tests::access::opsctl_env(&addr))
        .kill_on_drop(true);
    let out = match tokio::time::timeout(CHECK_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("running {} {}: {e}", python.display(), script.display()),
        Err(_) => panic!("the Python client check did not finish in {CHECK_TIMEOUT:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("---- python client check against {addr} ----\n{stdout}");
    if !stderr.trim().is_empty() {
        println!("---- its stderr ----\n{stderr}");
    }
    assert!(
        out.status.success(),
        "the Python grpcio client check failed ({}):\n{stderr}\n(its stdout:\n{stdout})",
        out.status
    );
}
