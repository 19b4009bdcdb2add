//! Acceptance checks: what a resource's spec declares (`checks`, a list of
//! tcp, http and exec checks) run against every machine it created
//! (`outputs.machines`), with a timeout, retries and an interval each.
//! Used by the `verify_machines` step of cluster kinds, by the service
//! provider's swap (the new cluster must pass before any traffic moves), and
//! by the load balancer's health checks (one [`probe`] at a time).
//!
//! Parsing ([`parse_checks`], [`parse_check`]) refuses anything it would
//! ignore or could not run, naming the field; running ([`run_checks`]) never
//! fails on what a machine answers: every answer, or its absence, becomes a
//! [`CheckResult`] with a detail line.

mod probe;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::ops::{machines_of, Fail, LogSink, MachineAddr, Object, StepError, StepRequest};

pub use probe::{host_and_port, MAX_BODY_BYTES};

/// How long one attempt may take when `timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts after the first failed one when `retries` is not given.
pub const DEFAULT_RETRIES: u32 = 2;
/// The pause between attempts when `interval` is not given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `timeout` and `interval`, in seconds.
pub const MAX_SECONDS: f64 = 300.0;
/// The most `retries` a check may have.
pub const MAX_RETRIES: u64 = 100;
/// The most checks a spec may declare.
pub const MAX_CHECKS: usize = 32;

/// The keys a check table may have, for messages.
const KEYS: [&str; 9] = [
    "type", "name", "timeout", "retries", "interval", "path", "status", "body", "command",
];

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

impl Probe {
    /// The check type as specs name it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Probe::Tcp => "tcp",
            Probe::Http { .. } => "http",
            Probe::Exec { .. } => "exec",
        }
    }
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

impl CheckResult {
    /// The result as one object of `checks.results`.
    pub fn to_value(&self) -> Value {
        json!({
            "machine": self.machine,
            "address": self.address,
            "check": self.check,
            "passed": self.passed,
            "attempts": self.attempts,
            "detail": self.detail,
            "ms": self.ms,
        })
    }

    /// One line for a run's log: `machine 0 (127.0.0.1:8080): check
    /// health passed (1 attempt, 3 ms): 200 OK`.
    pub fn line(&self) -> String {
        format!(
            "machine {} ({}): check {} {} ({} attempt{}, {} ms): {}",
            self.machine,
            self.address,
            self.check,
            if self.passed { "passed" } else { "FAILED" },
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.ms,
            self.detail
        )
    }
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
        let results: Vec<Value> = self.results.iter().map(CheckResult::to_value).collect();
        let mut out = Object::new();
        out.insert("checks".into(), json!({ "passed": self.passed(), "results": results }));
        out
    }

    /// The first failed result, if any.
    pub fn first_failure(&self) -> Option<&CheckResult> {
        self.results.iter().find(|r| !r.passed)
    }

    /// Why the report failed, for a run's error: the first failed check,
    /// its machine and detail, and how many other results failed. `None`
    /// if every check passed.
    pub fn failure(&self) -> Option<String> {
        let first = self.first_failure()?;
        let others = self.results.iter().filter(|r| !r.passed).count() - 1;
        let mut line = format!(
            "check {} failed on machine {} ({}) after {} attempt{}: {}",
            first.check,
            first.machine,
            first.address,
            first.attempts,
            if first.attempts == 1 { "" } else { "s" },
            first.detail
        );
        if others > 0 {
            line.push_str(&format!(
                " (and {others} more failed result{})",
                if others == 1 { "" } else { "s" }
            ));
        }
        Some(line)
    }
}

/// Parses and validates the checks of a spec (`spec.checks`: absent, or an
/// array of tables). The error names the field: `spec.checks[1].body:
/// invalid regex ...`, `spec.checks[0].type: unknown check type "ping"
/// (use tcp, http or exec)`.
pub fn parse_checks(spec: &Object) -> Result<Vec<Check>, String> {
    let items = match spec.get("checks") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(format!(
                "spec.checks: must be an array of checks (e.g. checks = [{{ type = \"http\", path = \"/health\" }}]), not {}",
                short(v)
            ))
        }
    };
    if items.len() > MAX_CHECKS {
        return Err(format!(
            "spec.checks: {} checks is more than the limit of {MAX_CHECKS}",
            items.len()
        ));
    }
    let mut checks: Vec<Check> = Vec::with_capacity(items.len());
    let mut names = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("spec.checks[{i}]");
        let check = parse_check(item, &field, i)?;
        if !names.insert(check.name.clone()) {
            let j = checks.iter().position(|c| c.name == check.name).unwrap_or_default();
            return Err(format!(
                "{field}.name: {:?} is the name of spec.checks[{j}] too; names must be unique",
                check.name
            ));
        }
        checks.push(check);
    }
    Ok(checks)
}

