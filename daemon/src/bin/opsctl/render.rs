//! Everything `opsctl` prints on stdout, in both output formats: JSON documents
//! for scripts and aligned tables for people. Commands hand their answers here
//! and never format output themselves.

use std::io::{self, Write};

use clap::ValueEnum;
use opsd_proto::v1::watch_event::Type as WatchEventType;
use opsd_proto::v1::{Member, Setting, StatusResponse, WatchEvent};
use serde_json::{json, Value};

/// The widest a setting's value is shown in a table; longer values are cut
/// (`settings get` shows the whole value).
const VALUE_COLUMN_WIDTH: usize = 60;

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
        block.write_rows(&mut out)?;
        writeln!(out)?;
        writeln!(out, "members:")?;
        member_table(&status.members, Some(status.leader_id)).write(&mut out)
    }

    /// `cluster members` and `cluster remove`: the membership.
    pub fn members(&self, members: &[Member]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        match self.format {
            OutputFormat::Json => write_json(&mut out, &members_json(members)),
            OutputFormat::Table => member_table(members, None).write(&mut out),
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
    })
}

/// The JSON form of a membership: an array of members.
fn members_json(members: &[Member]) -> Value {
    members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "addr": m.addr,
                "peer_addr": m.peer_addr,
                "voter": m.voter,
            })
        })
        .collect()
}

/// The JSON form of a setting, under its proto field names.
fn setting_json(setting: &Setting) -> Value {
    json!({
        "key": setting.key,
        "value": setting.value,
        "create_revision": setting.create_revision,
        "mod_revision": setting.mod_revision,
        "version": setting.version,
    })
}

/// A membership as a table; `leader` marks the leader's row when known.
fn member_table(members: &[Member], leader: Option<u64>) -> Table {
    let mut table = Table::new(&["ID", "ADDR", "PEER_ADDR", "ROLE"]);
    for member in members {
        let role = match (member.voter, leader == Some(member.id)) {
            (_, true) => "leader",
            (true, false) => "voter",
            (false, false) => "learner",
        };
        table.row(vec![
            member.id.to_string(),
            member.addr.clone(),
            member.peer_addr.clone(),
            role.to_string(),
        ]);
    }
    table
}

/// Writes one pretty-printed JSON document and a newline.
fn write_json(out: &mut impl Write, value: &Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// Makes text safe for one table cell or line: control characters (newlines,
/// tabs, escapes) are shown escaped, and with `max` the text is cut to that
/// many characters, ending in `…`.
fn one_line(text: &str, max: Option<usize>) -> String {
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
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row with one cell per column.
    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes the header and the rows.
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_lines(out, true)
    }

    /// Writes the rows only (a key/value block).
    fn write_rows(&self, out: &mut impl Write) -> io::Result<()> {
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
    use super::*;

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
