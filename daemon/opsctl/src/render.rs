//! Everything `opsctl` prints on stdout, in both output formats: JSON documents
//! for scripts and aligned tables for people. Commands hand their answers here
//! and never format output themselves.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use clap::ValueEnum;
use opsd_proto::json::struct_value;
use opsd_proto::prost_types::Timestamp;
use opsd_proto::time;
use opsd_proto::v1::watch_event::Type as WatchEventType;
use opsd_proto::v1::{
    EffectiveSetting, KindInfo, Member, MemberRole, MembersResponse, Reachability, Resource, Run, RunOutcome, Setting,
    StatusResponse, TransitionStats, WatchEvent,
};
use serde_json::{json, Value};

use crate::spec::ResourceRef;

mod checks;

pub use checks::check_results;

/// The widest a setting's value is shown in a table; longer values are cut
/// (`settings get` shows the whole value).
const VALUE_COLUMN_WIDTH: usize = 60;

/// The widest a kind's state list is shown in `kinds ls` (`kinds show` shows
/// them all).
const STATES_COLUMN_WIDTH: usize = 60;

/// The widest an error is shown in a run table (`run RUN_ID` shows it whole).
const ERROR_COLUMN_WIDTH: usize = 50;

/// The last millisecond RFC 3339 timestamps can show (the end of year 9999).
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns and key/value blocks for people.
    Table,
    /// One JSON document on stdout (an object, or an array for listings).
    Json,
}

/// Prints answers to stdout in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    format: OutputFormat,
}

impl Printer {
    /// A printer for the given format.
    pub fn new(format: OutputFormat) -> Self {
        Self { format }
    }