/// Parses one check given as a value (a service's `health`), `field` naming
/// it in errors.
pub fn parse_check(value: &Value, field: &str, position: usize) -> Result<Check, String> {
    let Value::Object(table) = value else {
        return Err(format!(
            "{field}: must be a table such as {{ type = \"http\", path = \"/health\" }}, not {}",
            short(value)
        ));
    };
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(format!("{field}.{key}: unknown key (a check has: {})", KEYS.join(", ")));
        }
    }
    let kind = match table.get("type") {
        None | Some(Value::Null) => {
            return Err(format!("{field}.type: required: tcp, http or exec"));
        }
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(format!("{field}.type: must be tcp, http or exec, not {}", short(v))),
    };
    // Keys only some types take.
    let only = |key: &str, types: &str, allowed: bool| -> Result<(), String> {
        if !allowed && table.get(key).is_some_and(|v| !v.is_null()) {
            return Err(format!(
                "{field}.{key}: only {types} checks take {key} (this check is {kind})"
            ));
        }
        Ok(())
    };
    let probe = match kind {
        "tcp" => {
            for key in ["path", "status", "body"] {
                only(key, "http", false)?;
            }
            only("command", "exec", false)?;
            Probe::Tcp
        }
        "http" => {
            only("command", "exec", false)?;
            let path = match table.get("path") {
                None | Some(Value::Null) => "/".to_string(),
                Some(Value::String(p)) => check_path(p).map_err(|e| format!("{field}.path: {e}"))?,
                Some(v) => {
                    return Err(format!(
                        "{field}.path: must be a string such as \"/health\", not {}",
                        short(v)
                    ))
                }
            };
            let status =
                match table.get("status") {
                    None | Some(Value::Null) => 200,
                    Some(v) => v.as_u64().filter(|s| (100..=599).contains(s)).ok_or_else(|| {
                        format!("{field}.status: must be an HTTP status, 100 to 599, not {}", short(v))
                    })? as u16,
                };
            let body = match table.get("body") {
                None | Some(Value::Null) => None,
                Some(Value::String(b)) => {
                    compile(b).map_err(|e| format!("{field}.body: {e}"))?;
                    Some(b.clone())
                }
                Some(v) => return Err(format!("{field}.body: must be a regex (a string), not {}", short(v))),
            };
            Probe::Http { path, status, body }
        }
        "exec" => {
            for key in ["path", "status", "body"] {
                only(key, "http", false)?;
            }
            let command = match table.get("command") {
                None | Some(Value::Null) => {
                    return Err(format!(
                        "{field}.command: required for an exec check: a shell command, exit 0 passes"
                    ))
                }
                Some(Value::String(c)) if c.trim().is_empty() => {
                    return Err(format!("{field}.command: must not be empty"))
                }
                Some(Value::String(c)) if c.contains('\0') => {
                    return Err(format!("{field}.command: must not contain a NUL byte"))
                }
                Some(Value::String(c)) => c.clone(),
                Some(v) => return Err(format!("{field}.command: must be a string, not {}", short(v))),
            };
            Probe::Exec { command }
        }
        other => {
            return Err(format!(
                "{field}.type: unknown check type {other:?} (use tcp, http or exec)"
            ))
        }
    };
    let name = match table.get("name") {
        None | Some(Value::Null) => format!("{}#{position}", probe.type_name()),
        Some(Value::String(n)) => {
            if n.is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(format!(
                    "{field}.name: must be 1 to 64 characters without spaces or control characters, not {n:?}"
                ));
            }
            n.clone()
        }
        Some(v) => return Err(format!("{field}.name: must be a string, not {}", short(v))),
    };
    let timeout = seconds(table.get("timeout"), &format!("{field}.timeout"), false)?.unwrap_or(DEFAULT_TIMEOUT);
    let interval = seconds(table.get("interval"), &format!("{field}.interval"), true)?.unwrap_or(DEFAULT_INTERVAL);
    let retries = match table.get("retries") {
        None | Some(Value::Null) => DEFAULT_RETRIES,
        Some(v) => v.as_u64().filter(|r| *r <= MAX_RETRIES).ok_or_else(|| {
            format!(
                "{field}.retries: must be an integer from 0 to {MAX_RETRIES}, not {}",
                short(v)
            )
        })? as u32,
    };
    Ok(Check {
        name,
        probe,
        timeout,
        retries,
        interval,
    })
}

