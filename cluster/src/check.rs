//! Damaged state: the refusals a node gives when its state cannot serve
//! again (each naming the way back), the checksum pass over the Raft column
//! families at start, and the offline check of a whole data dir
//! (`opsd check`).

use std::path::Path;

use rocksdb::IteratorMode;

use crate::data_dir::DataDir;
use crate::error::ClusterError;
use crate::log_mark::{read_mark, MARK_FILE};
use crate::log_store::{KEY_COMMITTED, KEY_PURGED, KEY_VOTE};
use crate::state_machine::{read_applied_state, read_snapshot_file};
use crate::storage::{Store, CF_LOG, CF_META, CF_SM};
use crate::types::{Entry, LogId, NodeId};

type Vote = openraft::Vote<NodeId>;
use crate::wire::{decode, key_index};

/// How to bring back a node whose state cannot serve again: as a new member,
/// never under its old id.
pub fn way_back(data_dir: &Path, node_id: NodeId) -> String {
    format!(
        "bring it back as a new member with `opsd --data-dir {} recover --rejoin HOST:PORT` (HOST:PORT: the client \
         address of any member; it removes node {node_id} from the cluster, moves the damaged state aside and joins \
         under a new id), or by hand: remove it from the cluster (`opsctl cluster remove {node_id}`) and start it with \
         an empty data dir to join as a new member",
        data_dir.display()
    )
}

/// The refusal of a node whose database is damaged: `what` says how.
pub(crate) fn damaged(data_dir: &Path, node_id: NodeId, cluster_id: &str, what: &str) -> ClusterError {
    ClusterError::DataDir {
        path: data_dir.display().to_string(),
        reason: format!(
            "the database of node {node_id} of cluster {cluster_id} is damaged ({what}): acknowledged writes may be \
             lost, so it cannot serve again; {}",
            way_back(data_dir, node_id)
        ),
    }
}

/// Why a log that ends before the mark is damaged.
pub(crate) fn cut_short(last: u64, mark: u64) -> String {
    format!(
        "its Raft log ends at index {last}, but {MARK_FILE} records that entries up to index {mark} were on disk: \
         the write-ahead log was cut short or lost its tail"
    )
}

/// Reads the Raft column families (log, vote and purge point, the state
/// machine's bookkeeping) whole, verifying every block's checksum: cheap,
/// and what a node must be able to trust before it votes or serves.
pub(crate) fn verify_raft_families(store: &Store) -> Result<(), rocksdb::Error> {
    for cf in [CF_LOG, CF_META, CF_SM] {
        store.verify_family(cf)?;
    }
    Ok(())
}

/// What `opsd check` found: one line per check, each passed or failed.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// `(passed, what)` in the order checked.
    pub lines: Vec<(bool, String)>,
}

impl CheckReport {
    fn ok(&mut self, what: impl Into<String>) {
        self.lines.push((true, what.into()));
    }

    fn bad(&mut self, what: impl Into<String>) {
        self.lines.push((false, what.into()));
    }

    /// Whether every check passed.
    pub fn is_clean(&self) -> bool {
        self.lines.iter().all(|(ok, _)| *ok)
    }

    /// The report as text, one line per check (`ok` or `DAMAGED`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (ok, what) in &self.lines {
            out.push_str(if *ok { "ok       " } else { "DAMAGED  " });
            out.push_str(what);
            out.push('\n');
        }
        out
    }
}

/// Checks a stopped node's data dir, reading everything and writing nothing:
/// `node.json` and the lock (refused while an opsd runs on it), every column
/// family read whole with checksums, the log's continuity from its purge
/// point to its end, the vote and committed index against the log, the log
/// mark, and the snapshot file.
pub fn check_data_dir(path: &Path, tables: &[String]) -> CheckReport {
    let mut report = CheckReport::default();
    let dir = match DataDir::inspect(path) {
        Ok(d) => d,
        Err(e) => {
            report.bad(e.to_string());
            return report;
        }
    };
    let id = dir.identity().clone();
    report.ok(format!(
        "node.json: node {} of cluster {}, format version {}, not in use by any opsd",
        id.node_id,
        id.cluster_id.as_deref().unwrap_or("(none yet)"),
        id.format_version
    ));
    if id.removed {
        report.ok("node.json: this node was removed from its cluster; it never serves again from this data dir");
    }
    let mark = match read_mark(&dir.mark_path()) {
        Ok(m) => m,
        Err(e) => {
            report.bad(format!("{MARK_FILE}: {e}"));
            None
        }
    };
    let db = dir.db_path();
    if !db.exists() {
        if id.raft_state || mark.is_some() {
            report.bad(format!(
                "{}: missing, but the node held Raft state (a vote or log entries): it has lost it",
                db.display()
            ));
        } else {
            report.ok(format!(
                "{}: none yet (the node has never voted or taken an entry)",
                db.display()
            ));
        }
        return report;
    }
    let store = match Store::open_read_only(&db, tables) {
        Ok(s) => s,
        Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
            report.bad(format!("{}: the database is damaged: {e}", db.display()));
            return report;
        }
        Err(e) => {
            report.bad(format!("{}: cannot open the database: {e}", db.display()));
            return report;
        }
    };
    report.ok(format!("{}: opens (its write-ahead log replays)", db.display()));
    let mut readable = true;
    for family in store.families() {
        match store.verify_family(&family) {
            Ok(keys) => report.ok(format!("column family {family}: {keys} keys, every checksum verified")),
            Err(e) => {
                readable = false;
                report.bad(format!("column family {family}: {e}"));
            }
        }
    }
    if readable {
        check_raft_state(&store, &id, mark, &mut report);
    }
    match read_snapshot_file(&dir.snapshot_path()) {
        Ok(None) => report.ok("snapshot.bin: none"),
        Ok(Some(index)) => report.ok(format!("snapshot.bin: decodes, covers the log up to index {index}")),
        Err(e) => report.bad(format!("snapshot.bin: {e}")),
    }
    report
}