    /// The format it prints in.
    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// `status`: this node's view of the cluster.
    pub fn status(&self, status: &StatusResponse) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &status_json(status));
        }
        let leader = match (status.leader_id, status.leader_addr.as_str()) {
            (0, _) => "none known".to_string(),
            (id, "") => id.to_string(),
            (id, addr) => format!("{id} at {addr}"),
        };
        let fields = [
            ("node", status.node_id.to_string()),
            ("role", status.role.clone()),
            ("cluster", status.cluster_id.clone()),
            ("leader", leader),
            ("term", status.term.to_string()),
            ("last log index", status.last_log_index.to_string()),
            ("applied index", status.applied_index.to_string()),
            ("snapshot index", status.snapshot_index.to_string()),
            ("purged index", status.purged_index.to_string()),
            ("version", status.version.clone()),
        ];
        let mut block = Table::new(&["", ""]);
        for (name, value) in fields {
            block.row(vec![name.to_string(), value]);
        }
        if !status.problem.is_empty() {
            block.row(vec!["problem".to_string(), status.problem.clone()]);
        }
        block.write_rows(&mut out)?;
        writeln!(out)?;
        writeln!(out, "members:")?;
        member_table(&status.members, Some(status.leader_id), false).write(&mut out)
    }

    /// `cluster members`: the members as the leader sees them, with whether
    /// each answers it and how far behind it is. When the answer is a
    /// follower's own view, a note on stderr says so.
    pub fn members(&self, answer: &MembersResponse) -> io::Result<()> {
        if !answer.leader_view {
            let leader = match answer.leader_id {
                0 => "no leader is known to it".to_string(),
                id => format!("the leader (node {id}) did not answer it"),
            };
            eprintln!(
                "note: node {}'s own view, since {leader}: roles are as it knows them; reachability and lag are known only to the leader",
                answer.answered_by
            );
        }
        let mut out = io::stdout().lock();
        match self.format {
            OutputFormat::Json => write_json(&mut out, &members_json(&answer.members)),
            OutputFormat::Table => {
                member_table(&answer.members, Some(answer.leader_id), answer.leader_view).write(&mut out)
            }
        }
    }

    /// `cluster remove`: the members left.
    pub fn membership(&self, members: &[Member]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        match self.format {
            OutputFormat::Json => write_json(&mut out, &members_json(members)),
            OutputFormat::Table => member_table(members, None, false).write(&mut out),
        }
    }

    /// `cluster join-token`: the token alone (so `$(opsctl cluster
    /// join-token)` is the token), or an object with token, id and
    /// expires_at_ms.
    pub fn join_token(&self, answer: &opsd_proto::v1::CreateJoinTokenResponse) -> io::Result<()> {
        let mut out = io::stdout().lock();
        match self.format {
            OutputFormat::Json => write_json(
                &mut out,
                &serde_json::json!({
                    "token": answer.token,
                    "id": answer.id,
                    "expires_at_ms": answer.expires_at_ms,
                }),
            ),
            OutputFormat::Table => writeln!(out, "{}", answer.token),
        }
    }

    /// `settings get`: the bare value (so `$(opsctl settings get k)` is the
    /// value), or the whole setting in JSON.
    pub fn setting_value(&self, setting: &Setting) -> io::Result<()> {
        let mut out = io::stdout().lock();
        match self.format {
            OutputFormat::Json => write_json(&mut out, &setting_json(setting)),
            OutputFormat::Table => writeln!(out, "{}", setting.value),
        }
    }

    /// `settings ls`: settings in key order.
    pub fn settings(&self, settings: &[Setting]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            let list = settings.iter().map(setting_json).collect();
            return write_json(&mut out, &Value::Array(list));
        }
        let mut table = Table::new(&["KEY", "VALUE", "MOD_REVISION"]);
        for setting in settings {
            table.row(vec![
                one_line(&setting.key, None),
                one_line(&setting.value, Some(VALUE_COLUMN_WIDTH)),
                setting.mod_revision.to_string(),
            ]);
        }
        table.write(&mut out)
    }

    /// `settings effective`: the settings in scope of a resource, in key
    /// order, each with the settings key it comes from; in JSON an array of
    /// {key, value, source}.
    pub fn effective_settings(&self, settings: &[EffectiveSetting]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            let list = settings
                .iter()
                .map(|s| json!({"key": s.key, "value": s.value, "source": s.source, "secret": s.secret}))
                .collect();
            return write_json(&mut out, &Value::Array(list));
        }
        let mut table = Table::new(&["KEY", "VALUE", "FROM"]);
        for s in settings {
            table.row(vec![
                one_line(&s.key, None),
                one_line(&s.value, Some(VALUE_COLUMN_WIDTH)),
                one_line(&s.source, None),
            ]);
        }
        table.write(&mut out)
    }

    /// `settings put` and `settings rm`: the revision of the change and the
    /// setting as it was before it, if there was one.
    pub fn revision(&self, revision: u64, previous: Option<&Setting>) -> io::Result<()> {
        let mut out = io::stdout().lock();
        match self.format {
            OutputFormat::Json => {
                let previous = previous.map_or(Value::Null, setting_json);
                write_json(&mut out, &json!({ "revision": revision, "previous": previous }))
            }
            OutputFormat::Table => writeln!(out, "revision {revision}"),
        }
    }

    /// `settings watch`: one line per event, flushed at once so a pipe sees it
    /// as it happens. In JSON each line is one compact object; this is the
    /// one command whose JSON output is a stream rather than one document.
    pub fn watch_event(&self, event: &WatchEvent) -> io::Result<()> {
        let mut out = io::stdout().lock();
        let kind = WatchEventType::try_from(event.r#type)
            .map(|t| t.as_str_name().to_string())
            .unwrap_or_else(|_| format!("UNKNOWN({})", event.r#type));
        let is_put = event.r#type == WatchEventType::Put as i32;
        let (key, value) = match &event.setting {
            Some(setting) => (setting.key.as_str(), setting.value.as_str()),
            None => ("", ""),
        };
        match self.format {
            OutputFormat::Json => {
                let value = if is_put { json!(value) } else { Value::Null };
                let line = json!({
                    "type": kind,
                    "key": key,
                    "value": value,
                    "revision": event.revision,
                });
                serde_json::to_writer(&mut out, &line)?;
                writeln!(out)?;
            }
            OutputFormat::Table if is_put => writeln!(
                out,
                "{kind} {}={} rev={}",
                one_line(key, None),
                one_line(value, None),
                event.revision
            )?,
            OutputFormat::Table => writeln!(out, "{kind} {} rev={}", one_line(key, None), event.revision)?,
        }
        out.flush()
    }

    /// `kinds apply`: the kind as registered: its name and the version (log
    /// index) of this apply. JSON: the whole kind (see [`kind_json`]).
    pub fn kind_applied(&self, kind: &KindInfo) -> io::Result<()> {
        let mut out = io::stdout().lock();
        match self.format {
            OutputFormat::Json => write_json(&mut out, &kind_json(kind)),
            OutputFormat::Table => writeln!(out, "kind {} version {}", one_line(&kind.name, None), kind.version),
        }
    }

    /// `kinds ls`: the kinds, built-in and registered.
    pub fn kinds(&self, kinds: &[KindInfo]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &kinds.iter().map(kind_json).collect());
        }
        let mut table = Table::new(&["NAME", "PROVIDER", "INITIAL", "STATES", "BUILTIN", "VERSION"]);
        for kind in kinds {
            table.row(vec![
                one_line(&kind.name, None),
                one_line(&kind.provider, None),
                one_line(&kind.initial, None),
                one_line(&kind.states.join(","), Some(STATES_COLUMN_WIDTH)),
                yes_no(kind.builtin).to_string(),
                kind.version.to_string(),
            ]);
        }
        table.write(&mut out)
    }

    /// `kinds show`: one kind, then its source as applied.
    pub fn kind(&self, kind: &KindInfo) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &kind_json(kind));
        }
        key_values(&[
            ("name", one_line(&kind.name, None)),
            ("builtin", yes_no(kind.builtin).to_string()),
            ("version", kind.version.to_string()),
            ("provider", one_line(&kind.provider, None)),
            ("initial", one_line(&kind.initial, None)),
            ("states", one_line(&kind.states.join(", "), None)),
        ])
        .write_rows(&mut out)?;
        writeln!(out)?;
        writeln!(out, "source:")?;
        write!(out, "{}", kind.source)?;
        if !kind.source.ends_with('\n') {
            writeln!(out)?;
        }
        Ok(())
    }

    /// `ls`: resources by kind and name.
    pub fn resources(&self, resources: &[Resource]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &resources.iter().map(resource_json).collect());
        }
        let mut table = Table::new(&["KIND", "NAME", "STATE", "VERSION", "ACTIVE_RUN", "UPDATED"]);
        for resource in resources {
            table.row(vec![
                one_line(&resource.kind, None),
                one_line(&resource.name, None),
                one_line(&resource.state, None),
                resource.version.to_string(),
                dash_if_empty(one_line(&resource.active_run_id, None)),
                time_text(time_ms(resource.updated_at.as_ref())),
            ]);
        }
        table.write(&mut out)
    }

    /// `get`, and what a change prints when it started no run: one resource as
    /// key/value lines with its spec and outputs as indented JSON.
    pub fn resource(&self, resource: &Resource) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &resource_json(resource));
        }
        key_values(&[
            ("kind", one_line(&resource.kind, None)),
            ("name", one_line(&resource.name, None)),
            ("state", one_line(&resource.state, None)),
            ("version", resource.version.to_string()),
            ("labels", dash_if_empty(one_line(&map_text(&resource.labels), None))),
            ("active run", dash_if_empty(one_line(&resource.active_run_id, None))),
            ("created", time_text(time_ms(resource.created_at.as_ref()))),
            ("updated", time_text(time_ms(resource.updated_at.as_ref()))),
        ])
        .write_rows(&mut out)?;
        write_json_section(&mut out, "spec", &struct_value(resource.spec.as_ref()))?;
        write_json_section(&mut out, "outputs", &struct_value(resource.outputs.as_ref()))
    }

    /// `delete` of a resource in a final state: it is gone.
    pub fn deleted(&self, target: &ResourceRef) -> io::Result<()> {
        let mut out = io::stdout().lock();
        match self.format {
            OutputFormat::Json => write_json(
                &mut out,
                &json!({ "deleted": true, "kind": target.kind, "name": target.name }),
            ),
            OutputFormat::Table => writeln!(out, "deleted {}", one_line(&target.to_string(), None)),
        }
    }

    /// `runs`: one line per run. JSON: an array of runs (see [`run_json`]).
    pub fn runs(&self, runs: &[Run]) -> io::Result<()> {
        self.run_list(runs, RunColumns::What)
    }

    /// `history`: one line per run, with who asked for it and why. JSON:
    /// an array of runs, as `runs` prints them.
    pub fn history(&self, runs: &[Run]) -> io::Result<()> {
        self.run_list(runs, RunColumns::WhoAndWhy)
    }

    fn run_list(&self, runs: &[Run], columns: RunColumns) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &runs.iter().map(run_json).collect());
        }
        run_table(runs, columns).write(&mut out)
    }

    /// What `create`, `do`, `delete` and `cancel` print: one run, as a
    /// one-row table or, in JSON, one run object.
    pub fn run_summary(&self, run: &Run) -> io::Result<()> {
        let mut out = io::stdout().lock();
        match self.format {
            OutputFormat::Json => write_json(&mut out, &run_json(run)),
            OutputFormat::Table => run_table(std::slice::from_ref(run), RunColumns::What).write(&mut out),
        }
    }

    /// What `create`, `do` and `delete` print with `-q`: the run's id alone.
    pub fn run_id(&self, run: &Run) -> io::Result<()> {
        writeln!(io::stdout().lock(), "{}", run.run_id)
    }

    /// What `--wait` prints once every run of the change succeeded: the runs
    /// waited for, one line each, or in JSON the last of them (one object).
    pub fn waited_runs(&self, runs: &[Run]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        match (self.format, runs.last()) {
            (OutputFormat::Json, Some(last)) => write_json(&mut out, &run_json(last)),
            (OutputFormat::Json, None) => write_json(&mut out, &Value::Null),
            (OutputFormat::Table, _) => run_table(runs, RunColumns::What).write(&mut out),
        }
    }

    /// `run RUN_ID`: every field of one run, its args and outputs, and its
    /// error in full.
    pub fn run(&self, run: &Run) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &run_json(run));
        }
        let duration = run_duration_ms(run);
        key_values(&[
            ("run", one_line(&run.run_id, None)),
            ("resource", one_line(&format!("{}/{}", run.kind, run.name), None)),
            ("event", one_line(&run.event, None)),
            ("transition", one_line(&transition_text(run, " -> "), None)),
            ("outcome", run.outcome().label().to_string()),
            ("attempt", run.attempt.to_string()),
            ("node", run.node_id.to_string()),
            ("principal", dash_if_empty(one_line(&run.principal, None))),
            ("reason", dash_if_empty(one_line(&run.reason, None))),
            ("source", run.source().label().to_string()),
            ("args", dash_if_empty(one_line(&map_text(&run.args), None))),
            ("index", run.index.to_string()),
            ("started", time_text(time_ms(run.started_at.as_ref()))),
            ("finished", time_text(time_ms(run.finished_at.as_ref()))),
            ("duration", duration.map_or_else(|| "-".to_string(), duration_text)),
            ("cancel requested", yes_no(run.cancel_requested).to_string()),
        ])
        .write_rows(&mut out)?;
        write_json_section(&mut out, "outputs", &struct_value(run.outputs.as_ref()))?;
        if !run.error.is_empty() {
            writeln!(out)?;
            writeln!(out, "error:")?;
            for line in run.error.lines() {
                writeln!(out, "  {}", one_line(line, None))?;
            }
        }
        Ok(())
    }

    /// `stats`: one row per kind and transition, durations of successful runs
    /// and the mean duration of failed ones.
    pub fn stats(&self, transitions: &[TransitionStats]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.format == OutputFormat::Json {
            return write_json(&mut out, &transitions.iter().map(stats_json).collect());
        }
        let mut table = Table::new(&[
            "KIND",
            "FROM",
            "TO",
            "COUNT",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
            "INTERRUPTED",
            "MEAN",
            "P50",
            "P95",
            "MAX",
            "FAIL_MEAN",
        ]);
        for t in transitions {
            let successes = t.succeeded > 0;
            let success_ms = |ms: f64| {
                if successes {
                    float_duration_text(ms)
                } else {
                    "-".to_string()
                }
            };
            table.row(vec![
                one_line(&t.kind, None),
                dash_if_empty(one_line(&t.from, None)),
                one_line(&t.to, None),
                t.count.to_string(),
                t.succeeded.to_string(),
                t.failed.to_string(),
                t.cancelled.to_string(),
                t.interrupted.to_string(),
                success_ms(t.mean_ms),
                success_ms(t.p50_ms),
                success_ms(t.p95_ms),
                success_ms(t.max_ms),
                if t.failed > 0 {
                    float_duration_text(t.fail_mean_ms)
                } else {
                    "-".to_string()
                },
            ]);
        }
        table.write(&mut out)
    }

    /// `logs`: lines of a run's log, the first of them at position `first`
    /// (0-based), flushed at once so a pipe sees them as they come. Table
    /// output prints each line as it is; JSON prints one compact object per
    /// line, `{"run_id", "line_no", "line"}`, like `settings watch` a stream
    /// rather than one document.
    pub fn log_lines(&self, run_id: &str, first: u64, lines: &[String]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        for (line_no, line) in (first..).zip(lines) {
            match self.format {
                OutputFormat::Json => {
                    let object = json!({ "run_id": run_id, "line_no": line_no, "line": line });
                    serde_json::to_writer(&mut out, &object)?;
                    writeln!(out)?;
                }
                OutputFormat::Table => writeln!(out, "{line}")?,
            }
        }
        out.flush()
    }
}