/// A number of seconds (fractional allowed) up to [`MAX_SECONDS`]; more
/// than 0 unless `zero` is allowed. `None` when absent.
fn seconds(value: Option<&Value>, field: &str, zero: bool) -> Result<Option<Duration>, String> {
    let v = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let lower = if zero { "0" } else { "more than 0" };
    let s = v
        .as_f64()
        .filter(|s| s.is_finite() && *s <= MAX_SECONDS && (*s > 0.0 || (zero && *s == 0.0)))
        .ok_or_else(|| {
            format!(
                "{field}: must be a number of seconds, {lower} to {MAX_SECONDS}, not {}",
                short(v)
            )
        })?;
    Ok(Some(Duration::from_secs_f64(s)))
}

/// An HTTP path: starts with `/`, no spaces or control characters.
fn check_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("must start with '/', not {path:?}"));
    }
    if path.len() > 2048 {
        return Err(format!("{} bytes is more than the limit of 2048", path.len()));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must not contain spaces or control characters: {path:?}"));
    }
    Ok(path.to_string())
}

/// Compiles a body regex, bounded in size (a spec must not make a node build
/// a huge automaton).
pub(crate) fn compile(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex {pattern:?}: {}", one_line(&e.to_string())))
}

/// A value for an error message, cut short.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 60 {
        let mut end = 60;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text
    }
}

/// Text on one line: line breaks become spaces, runs of spaces one.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One attempt of `check` against `machine`, within the check's timeout.
/// `Ok` carries what it saw; `Err` why it failed.
pub async fn probe(check: &Check, machine: &MachineAddr, env: &BTreeMap<String, String>) -> Result<String, String> {
    probe::attempt(check, machine, env).await
}

/// Runs `check` against `machine` with its retries: the result of the last
/// attempt, or `None` if `cancel` fired.
async fn run_one(
    check: &Check,
    machine: &MachineAddr,
    env: &BTreeMap<String, String>,
    cancel: &CancellationToken,
) -> Option<CheckResult> {
    let started = Instant::now();
    let mut attempts = 0;
    let (passed, detail) = loop {
        attempts += 1;
        let outcome = tokio::select! {
            r = probe(check, machine, env) => r,
            _ = cancel.cancelled() => return None,
        };
        match outcome {
            Ok(seen) => break (true, seen),
            Err(why) if attempts > check.retries => break (false, why),
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(check.interval) => {}
                    _ = cancel.cancelled() => return None,
                }
            }
        }
    };
    Some(CheckResult {
        machine: machine.index,
        address: machine.address.clone(),
        check: check.name.clone(),
        passed,
        attempts,
        detail,
        ms: started.elapsed().as_millis().min(u64::MAX as u128) as u64,
    })
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
    if cancel.is_cancelled() {
        return Err(StepError::Cancelled);
    }
    if checks.is_empty() {
        return Ok(Report::default());
    }
    if machines.is_empty() {
        return Err(StepError::Failed(format!(
            "no machines recorded (outputs.machines is empty) to run {} check{} on",
            checks.len(),
            if checks.len() == 1 { "" } else { "s" }
        )));
    }
    let per_machine = machines.iter().map(|machine| async move {
        let mut results = Vec::with_capacity(checks.len());
        for check in checks {
            let result = run_one(check, machine, env, cancel).await?;
            log.line(result.line());
            results.push(result);
        }
        Some(results)
    });
    let all = futures::future::join_all(per_machine).await;
    let mut report = Report::default();
    for results in all {
        report.results.extend(results.ok_or(StepError::Cancelled)?);
    }
    Ok(report)
}

/// The `verify_machines` step, whichever provider made the machines: runs
/// the cluster's acceptance checks (`spec.checks`) against every machine in
/// its outputs (`outputs.machines`), with the settings in scope as the exec
/// checks' environment. The report is the step's outputs (`checks`), kept
/// with the run and the resource whether the checks passed or not; a failed
/// check fails the step, naming the check, the machine and what it saw, and
/// leaves the machines running.
pub(crate) async fn verify_machines(
    req: &StepRequest,
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<Object, Fail> {
    let checks = parse_checks(&req.spec)?;
    if checks.is_empty() {
        log.line("no checks declared (spec.checks): nothing to verify");
        return Ok(Report::default().to_outputs());
    }
    let machines = machines_of(&req.outputs);
    log.line(format!(
        "running {} check{} on {} machine{}",
        checks.len(),
        if checks.len() == 1 { "" } else { "s" },
        machines.len(),
        if machines.len() == 1 { "" } else { "s" }
    ));
    let report = run_checks(&checks, &machines, &req.settings, log, cancel).await?;
    let outputs = report.to_outputs();
    match report.failure() {
        None => {
            log.line(format!(
                "every check passed on every machine ({} results)",
                report.results.len()
            ));
            Ok(outputs)
        }
        Some(error) => {
            log.line(format!(
                "verification failed: {error}; the machines are kept for debugging"
            ));
            Err(Fail {
                error: StepError::Failed(error),
                outputs,
            })
        }
    }
}

#[cfg(test)]
mod tests;
