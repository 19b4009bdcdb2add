//! Acceptance checks: what a resource's spec declares (`checks`, a list of
//! tcp, http and exec checks) run against every machine it created
//! (`outputs.machines`), with a timeout, retries and an interval each.
//! Used by the `verify_machines` step of cluster kinds, by the service
//! provider's swap (the new cluster must pass before any traffic moves), and
//! by the load balancer's health checks (one [`probe`] at a time).
//!
//! SKELETON: the types and signatures are the contract between the parts
//! that use them; the bodies are being written.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::ops::{LogSink, MachineAddr, Object, StepError};

/// One acceptance check, parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// A name for tables and logs: `name` in the spec, else `TYPE` plus the
    /// check's position (`http#0`).
    pub name: String,
    /// What it does.
    pub probe: Probe,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Attempts after the first failed one before the check fails.
    pub retries: u32,
    /// The pause between attempts.
    pub interval: Duration,
}

/// What a check does against one machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// Connects to the machine's address.
    Tcp,
    /// `GET path` on the machine's address; passes on `status`, and if
    /// `body` is given, when the body matches that regex.
    Http {
        /// The path, starting with `/`.
        path: String,
        /// The expected status.
        status: u16,
        /// A regex the body must match (already checked to compile).
        body: Option<String>,
    },
    /// Runs `command` under /bin/sh with the machine's address, host, port
    /// and index and the settings in scope in its environment; exit 0 passes.
    Exec {
        /// The command.
        command: String,
    },
}

/// The outcome of one check on one machine.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// The machine's index.
    pub machine: u64,
    /// Its address.
    pub address: String,
    /// The check's name.
    pub check: String,
    /// Passed or not.
    pub passed: bool,
    /// Attempts made.
    pub attempts: u32,
    /// What the last attempt saw (`200 OK`, `connection refused`, ...).
    pub detail: String,
    /// Milliseconds the check took, all attempts.
    pub ms: u64,
}

/// Every check on every machine.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// One result per machine and check, by machine then check.
    pub results: Vec<CheckResult>,
}

impl Report {
    /// True if every check passed on every machine.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    /// The report as outputs: `{"checks": {"passed": bool, "results": [...]}}`
    /// (each result an object with the fields above), merged into the
    /// resource's outputs and kept with the run.
    pub fn to_outputs(&self) -> Object {
        todo!("verify: Report::to_outputs")
    }
}

/// Parses and validates the checks of a spec (`spec.checks`: absent, or an
/// array of tables). The error names the field: `spec.checks[1].body:
/// invalid regex ...`, `spec.checks[0].type: unknown check type "ping"
/// (use tcp, http or exec)`.
pub fn parse_checks(spec: &Object) -> Result<Vec<Check>, String> {
    let _ = spec;
    todo!("verify: parse_checks")
}

/// Parses one check given as a value (a service's `health`), `field` naming
/// it in errors.
pub fn parse_check(value: &Value, field: &str, position: usize) -> Result<Check, String> {
    let _ = (value, field, position);
    todo!("verify: parse_check")
}

/// One attempt of `check` against `machine`, within the check's timeout.
/// `Ok` carries what it saw; `Err` why it failed.
pub async fn probe(check: &Check, machine: &MachineAddr, env: &BTreeMap<String, String>) -> Result<String, String> {
    let _ = (check, machine, env);
    todo!("verify: probe")
}

/// Runs every check against every machine (machines in parallel, each
/// check with its retries), logging a line per result, and returns the
/// report. `Err(StepError::Cancelled)` if `cancel` fired.
pub async fn run_checks(
    checks: &[Check],
    machines: &[MachineAddr],
    env: &BTreeMap<String, String>,
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<Report, StepError> {
    let _ = (checks, machines, env, log, cancel);
    todo!("verify: run_checks")
}