/// The JSON form of a kind: `name`, `builtin`, `version`, `provider`,
/// `initial`, `states` (sorted) and `source` (the kind file as applied).
pub fn kind_json(kind: &KindInfo) -> Value {
    json!({
        "name": kind.name,
        "builtin": kind.builtin,
        "version": kind.version,
        "provider": kind.provider,
        "initial": kind.initial,
        "states": kind.states,
        "source": kind.source,
    })
}

/// The JSON form of a resource: `kind`, `name`, `state`, `version`, `spec`
/// and `outputs` (objects), `labels`, `active_run_id` (null if none),
/// `working`, `final`, and `created_at`/`updated_at` (RFC 3339, UTC, with
/// milliseconds).
pub fn resource_json(resource: &Resource) -> Value {
    json!({
        "kind": resource.kind,
        "name": resource.name,
        "state": resource.state,
        "version": resource.version,
        "spec": struct_value(resource.spec.as_ref()),
        "outputs": struct_value(resource.outputs.as_ref()),
        "labels": sorted_map_json(&resource.labels),
        "active_run_id": null_if_empty(&resource.active_run_id),
        "working": resource.working,
        "final": resource.r#final,
        "created_at": time_json(time_ms(resource.created_at.as_ref())),
        "updated_at": time_json(time_ms(resource.updated_at.as_ref())),
    })
}