/// What `raft_meta` holds.
struct RaftMeta {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

/// The log's continuity, the vote and committed index against it, and the mark.
fn check_raft_state(store: &Store, id: &crate::NodeIdentity, mark: Option<u64>, report: &mut CheckReport) {
    let meta = |key: &[u8]| -> Result<Option<Vec<u8>>, String> {
        let cf = store.cf(CF_META).map_err(|e| e.to_string())?;
        store.db.get_cf(cf, key).map_err(|e| e.to_string())
    };
    let read = || -> Result<RaftMeta, String> {
        Ok(RaftMeta {
            vote: meta(KEY_VOTE)?.map(|b| decode::<Vote>(&b)).transpose()?,
            committed: meta(KEY_COMMITTED)?
                .map(|b| decode::<Option<LogId>>(&b))
                .transpose()?
                .flatten(),
            purged: meta(KEY_PURGED)?.map(|b| decode::<LogId>(&b)).transpose()?,
        })
    };
    let RaftMeta {
        vote,
        committed,
        purged,
    } = match read() {
        Ok(v) => v,
        Err(e) => {
            report.bad(format!("raft_meta: {e}"));
            return;
        }
    };
    let Ok(cf) = store.cf(CF_LOG) else {
        report.bad("raft_log: the column family is missing");
        return;
    };
    let mut first: Option<u64> = None;
    let mut last: Option<LogId> = None;
    let mut problems = Vec::new();
    for item in store.db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = match item {
            Ok(kv) => kv,
            Err(e) => {
                problems.push(e.to_string());
                break;
            }
        };
        let Some(index) = key_index(&k) else {
            problems.push(format!("a key of {} bytes, not 8", k.len()));
            continue;
        };
        let entry = match decode::<Entry>(&v) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("entry {index}: {e}"));
                continue;
            }
        };
        if entry.log_id.index != index {
            problems.push(format!(
                "the entry at key {index} says it is entry {}",
                entry.log_id.index
            ));
        }
        if let Some(prev) = last {
            if index != prev.index + 1 {
                problems.push(format!("entries {} to {} are missing", prev.index + 1, index - 1));
            }
            if entry.log_id.leader_id.term < prev.leader_id.term {
                problems.push(format!(
                    "entry {index} has term {}, lower than entry {}'s term {}",
                    entry.log_id.leader_id.term, prev.index, prev.leader_id.term
                ));
            }
        }
        first.get_or_insert(index);
        last = Some(entry.log_id);
    }
    if let (Some(p), Some(f)) = (purged, first) {
        if f != p.index + 1 {
            problems.push(format!(
                "the log was purged up to index {}, but its first entry is {f}",
                p.index
            ));
        }
    }
    let last_index = last.or(purged).map(|l| l.index);
    let span = match (first, last) {
        (Some(f), Some(l)) => format!("entries {f} to {}", l.index),
        _ => "no entries".to_string(),
    };
    let purge = purged
        .map(|p| format!(", purged up to {}", p.index))
        .unwrap_or_default();
    if problems.is_empty() {
        report.ok(format!("raft_log: {span}{purge}, contiguous"));
    } else {
        report.bad(format!("raft_log: {span}{purge}: {}", problems.join("; ")));
    }

    match (&vote, last) {
        (Some(v), Some(l)) if v.leader_id.term < l.leader_id.term => report.bad(format!(
            "vote: term {} is below the term {} of the last log entry",
            v.leader_id.term, l.leader_id.term
        )),
        (Some(v), _) => report.ok(format!("vote: term {}", v.leader_id.term)),
        (None, _) if last_index.is_some() => report.bad("vote: none, but the log has entries"),
        (None, _) if id.raft_state => report.bad(format!(
            "vote: none and no log, but node.json records that node {} held Raft state: it has lost it",
            id.node_id
        )),
        (None, _) => report.ok("vote: none yet"),
    }
    // A snapshot installed moves the applied index (and the committed one)
    // past the log before the log is purged up to it.
    let applied = store
        .cf(CF_SM)
        .map_err(|e| e.to_string())
        .and_then(|cf| read_applied_state(|k| store.db.get_cf(cf, k)))
        .map(|(applied, _)| applied.map(|l| l.index));
    let applied = match applied {
        Ok(a) => a,
        Err(e) => {
            report.bad(format!("sm_meta: {e}"));
            None
        }
    };
    let reach = last_index.max(applied);
    match committed {
        Some(c) if Some(c.index) > reach => report.bad(format!(
            "committed: index {} is beyond the log's end and the applied state ({})",
            c.index,
            reach.map(|i| i.to_string()).unwrap_or_else(|| "empty".into())
        )),
        Some(c) => report.ok(format!("committed: index {}", c.index)),
        None => report.ok("committed: none recorded"),
    }
    if let Some(a) = applied {
        report.ok(format!("sm_meta: applied up to index {a}"));
    }
    match mark {
        Some(m) if last_index.unwrap_or(0) < m => {
            report.bad(format!("{MARK_FILE}: {}", cut_short(last_index.unwrap_or(0), m)))
        }
        Some(m) => report.ok(format!("{MARK_FILE}: index {m}, the log reaches it")),
        None => report.ok(format!("{MARK_FILE}: none yet")),
    }
}
