//! What `verify` and `machines` print: acceptance check results per machine,
//! and a resource's machines with their state and the last checks' verdict.
//! Both read the JSON the local provider records (`outputs.machines`,
//! `outputs.checks`, docs/services.md) and tolerate anything missing.

use std::collections::BTreeMap;
use std::io::{self, Write};

use opsd_proto::json::struct_value;
use opsd_proto::v1::{Resource, Run};
use serde_json::{json, Value};

use super::{dash_if_empty, duration_text, one_line, run_json, write_json, OutputFormat, Printer, Table};

/// The widest a check's detail is shown in a table (`--output json` has it whole).
const DETAIL_COLUMN_WIDTH: usize = 80;

/// The check results in an outputs object (`checks.results`), in order.
pub fn check_results(outputs: &Value) -> Vec<Value> {
    outputs["checks"]["results"].as_array().cloned().unwrap_or_default()
}

/// A result's field as text, `-` when missing.
fn text(result: &Value, key: &str) -> String {
    match &result[key] {
        Value::String(s) => one_line(s, None),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// The machines of a resource's outputs, one JSON object each: `machine`,
/// `address`, `node`, `state` (`running` when a pid is recorded or the
/// record says `state = "running"`, as a container's does, else
/// `stopped`), `pid`, `port`, `dir`, `log`, `container`, `checks`
/// (`passed`, `failed` or null when no check ran on it) and `results` (its
/// check results).
pub fn machines_json(outputs: &Value) -> Vec<Value> {
    let mut results: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for r in check_results(outputs) {
        if let Some(m) = r["machine"].as_u64() {
            results.entry(m).or_default().push(r);
        }
    }
    let machines = outputs["machines"].as_array().cloned().unwrap_or_default();
    machines
        .iter()
        .filter_map(|m| {
            let index = m["index"].as_u64()?;
            let address = match (m["address"].as_str(), m["port"].as_u64()) {
                (Some(a), _) if !a.is_empty() => Value::from(a),
                (_, Some(port)) => Value::from(format!("127.0.0.1:{port}")),
                _ => Value::Null,
            };
            let mine = results.get(&index).cloned().unwrap_or_default();
            let checks = if mine.is_empty() {
                Value::Null
            } else if mine.iter().all(|r| r["passed"] == json!(true)) {
                json!("passed")
            } else {
                json!("failed")
            };
            let running = m["pid"].as_i64().is_some() || m["state"] == json!("running");
            Some(json!({
                "machine": index,
                "address": address,
                "node": m["node"],
                "state": if running { "running" } else { "stopped" },
                "pid": m["pid"],
                "port": m["port"],
                "dir": m["dir"],
                "log": m["log"],
                "container": m["container"],
                "checks": checks,
                "results": mine,
            }))
        })
        .collect()
}

impl Printer {
    /// `verify`: the check results of the verify run, one table per machine
    /// (MACHINE ADDRESS CHECK RESULT ATTEMPTS TIME DETAIL); JSON: the run,
    /// its outputs holding `checks`.
    pub fn verify_run(&self, run: &Run) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &run_json(run));
        }
        let outputs = struct_value(run.outputs.as_ref());
        let results = check_results(&outputs);
        if results.is_empty() {
            let why = if run.error.is_empty() {
                "no checks declared (spec.checks)".to_string()
            } else {
                one_line(&run.error, None)
            };
            return writeln!(out, "{}/{}: no check results: {why}", run.kind, run.name);
        }
        let mut by_machine: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
        for r in &results {
            by_machine
                .entry(r["machine"].as_u64().unwrap_or(u64::MAX))
                .or_default()
                .push(r);
        }
        let mut first = true;
        for rows in by_machine.values() {
            if !first {
                writeln!(out)?;
            }
            first = false;
            let mut table = Table::new(&["MACHINE", "ADDRESS", "CHECK", "RESULT", "ATTEMPTS", "TIME", "DETAIL"]);
            for r in rows {
                table.row(vec![
                    text(r, "machine"),
                    text(r, "address"),
                    text(r, "check"),
                    if r["passed"] == json!(true) { "passed" } else { "FAILED" }.to_string(),
                    text(r, "attempts"),
                    r["ms"].as_u64().map_or_else(|| "-".to_string(), duration_text),
                    dash_if_empty(one_line(r["detail"].as_str().unwrap_or(""), Some(DETAIL_COLUMN_WIDTH))),
                ]);
            }
            table.write(&mut out)?;
        }
        Ok(())
    }

    /// `machines`: MACHINE ADDRESS NODE STATE CHECKS; JSON: an array (see
    /// [`machines_json`]).
    pub fn machines(&self, resource: &Resource) -> io::Result<()> {
        let mut out = io::stdout().lock();
        let outputs = struct_value(resource.outputs.as_ref());
        let machines = machines_json(&outputs);
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &Value::Array(machines));
        }
        if machines.is_empty() {
            return writeln!(
                out,
                "{}/{} ({}) has no machines recorded",
                resource.kind, resource.name, resource.state
            );
        }
        let mut table = Table::new(&["MACHINE", "ADDRESS", "NODE", "STATE", "CHECKS"]);
        for m in &machines {
            let checks = match m["checks"].as_str() {
                None => "-".to_string(),
                Some("failed") => {
                    let failed: Vec<String> = m["results"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["passed"] != json!(true))
                        .map(|r| text(r, "check"))
                        .collect();
                    format!("failed ({})", failed.join(", "))
                }
                Some(verdict) => verdict.to_string(),
            };
            table.row(vec![
                text(m, "machine"),
                text(m, "address"),
                text(m, "node"),
                text(m, "state"),
                checks,
            ]);
        }
        table.write(&mut out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_carry_their_check_verdicts() {
        let outputs = json!({
            "machines": [
                {"index": 0, "node": 1, "pid": 42, "port": 8000, "address": "10.0.0.1:8000", "dir": "d", "log": "l"},
                {"index": 1, "node": 1, "pid": null, "port": 8001},
                {"index": 2, "node": 2, "port": 8002, "address": "10.0.0.2:8002"},
                {"bad": true},
            ],
            "checks": {"passed": false, "results": [
                {"machine": 0, "check": "health", "passed": true},
                {"machine": 1, "check": "health", "passed": true},
                {"machine": 1, "check": "port", "passed": false},
            ]},
        });
        let ms = machines_json(&outputs);
        assert_eq!(ms.len(), 3);
        assert_eq!(
            (&ms[0]["address"], &ms[0]["state"], &ms[0]["checks"]),
            (&json!("10.0.0.1:8000"), &json!("running"), &json!("passed"))
        );
        assert_eq!(
            (&ms[1]["address"], &ms[1]["state"], &ms[1]["checks"]),
            (&json!("127.0.0.1:8001"), &json!("stopped"), &json!("failed"))
        );
        assert_eq!(ms[1]["results"].as_array().unwrap().len(), 2);
        assert_eq!((&ms[2]["checks"], &ms[2]["node"]), (&Value::Null, &json!(2)));
        assert!(machines_json(&json!({})).is_empty());
        assert!(check_results(&json!({"checks": 3})).is_empty());
    }

    #[test]
    fn a_container_is_running_by_its_recorded_state() {
        let outputs = json!({"machines": [
            {"index": 0, "address": "172.18.0.2:8080", "container": "abc", "state": "running"},
            {"index": 1, "address": "172.18.0.3:8080", "container": "def", "state": "exited"},
        ]});
        let ms = machines_json(&outputs);
        assert_eq!(
            (&ms[0]["state"], &ms[0]["container"]),
            (&json!("running"), &json!("abc"))
        );
        assert_eq!(
            (&ms[1]["state"], &ms[1]["container"]),
            (&json!("stopped"), &json!("def"))
        );
    }
}