/// The JSON form of a run: `run_id`, `kind`, `name`, `event`, `from`, `to`,
/// `outcome`, `attempt`, `node_id`, `principal`, `reason`, `source`, `args`,
/// `index`, `started_at` and `finished_at` (RFC 3339; `finished_at` and
/// `duration_ms` are null while running), `error` (null if none), `outputs`
/// (an object) and `cancel_requested`.
pub fn run_json(run: &Run) -> Value {
    json!({
        "run_id": run.run_id,
        "kind": run.kind,
        "name": run.name,
        "event": run.event,
        "from": run.from,
        "to": run.to,
        "outcome": run.outcome().label(),
        "attempt": run.attempt,
        "node_id": run.node_id,
        "principal": run.principal,
        "reason": run.reason,
        "source": run.source().label(),
        "args": sorted_map_json(&run.args),
        "index": run.index,
        "started_at": time_json(time_ms(run.started_at.as_ref())),
        "finished_at": time_json(time_ms(run.finished_at.as_ref())),
        "duration_ms": run_duration_ms(run),
        "error": null_if_empty(&run.error),
        "outputs": struct_value(run.outputs.as_ref()),
        "cancel_requested": run.cancel_requested,
    })
}

/// The JSON form of one transition's stats, under the proto field names.
fn stats_json(t: &TransitionStats) -> Value {
    json!({
        "kind": t.kind,
        "from": t.from,
        "to": t.to,
        "count": t.count,
        "succeeded": t.succeeded,
        "failed": t.failed,
        "cancelled": t.cancelled,
        "interrupted": t.interrupted,
        "mean_ms": t.mean_ms,
        "p50_ms": t.p50_ms,
        "p95_ms": t.p95_ms,
        "max_ms": t.max_ms,
        "fail_mean_ms": t.fail_mean_ms,
    })
}

/// A time from the API as milliseconds since the Unix epoch: 0 (not set)
/// when absent or malformed.
fn time_ms(t: Option<&Timestamp>) -> i64 {
    t.and_then(|t| time::timestamp_ms("time", t).ok()).unwrap_or(0)
}

/// How long a finished run took, in milliseconds; `None` while it runs.
pub fn run_duration_ms(run: &Run) -> Option<u64> {
    run.finished_at.as_ref()?;
    Some(time::optional_duration_ms("duration", run.duration.as_ref()).unwrap_or(0))
}

/// A string map as a JSON object with its keys in order.
fn sorted_map_json(map: &HashMap<String, String>) -> Value {
    let sorted: BTreeMap<&String, &String> = map.iter().collect();
    json!(sorted)
}

/// A string map as `k=v, k=v` with keys in order.
fn map_text(map: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = map.iter().collect();
    sorted
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Empty text as JSON null, else the text.
fn null_if_empty(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_string())
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds,
/// e.g. `2024-05-01T12:00:00.250Z`; `None` for 0 (not set) and for times
/// RFC 3339 cannot show.
pub fn rfc3339_millis(ms: i64) -> Option<String> {
    if !(1..=MAX_TIMESTAMP_MS).contains(&ms) {
        return None;
    }
    let time = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    Some(humantime::format_rfc3339_millis(time).to_string())
}

/// A time for JSON: RFC 3339, or null when not set.
fn time_json(ms: i64) -> Value {
    rfc3339_millis(ms).map_or(Value::Null, Value::String)
}

/// A time for a table: RFC 3339 to the second, or `-` when not set.
fn time_text(ms: i64) -> String {
    if !(1..=MAX_TIMESTAMP_MS).contains(&ms) {
        return "-".to_string();
    }
    let time = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A duration in milliseconds for people: `850ms`, `4.2s`, `3m05s`, `2h07m`,
/// `3d04h`.
pub fn duration_text(ms: u64) -> String {
    const MINUTE: u64 = 60_000;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..MINUTE => format!("{:.1}s", ms as f64 / 1000.0),
        MINUTE..HOUR => format!("{}m{:02}s", ms / MINUTE, ms % MINUTE / 1000),
        HOUR..DAY => format!("{}h{:02}m", ms / HOUR, ms % HOUR / MINUTE),
        _ => format!("{}d{:02}h", ms / DAY, ms % DAY / HOUR),
    }
}

/// A duration from stats (a mean or a percentile, fractional milliseconds).
fn float_duration_text(ms: f64) -> String {
    if ms.is_finite() && ms >= 0.0 {
        duration_text(ms.round() as u64)
    } else {
        "-".to_string()
    }
}

/// A run's transition, `from` and `to` joined by `arrow`; a run with no
/// `from` (the first run of a new resource) shows `-` there.
pub fn transition_text(run: &Run, arrow: &str) -> String {
    let from = if run.from.is_empty() { "-" } else { run.from.as_str() };
    format!("{from}{arrow}{}", run.to)
}

/// Which columns a table of runs has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunColumns {
    /// What each run did.
    What,
    /// And who asked for it and why (the audit trail: `history`).
    WhoAndWhy,
}

/// The widest reason shown in a table of runs; `run RUN_ID` shows it whole.
const REASON_COLUMN_WIDTH: usize = 40;

/// Runs as a table: one line each.
fn run_table(runs: &[Run], columns: RunColumns) -> Table {
    let who = columns == RunColumns::WhoAndWhy;
    let mut header = vec!["RUN", "RESOURCE", "EVENT", "TRANSITION", "OUTCOME"];
    if who {
        header.extend(["BY", "REASON"]);
    }
    header.extend(["ATTEMPT", "NODE", "DURATION", "STARTED", "ERROR"]);
    let mut table = Table::new(&header);
    for run in runs {
        let duration = run_duration_ms(run).map_or_else(|| "-".to_string(), duration_text);
        let outcome = if run.cancel_requested && run.outcome() == RunOutcome::Running {
            "running (cancelling)".to_string()
        } else {
            run.outcome().label().to_string()
        };
        let mut row = vec![
            one_line(&run.run_id, None),
            one_line(&format!("{}/{}", run.kind, run.name), None),
            one_line(&run.event, None),
            one_line(&transition_text(run, "→"), None),
            outcome,
        ];
        if who {
            row.push(dash_if_empty(one_line(&run.principal, None)));
            row.push(dash_if_empty(one_line(&run.reason, Some(REASON_COLUMN_WIDTH))));
        }
        row.extend([
            run.attempt.to_string(),
            run.node_id.to_string(),
            duration,
            time_text(time_ms(run.started_at.as_ref())),
            one_line(&run.error, Some(ERROR_COLUMN_WIDTH)),
        ]);
        table.row(row);
    }
    table
}

/// A key/value block.
pub(crate) fn key_values(fields: &[(&str, String)]) -> Table {
    let mut block = Table::new(&["", ""]);
    for (name, value) in fields {
        block.row(vec![name.to_string(), value.clone()]);
    }
    block
}

/// A titled, indented, pretty-printed JSON value after a blank line.
fn write_json_section(out: &mut impl Write, title: &str, value: &Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    writeln!(out)?;
    writeln!(out, "{title}:")?;
    for line in text.lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// `yes` or `no`.
pub(crate) fn yes_no(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

/// `-` for an empty cell, so a blank is never mistaken for a missing column.
pub(crate) fn dash_if_empty(text: String) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text
    }
}

/// The JSON form of `status`: every field of the answer, under its proto name.
fn status_json(status: &StatusResponse) -> Value {
    json!({
        "node_id": status.node_id,
        "cluster_id": status.cluster_id,
        "leader_id": status.leader_id,
        "leader_addr": status.leader_addr,
        "term": status.term,
        "role": status.role,
        "last_log_index": status.last_log_index,
        "applied_index": status.applied_index,
        "snapshot_index": status.snapshot_index,
        "purged_index": status.purged_index,
        "members": members_json(&status.members),
        "version": status.version,
        "problem": status.problem,
    })
}

/// The JSON form of a membership: an array of members. `role` is
/// `leader`, `follower`, `learner` (or `voter` from an older server);
/// `reachability`, `since_contact_ms`, `matched_index` and `lag` are the
/// leader's knowledge (`unknown` and null elsewhere).
fn members_json(members: &[Member]) -> Value {
    members
        .iter()
        .map(|m| {
            let known = m.reachability() != Reachability::Unknown;
            let number = |n: u64| if known { json!(n) } else { Value::Null };
            json!({
                "id": m.id,
                "addr": m.addr,
                "peer_addr": m.peer_addr,
                "voter": m.voter,
                "role": member_role(m, None),
                "reachability": reachability_name(m.reachability()),
                "since_contact_ms": m.since_contact.as_ref().map_or(Value::Null, |d| json!(duration_ms(d))),
                "matched_index": number(m.matched_index),
                "lag": number(m.lag),
            })
        })
        .collect()
}

/// A member's role: as the server says, or (from a server older than the
/// field) from the voter flag and the leader's id.
fn member_role(member: &Member, leader: Option<u64>) -> &'static str {
    match member.role() {
        MemberRole::Leader => "leader",
        MemberRole::Follower => "follower",
        MemberRole::Learner => "learner",
        MemberRole::Unspecified if leader == Some(member.id) => "leader",
        MemberRole::Unspecified if member.voter => "voter",
        MemberRole::Unspecified => "learner",
    }
}

fn reachability_name(r: Reachability) -> &'static str {
    match r {
        Reachability::Unknown => "unknown",
        Reachability::Reachable => "reachable",
        Reachability::Unreachable => "unreachable",
    }
}

/// A protobuf duration in whole milliseconds (negative ones as 0).
fn duration_ms(d: &opsd_proto::prost_types::Duration) -> u64 {
    let ms = d
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos / 1_000_000));
    u64::try_from(ms).unwrap_or(0)
}

/// What the leader knows of a member's contact, for a table cell.
fn contact_text(member: &Member) -> String {
    let since = member.since_contact.as_ref().map(duration_ms);
    match (member.reachability(), since) {
        (Reachability::Reachable, _) => "reachable".to_string(),
        (Reachability::Unreachable, Some(ms)) => format!("unreachable for {}", duration_text(ms)),
        (Reachability::Unreachable, None) => "unreachable".to_string(),
        (Reachability::Unknown, _) => "-".to_string(),
    }
}

/// The JSON form of a setting, under its proto field names.
fn setting_json(setting: &Setting) -> Value {
    json!({
        "key": setting.key,
        "value": setting.value,
        "create_revision": setting.create_revision,
        "mod_revision": setting.mod_revision,
        "version": setting.version,
        "changed_by": setting.changed_by,
        "change_reason": setting.change_reason,
        "changed_at": time_json(time_ms(setting.changed_at.as_ref())),
        "secret": setting.secret,
    })
}

/// A membership as a table; `leader` marks the leader's row for a server
/// older than the role field. With `health`, the leader's knowledge too:
/// whether each member answers it, its matched index and its lag.
fn member_table(members: &[Member], leader: Option<u64>, health: bool) -> Table {
    let mut header = vec!["ID", "ADDR", "PEER_ADDR", "ROLE"];
    if health {
        header.extend(["CONTACT", "MATCHED", "LAG"]);
    }
    let mut table = Table::new(&header);
    for member in members {
        let mut row = vec![
            member.id.to_string(),
            one_line(&member.addr, None),
            one_line(&member.peer_addr, None),
            member_role(member, leader).to_string(),
        ];
        if health {
            row.extend([
                contact_text(member),
                member.matched_index.to_string(),
                member.lag.to_string(),
            ]);
        }
        table.row(row);
    }
    table
}

/// Writes one pretty-printed JSON document and a newline.
pub(crate) fn write_json(out: &mut impl Write, value: &Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// Makes text safe for one table cell or line: control characters (newlines,
/// tabs, escapes) are shown escaped, and with `max` the text is cut to that
/// many characters, ending in `…`.
pub(crate) fn one_line(text: &str, max: Option<usize>) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    match max {
        Some(max) if escaped.chars().count() > max => {
            let mut cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
        _ => escaped,
    }
}

/// Rows of cells printed in aligned columns, separated by two spaces. The only
/// table renderer in `opsctl`.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row with one cell per column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes the header and the rows.
    pub(crate) fn write(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_lines(out, true)
    }

    /// Writes the rows only (a key/value block).
    pub(crate) fn write_rows(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_lines(out, false)
    }

    fn write_lines(&self, out: &mut impl Write, with_header: bool) -> io::Result<()> {
        let header = with_header.then_some(&self.header);
        let lines: Vec<&Vec<String>> = header.into_iter().chain(&self.rows).collect();
        let mut widths = vec![0; self.header.len()];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for line in lines {
            let mut text = String::new();
            for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if i + 1 == line.len() {
                    text.push_str(cell);
                } else {
                    let pad = width - cell.chars().count();
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad + 2));
                }
            }
            writeln!(out, "{}", text.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use opsd_proto::json::to_struct;
    use opsd_proto::prost_types::Struct;
    use opsd_proto::v1::TriggerSource;

    use super::*;

    fn object(value: Value) -> Struct {
        match value {
            Value::Object(object) => to_struct(object),
            _ => unreachable!("a test object"),
        }
    }

    #[test]
    fn one_line_escapes_control_characters() {
        assert_eq!(one_line("a\nb\tc", None), "a\\nb\\tc");
    }

    #[test]
    fn one_line_cuts_long_text_with_an_ellipsis() {
        assert_eq!(one_line("abcdef", Some(4)), "abc…");
        assert_eq!(one_line("abcd", Some(4)), "abcd");
        assert_eq!(one_line("abc", Some(4)), "abc");
        assert_eq!(one_line("ééééé", Some(3)), "éé…");
    }

    fn finished_run() -> Run {
        Run {
            run_id: "r7".into(),
            kind: "app".into(),
            name: "web".into(),
            event: "deploy".into(),
            from: "ready".into(),
            to: "deploying".into(),
            outcome: RunOutcome::Failed as i32,
            attempt: 2,
            node_id: 3,
            principal: "alice".into(),
            reason: "release 2".into(),
            source: TriggerSource::Api as i32,
            started_at: Some(time::timestamp(1_714_564_800_250)),
            finished_at: Some(time::timestamp(1_714_564_803_750)),
            duration: Some(time::duration(3_500)),
            error: "exit status 1".into(),
            outputs: Some(object(json!({"url": "http://web"}))),
            args: HashMap::from([("version".to_string(), "2".to_string())]),
            cancel_requested: false,
            index: 42,
        }
    }

    #[test]
    fn run_json_has_every_field_with_rfc3339_times() {
        let value = run_json(&finished_run());
        assert_eq!(
            value,
            json!({
                "run_id": "r7", "kind": "app", "name": "web", "event": "deploy",
                "from": "ready", "to": "deploying", "outcome": "failed", "attempt": 2,
                "node_id": 3, "principal": "alice", "reason": "release 2", "source": "api",
                "args": {"version": "2"}, "index": 42,
                "started_at": "2024-05-01T12:00:00.250Z", "finished_at": "2024-05-01T12:00:03.750Z",
                "duration_ms": 3500, "error": "exit status 1", "outputs": {"url": "http://web"},
                "cancel_requested": false,
            })
        );
    }

    #[test]
    fn a_running_run_has_null_end_duration_and_error() {
        let mut run = finished_run();
        run.outcome = RunOutcome::Running as i32;
        run.finished_at = None;
        run.duration = None;
        run.error = String::new();
        run.outputs = None;
        let value = run_json(&run);
        assert_eq!(value["finished_at"], Value::Null);
        assert_eq!(value["duration_ms"], Value::Null);
        assert_eq!(value["error"], Value::Null);
        assert_eq!(value["outputs"], json!({}));
    }

    #[test]
    fn resource_json_parses_spec_and_outputs() {
        let resource = Resource {
            kind: "app".into(),
            name: "web".into(),
            state: "ready".into(),
            version: 12,
            spec: Some(object(json!({"replicas": 2, "image": {"tag": "v2"}}))),
            outputs: None,
            labels: HashMap::from([("team".to_string(), "core".to_string())]),
            created_at: Some(time::timestamp(1_000)),
            updated_at: Some(time::timestamp(1_714_564_800_000)),
            active_run_id: String::new(),
            working: false,
            r#final: false,
        };
        assert_eq!(
            resource_json(&resource),
            json!({
                "kind": "app", "name": "web", "state": "ready", "version": 12,
                "spec": {"replicas": 2, "image": {"tag": "v2"}}, "outputs": {},
                "labels": {"team": "core"}, "active_run_id": null, "working": false, "final": false,
                "created_at": "1970-01-01T00:00:01.000Z", "updated_at": "2024-05-01T12:00:00.000Z",
            })
        );
        let mut busy = resource;
        busy.active_run_id = "r1".into();
        busy.spec = None;
        let value = resource_json(&busy);
        assert_eq!(value["active_run_id"], "r1");
        assert_eq!(value["spec"], json!({}));
    }

    #[test]
    fn times_out_of_range_are_not_shown() {
        assert_eq!(rfc3339_millis(0), None);
        assert_eq!(rfc3339_millis(-5), None);
        assert_eq!(rfc3339_millis(i64::MAX), None);
        assert_eq!(
            rfc3339_millis(MAX_TIMESTAMP_MS).as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
        assert_eq!(time_text(0), "-");
        assert_eq!(time_text(1_714_564_800_250), "2024-05-01T12:00:00Z");
    }

    #[test]
    fn a_first_run_without_a_from_state_shows_a_dash() {
        let mut run = finished_run();
        assert_eq!(transition_text(&run, "→"), "ready→deploying");
        run.from = String::new();
        assert_eq!(transition_text(&run, " -> "), "- -> deploying");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_text(0), "0ms");
        assert_eq!(duration_text(999), "999ms");
        assert_eq!(duration_text(4_250), "4.2s");
        assert_eq!(duration_text(185_000), "3m05s");
        assert_eq!(duration_text(7_620_000), "2h07m");
        assert_eq!(duration_text(273_600_000), "3d04h");
        assert_eq!(float_duration_text(1499.6), "1.5s");
        assert_eq!(float_duration_text(f64::NAN), "-");
    }

    #[test]
    fn run_table_shows_one_line_per_run() {
        let mut running = finished_run();
        running.run_id = "r8".into();
        running.outcome = RunOutcome::Running as i32;
        running.finished_at = None;
        running.error = String::new();
        let mut out = Vec::new();
        run_table(&[finished_run(), running], RunColumns::What)
            .write(&mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("RUN  RESOURCE  EVENT   TRANSITION"), "{text}");
        assert!(
            lines[1].contains("r7   app/web   deploy  ready→deploying  failed"),
            "{text}"
        );
        assert!(lines[1].contains("3.5s"), "{text}");
        assert!(lines[1].ends_with("2024-05-01T12:00:00Z  exit status 1"), "{text}");
        assert!(lines[2].contains("running"), "{text}");
    }

    #[test]
    fn history_shows_who_asked_and_why() {
        let mut unexplained = finished_run();
        unexplained.reason = String::new();
        let mut out = Vec::new();
        run_table(&[finished_run(), unexplained], RunColumns::WhoAndWhy)
            .write(&mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("OUTCOME  BY     REASON     ATTEMPT"), "{text}");
        assert!(lines[1].contains("failed   alice  release 2  "), "{text}");
        assert!(lines[2].contains("failed   alice  -          "), "{text}");
    }

    #[test]
    fn members_show_who_leads_and_who_is_down() {
        let member = |id: u64, role: MemberRole, reach: Reachability, since_ms: Option<i64>, lag: u64| Member {
            id,
            addr: format!("10.0.0.{id}:7700"),
            peer_addr: format!("10.0.0.{id}:7701"),
            voter: role != MemberRole::Learner,
            role: role as i32,
            reachability: reach as i32,
            since_contact: since_ms.map(|ms| opsd_proto::prost_types::Duration {
                seconds: ms / 1000,
                nanos: (ms % 1000) as i32 * 1_000_000,
            }),
            matched_index: 40 - lag,
            lag,
        };
        let members = [
            member(1, MemberRole::Leader, Reachability::Reachable, Some(0), 0),
            member(2, MemberRole::Follower, Reachability::Unreachable, Some(12_000), 7),
            member(3, MemberRole::Learner, Reachability::Reachable, Some(80), 0),
        ];
        let mut out = Vec::new();
        member_table(&members, Some(1), true).write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID  ADDR           PEER_ADDR      ROLE      CONTACT                MATCHED  LAG"
        );
        assert_eq!(
            lines[1],
            "1   10.0.0.1:7700  10.0.0.1:7701  leader    reachable              40       0"
        );
        assert_eq!(
            lines[2],
            "2   10.0.0.2:7700  10.0.0.2:7701  follower  unreachable for 12.0s  33       7"
        );
        assert!(lines[3].contains("learner"), "{text}");
        let json = members_json(&members);
        assert_eq!(
            json[1],
            json!({"id": 2, "addr": "10.0.0.2:7700", "peer_addr": "10.0.0.2:7701", "voter": true,
                   "role": "follower", "reachability": "unreachable", "since_contact_ms": 12000,
                   "matched_index": 33, "lag": 7})
        );
        // A member of a view that is not the leader's: no contact, no lag.
        let mut unknown = member(2, MemberRole::Follower, Reachability::Unknown, None, 0);
        unknown.matched_index = 0;
        let json = members_json(&[unknown]);
        assert_eq!(json[0]["reachability"], "unknown");
        assert_eq!(json[0]["lag"], Value::Null);
        assert_eq!(json[0]["since_contact_ms"], Value::Null);
    }

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut table = Table::new(&["KEY", "VALUE"]);
        table.row(vec!["a".into(), "1".into()]);
        table.row(vec!["long-key".into(), "".into()]);
        let mut out = Vec::new();
        table.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "KEY       VALUE\na         1\nlong-key\n");
    }
}
