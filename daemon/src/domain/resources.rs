//! Resources, their kinds and their runs: the records, the apply function of
//! every command that changes them, and the reads the API serves.
//!
//! A resource moves between the states of its kind. Entering a work state
//! starts a run, owned by the leader that committed the entry; the run's
//! finish (proposed by that leader once the provider's step ends) moves the
//! resource on to the state's `next`, `fail` or `cancel` target, and if that
//! is a work state too the next run starts in the same apply. Every rule is
//! re-checked here against the stored state, so a stale proposal (a deposed
//! leader's late finish, an event that lost a race) is rejected, not applied.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use opsd_cluster::{EntryInfo, ReadView, Txn, TxnError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::kind::{self, Kind};
use super::{decode, encode, stats, DomainEvent, Outcome, Rejection, Trigger};

/// Registered kinds: name → [`KindRecord`].
pub const KINDS: &str = "kinds";
/// Resources: `kind \0 name` → [`ResourceRecord`].
pub const RESOURCES: &str = "resources";
/// How many resources rest in each state: `kind \0 state` → count (u64 BE).
pub const STATE_COUNTS: &str = "state_counts";
/// Runs: index (u64 BE) → [`RunRecord`].
pub const RUNS: &str = "runs";
/// Each resource's runs: `kind \0 name \0 index` → nothing.
pub const RUNS_BY_RESOURCE: &str = "runs_by_resource";
/// Runs still running: index → nothing.
pub const RUNNING: &str = "running";
/// Run logs: index → [`RunLog`].
pub const RUN_LOGS: &str = "run_logs";
/// The run counter: one key, the index of the last run started (u64 BE).
pub const RUN_COUNTER: &str = "run_counter";
const KEY_LAST_RUN: &[u8] = b"last";

/// The longest resource name.
pub const MAX_NAME: usize = 128;
/// The largest spec, as JSON text.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// The largest outputs a step may report, as JSON text.
pub const MAX_OUTPUTS_BYTES: usize = 256 * 1024;
/// Log lines kept per run; older ones are dropped (and counted).
pub const MAX_LOG_LINES: usize = 2000;
/// The longest log line kept; longer ones are cut.
pub const MAX_LOG_LINE: usize = 4096;
/// The longest reason, error or argument value.
pub const MAX_TEXT: usize = 4096;
/// The most labels or event arguments.
pub const MAX_ENTRIES: usize = 64;

/// A stored kind, as the API shows it: its source and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindRecord {
    /// The kind file.
    pub source: String,
    /// The log index of the last apply.
    pub version: u64,
    /// Installed from a build's built-in kinds, not registered by a user.
    pub builtin: bool,
}

/// The revision of the built-in kinds this build embeds (`daemon/kinds/`).
/// Bump it whenever a built-in kind file changes: a leader installs its
/// built-in kinds only over older revisions (a test pins the files to it).
pub const BUILTIN_REVISION: u64 = 4;

/// A kind as stored in [`KINDS`], as JSON so that a later build reads it
/// (new fields of [`Kind`] need a serde default): the compiled kind apply
/// uses, never re-parsed from the source.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKind {
    source: String,
    version: u64,
    /// The [`BUILTIN_REVISION`] of the build that installed it; `None` for a
    /// kind a user registered.
    builtin_revision: Option<u64>,
    kind: Kind,
}

/// A kind as builds before [`StoredKind`] stored it (bincode): only the
/// source, compiled when read.
#[derive(Deserialize)]
struct LegacyKindRecord {
    source: String,
    version: u64,
}

/// A resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRecord {
    /// Its kind.
    pub kind: String,
    /// Its name, unique per kind.
    pub name: String,
    /// The state it is in.
    pub state: String,
    /// The log index of the last change.
    pub version: u64,
    /// What the user asked for: a JSON object as text.
    pub spec_json: String,
    /// What providers reported: a JSON object as text.
    pub outputs_json: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// The index of the run in flight, if any.
    pub active_run: Option<u64>,
}

/// How a run ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RunOutcome {
    /// Its step is executing.
    Running,
    /// The step succeeded.
    Succeeded,
    /// The step failed.
    Failed,
    /// The step was cancelled.
    Cancelled,
    /// The run could not be driven to an end (too many takeovers).
    Interrupted,
}

impl RunOutcome {
    /// The name used in the API and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Interrupted => "interrupted",
        }
    }

    /// Parses an outcome name.
    pub fn parse(s: &str) -> Option<RunOutcome> {
        [
            RunOutcome::Running,
            RunOutcome::Succeeded,
            RunOutcome::Failed,
            RunOutcome::Cancelled,
            RunOutcome::Interrupted,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// How a step ended, as its executor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunEnd {
    /// Success, with outputs (a JSON object as text) to merge into the resource's.
    Succeeded {
        /// The outputs.
        outputs_json: String,
    },
    /// Failure, with what went wrong and any outputs reported before it.
    Failed {
        /// The error.
        error: String,
        /// The outputs.
        outputs_json: String,
    },
    /// Stopped because someone cancelled the run.
    Cancelled {
        /// What the step said, if anything.
        error: String,
        /// Outputs reported before it stopped (what exists).
        outputs_json: String,
    },
    /// Given up on: it could not be driven to an end.
    Interrupted {
        /// Why.
        error: String,
    },
}

/// One execution of a work state's step, or a move between stable states
/// (recorded as a run that succeeded at once), kept for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's number, its id is `r<index>`: see [`next_run_index`].
    pub index: u64,
    /// The resource's kind.
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// The event that started the chain (`create` for a new resource).
    pub event: String,
    /// The state the resource left.
    pub from: String,
    /// The state whose step runs.
    pub to: String,
    /// How it ended, or running.
    pub outcome: RunOutcome,
    /// 1, plus one per takeover by a new leader.
    pub attempt: u32,
    /// The node executing the step: the leader that committed its start or
    /// took it over.
    pub node_id: u64,
    /// The term of that leader when it did.
    pub term: u64,
    /// The log index of the entry that did (the start, or the takeover).
    pub since: u64,
    /// The event's arguments.
    pub args: BTreeMap<String, String>,
    /// Who asked, why, from where, and when the run started.
    pub trigger: Trigger,
    /// When it ended.
    pub finished_at_ms: Option<i64>,
    /// What went wrong, for failed, cancelled and interrupted runs.
    pub error: String,
    /// What the step reported: a JSON object as text.
    pub outputs_json: String,
    /// Someone asked to cancel it.
    pub cancel_requested: bool,
}

impl RunRecord {
    /// The run's id.
    pub fn run_id(&self) -> String {
        run_id(self.index)
    }

    /// How long it took, once finished.
    pub fn duration_ms(&self) -> Option<u64> {
        self.finished_at_ms
            .map(|f| f.saturating_sub(self.trigger.at_ms).max(0) as u64)
    }
}

/// The id of the run numbered `index`.
pub fn run_id(index: u64) -> String {
    format!("r{index}")
}

/// The index of a run id (`r123` → 123); the error names the field.
pub fn parse_run_id(id: &str) -> Result<u64, String> {
    id.strip_prefix('r')
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("run_id: {id:?} is not a run id (they look like r123)"))
}

/// A run's stored log: the last [`MAX_LOG_LINES`] lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLog {
    /// Lines dropped from the front.
    pub dropped: u64,
    /// The lines kept.
    pub lines: Vec<String>,
}

fn resource_key(kind: &str, name: &str) -> Vec<u8> {
    [kind.as_bytes(), b"\0", name.as_bytes()].concat()
}

fn state_count_key(kind: &str, state: &str) -> Vec<u8> {
    [kind.as_bytes(), b"\0", state.as_bytes()].concat()
}

fn by_resource_prefix(kind: &str, name: &str) -> Vec<u8> {
    [kind.as_bytes(), b"\0", name.as_bytes(), b"\0"].concat()
}

/// What an apply function answers: the outcome, or why nothing changed.
pub type Applied = Result<Outcome, ApplyError>;

/// Why apply changed nothing: a rejection (the answer to the proposer), or
/// the storage failing (which stops the node).
#[derive(Debug)]
pub enum ApplyError {
    /// The command is invalid for the current state.
    Rejected(Rejection),
    /// Reading or writing the tables failed.
    Storage(TxnError),
}

impl From<TxnError> for ApplyError {
    fn from(e: TxnError) -> Self {
        ApplyError::Storage(e)
    }
}

/// The answer of an apply function: a rejection is an answer too.
pub fn settle(applied: Applied) -> Result<Outcome, TxnError> {
    match applied {
        Ok(outcome) => Ok(outcome),
        Err(ApplyError::Rejected(r)) => Ok(Outcome::Rejected(r)),
        Err(ApplyError::Storage(e)) => Err(e),
    }
}

fn reject<T>(r: Rejection) -> Result<T, ApplyError> {
    Err(ApplyError::Rejected(r))
}

fn not_found(m: String) -> Rejection {
    Rejection::NotFound(m)
}

fn precondition(m: String) -> Rejection {
    Rejection::FailedPrecondition(m)
}

fn invalid(m: String) -> Rejection {
    Rejection::InvalidArgument(m)
}

/// Checks a resource name: 1 to 128 of letters, digits, `-`, `_`, `.`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("name: must be 1 to {MAX_NAME} characters (got {})", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "name: {name:?} has {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Checks map entries (labels, event arguments): `field` names them.
fn validate_entries(field: &str, map: &BTreeMap<String, String>) -> Result<(), String> {
    if map.len() > MAX_ENTRIES {
        return Err(format!("{field}: {} entries, the limit is {MAX_ENTRIES}", map.len()));
    }
    for (k, v) in map {
        if k.is_empty()
            || k.len() > 64
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        {
            return Err(format!(
                "{field}: key {k:?} must be 1 to 64 letters, digits, '-', '_', '.' or '/'"
            ));
        }
        if v.len() > MAX_TEXT {
            return Err(format!("{field}: value of {k:?} is longer than {MAX_TEXT} bytes"));
        }
    }
    Ok(())
}

fn validate_trigger(t: &Trigger) -> Result<(), String> {
    if t.principal.is_empty() || t.principal.len() > 128 {
        return Err("principal: must be 1 to 128 bytes".into());
    }
    if t.reason.len() > MAX_TEXT {
        return Err(format!("reason: longer than {MAX_TEXT} bytes"));
    }
    if !matches!(t.source.as_str(), "api" | "schedule" | "recovery") {
        return Err(format!("source: {:?} is not api, schedule or recovery", t.source));
    }
    Ok(())
}

/// Parses a JSON object given as text; `field` names it in the error.
pub fn parse_object(field: &str, text: &str) -> Result<Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!("{field}: must be a JSON object, not {}", json_type(&other))),
        Err(e) => Err(format!("{field}: not valid JSON: {e}")),
    }
}

/// The JSON type of a value, for error messages (shared with opsctl through the contract crate).
pub use opsd_proto::json::json_type;

/// Compiles a kind file into the kind that [`Command::PutKind`] carries:
/// parsed and validated by the rules of this build, and not named as one
/// of its built-in kinds. The leader calls it (the API) before proposing;
/// apply never parses, so a later build with other rules cannot decide
/// differently about a kind already in the log. Which providers exist is
/// the API's check too, not this one.
///
/// [`Command::PutKind`]: super::Command::PutKind
pub fn compile_kind(source: &str) -> Result<Kind, Rejection> {
    let kind = Kind::parse(source).map_err(invalid)?;
    if kind::BUILTIN.iter().any(|(name, _)| *name == kind.name) {
        return Err(precondition(format!(
            "kind {:?} is built in and cannot be replaced; choose another name",
            kind.name
        )));
    }
    Ok(kind)
}

/// The built-in kinds this build embeds, compiled once, as they would be
/// stored. A built-in kind that does not compile is a defect of the build
/// (a unit test compiles them all); it is left out.
fn embedded_builtins() -> &'static [Arc<StoredKind>] {
    static BUILTINS: OnceLock<Vec<Arc<StoredKind>>> = OnceLock::new();
    BUILTINS.get_or_init(|| {
        kind::BUILTIN
            .iter()
            .filter_map(|(_, source)| {
                let kind = Kind::parse(source).ok()?;
                Some(Arc::new(StoredKind {
                    source: source.to_string(),
                    version: 0,
                    builtin_revision: Some(BUILTIN_REVISION),
                    kind,
                }))
            })
            .collect()
    })
}

/// A built-in kind of this build, compiled, for tests.
#[cfg(test)]
pub(crate) fn embedded_kind(name: &str) -> Kind {
    embedded_builtins()
        .iter()
        .find(|b| b.kind.name == name)
        .map(|b| b.kind.clone())
        .unwrap_or_else(|| panic!("no built-in kind {name}"))
}

/// The commands that install this build's built-in kinds where the stored
/// ones are missing or of an older revision; the leader proposes them.
pub fn builtin_kind_updates(view: &ReadView<'_>) -> Result<Vec<super::Command>, TxnError> {
    let mut out = Vec::new();
    for builtin in embedded_builtins() {
        let kind = &builtin.kind;
        let stored = match view.get(KINDS, kind.name.as_bytes())? {
            Some(bytes) => decode_stored_kind(&kind.name, &bytes).ok(),
            None => None,
        };
        let newer = match stored {
            Some(s) => s.builtin_revision.is_some_and(|r| r < BUILTIN_REVISION),
            None => true,
        };
        if newer {
            out.push(super::Command::PutBuiltinKind {
                source: builtin.source.clone(),
                kind: kind.clone(),
                revision: BUILTIN_REVISION,
            });
        }
    }
    Ok(out)
}

/// Decodes a stored kind: JSON, or a legacy record compiled by this build.
fn decode_stored_kind(name: &str, bytes: &[u8]) -> Result<StoredKind, String> {
    let json_error = match serde_json::from_slice::<StoredKind>(bytes) {
        Ok(stored) => return Ok(stored),
        Err(e) => e,
    };
    // A legacy record is never JSON: its first eight bytes are a length
    // whose last byte is zero.
    match bincode::deserialize::<LegacyKindRecord>(bytes) {
        Ok(legacy) => {
            let kind = Kind::parse(&legacy.source).map_err(|e| {
                format!(
                    "kind {name:?} was stored by an earlier build and no longer compiles under this one ({e}); \
                     apply its kind file again, corrected"
                )
            })?;
            Ok(StoredKind {
                source: legacy.source,
                version: legacy.version,
                builtin_revision: None,
                kind,
            })
        }
        Err(_) => Err(format!(
            "kind {name:?} is stored in a form this build cannot read ({json_error}); it was written by a newer \
             build: upgrade this node"
        )),
    }
}

/// A stored kind decoded, or why this build cannot read it.
type DecodedKind = Result<Arc<StoredKind>, String>;

/// Stored kinds already decoded, by their stored bytes: apply, steps and
/// reads decode a kind once, not on every use. The bytes identify the
/// definition exactly (they hold its version), so the cache is never stale.
fn cached_kind(name: &str, bytes: &[u8]) -> DecodedKind {
    static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, DecodedKind>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(bytes) {
        return hit.clone();
    }
    let decoded = decode_stored_kind(name, bytes).map(Arc::new);
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= KIND_CACHE_SIZE {
        map.clear();
    }
    map.insert(bytes.to_vec(), decoded.clone());
    decoded
}

/// The most decoded kinds kept; past it the cache starts over.
const KIND_CACHE_SIZE: usize = 1024;

/// Where a kind was found.
enum Found {
    /// In the replicated kinds.
    Stored(Arc<StoredKind>),
    /// Only in this build: a built-in kind the leader has not installed yet.
    Embedded(Arc<StoredKind>),
    /// In the replicated kinds, in a form this build cannot read: why.
    Unreadable(String),
}

/// Reads a kind through `get` (a transaction or a view): the stored one, or
/// a built-in one this build embeds while none is stored (a cluster whose
/// leader has not installed its built-in kinds yet).
fn load_kind(get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, TxnError>, name: &str) -> Result<Option<Found>, TxnError> {
    if let Some(bytes) = get(name.as_bytes())? {
        return Ok(Some(match cached_kind(name, &bytes) {
            Ok(stored) => Found::Stored(stored),
            Err(why) => Found::Unreadable(why),
        }));
    }
    Ok(embedded_builtins()
        .iter()
        .find(|b| b.kind.name == name)
        .map(|b| Found::Embedded(b.clone())))
}

/// The kind apply uses: `None` if there is none; one this build cannot read
/// is a rejection naming the problem (every node of this build rejects
/// alike), not a stop.
fn txn_kind(txn: &Txn<'_>, name: &str) -> Result<Option<Arc<StoredKind>>, ApplyError> {
    match load_kind(|k| txn.get(KINDS, k), name)? {
        None => Ok(None),
        Some(Found::Stored(stored) | Found::Embedded(stored)) => Ok(Some(stored)),
        Some(Found::Unreadable(why)) => reject(precondition(why)),
    }
}

fn txn_resource(txn: &Txn<'_>, kind: &str, name: &str) -> Result<Option<ResourceRecord>, TxnError> {
    txn.get(RESOURCES, &resource_key(kind, name))?
        .map(|b| decode(&b, "resource record"))
        .transpose()
}

fn txn_run(txn: &Txn<'_>, index: u64) -> Result<Option<RunRecord>, TxnError> {
    txn.get(RUNS, &index.to_be_bytes())?
        .map(|b| decode(&b, "run record"))
        .transpose()
}

fn put_resource(txn: &mut Txn<'_>, r: &ResourceRecord) -> Result<(), TxnError> {
    txn.put(RESOURCES, &resource_key(&r.kind, &r.name), &encode(r)?)?;
    txn.emit(encode(&DomainEvent::Resource(r.clone()))?);
    Ok(())
}

fn put_run(txn: &mut Txn<'_>, run: &RunRecord) -> Result<(), TxnError> {
    txn.put(RUNS, &run.index.to_be_bytes(), &encode(run)?)?;
    txn.emit(encode(&DomainEvent::Run(run.clone()))?);
    Ok(())
}

fn add_state_count(txn: &mut Txn<'_>, kind: &str, state: &str, delta: i64) -> Result<(), TxnError> {
    let key = state_count_key(kind, state);
    let current = txn
        .get(STATE_COUNTS, &key)?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    let next = (current as i64 + delta).max(0) as u64;
    if next == 0 {
        txn.delete(STATE_COUNTS, &key)
    } else {
        txn.put(STATE_COUNTS, &key, &next.to_be_bytes())
    }
}

fn append_log_lines(txn: &mut Txn<'_>, run: &RunRecord, lines: Vec<String>) -> Result<(), TxnError> {
    let key = run.index.to_be_bytes();
    let mut log: RunLog = match txn.get(RUN_LOGS, &key)? {
        Some(b) => decode(&b, "run log")?,
        None => RunLog::default(),
    };
    let first_line = log.dropped + log.lines.len() as u64;
    let lines: Vec<String> = lines.into_iter().map(cut_line).collect();
    log.lines.extend(lines.iter().cloned());
    if log.lines.len() > MAX_LOG_LINES {
        let excess = log.lines.len() - MAX_LOG_LINES;
        log.lines.drain(..excess);
        log.dropped += excess as u64;
    }
    txn.put(RUN_LOGS, &key, &encode(&log)?)?;
    txn.emit(encode(&DomainEvent::RunLog {
        run: run.index,
        kind: run.kind.clone(),
        name: run.name.clone(),
        first_line,
        lines,
    })?);
    Ok(())
}

fn cut_line(mut line: String) -> String {
    if line.len() > MAX_LOG_LINE {
        let mut end = MAX_LOG_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str(" …[cut]");
    }
    line
}

/// The number of a run the entry `entry` starts: the entry's index, or one
/// more than the last run's if that is higher (an entry may start several
/// runs). Runs are numbered in the order they start, and the numbers of
/// runs started before entries could share (one run per entry, numbered by
/// its index) stay what they were.
fn next_run_index(txn: &mut Txn<'_>, entry: EntryInfo) -> Result<u64, TxnError> {
    let last = txn
        .get(RUN_COUNTER, KEY_LAST_RUN)?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    let index = entry.index.max(last.saturating_add(1));
    txn.put(RUN_COUNTER, KEY_LAST_RUN, &index.to_be_bytes())?;
    Ok(index)
}

/// Moves `resource` into `target` and, if it is a work state, starts its run
/// (owned by the entry's leader); writes the resource and answers with it and
/// the run started. `event`, `args` and `trigger` are those of the chain: the
/// end of a create, of an event and of a finished step.
#[allow(clippy::too_many_arguments)]
fn move_to(
    txn: &mut Txn<'_>,
    entry: EntryInfo,
    kind: &Kind,
    mut resource: ResourceRecord,
    from: &str,
    target: &str,
    event: &str,
    args: &BTreeMap<String, String>,
    trigger: &Trigger,
    record_stable: bool,
) -> Applied {
    let state = kind
        .state(target)
        .ok_or_else(|| TxnError(format!("kind {} has no state {target}", kind.name)))?;
    if !from.is_empty() {
        add_state_count(txn, &resource.kind, from, -1)?;
    }
    add_state_count(txn, &resource.kind, target, 1)?;
    resource.state = target.to_string();
    resource.version = entry.index;
    resource.updated_at_ms = trigger.at_ms;
    resource.active_run = None;
    if !state.work && !record_stable {
        put_resource(txn, &resource)?;
        return Ok(Outcome::ResourceChanged { resource, run: None });
    }
    let index = next_run_index(txn, entry)?;
    let mut run = RunRecord {
        index,
        kind: resource.kind.clone(),
        name: resource.name.clone(),
        event: event.to_string(),
        from: from.to_string(),
        to: target.to_string(),
        outcome: RunOutcome::Running,
        attempt: 1,
        node_id: entry.leader,
        term: entry.term,
        since: entry.index,
        args: args.clone(),
        trigger: trigger.clone(),
        finished_at_ms: None,
        error: String::new(),
        outputs_json: "{}".into(),
        cancel_requested: false,
    };
    let by_resource = [by_resource_prefix(&run.kind, &run.name), index.to_be_bytes().to_vec()].concat();
    txn.put(RUNS_BY_RESOURCE, &by_resource, &[])?;
    if state.work {
        resource.active_run = Some(index);
        txn.put(RUNNING, &index.to_be_bytes(), &[])?;
    } else {
        // A move between stable states: recorded, done at once.
        run.outcome = RunOutcome::Succeeded;
        run.finished_at_ms = Some(trigger.at_ms);
        stats::record(txn, &run)?;
    }
    put_run(txn, &run)?;
    put_resource(txn, &resource)?;
    Ok(Outcome::ResourceChanged {
        resource,
        run: Some(run),
    })
}

/// Applies `PutKind`: registers or updates a kind, as the leader compiled
/// it. Apply checks only what depends on the stored state: a built-in kind
/// is not replaced, and an update may not remove a state a resource is in.
pub fn put_kind(txn: &mut Txn<'_>, index: u64, source: String, kind: Kind) -> Applied {
    if let Some(old) = stored_kind(txn, &kind.name)? {
        if old.builtin_revision.is_some() {
            return reject(precondition(format!(
                "kind {:?} is built in and cannot be replaced; choose another name",
                kind.name
            )));
        }
        check_removed_states(txn, &old.kind, &kind)?;
    } else if let Some(embedded) = embedded_only(&kind.name) {
        check_removed_states(txn, &embedded.kind, &kind)?;
    }
    store_kind(txn, index, source, kind, None)
}

/// Applies `PutBuiltinKind`: installs a built-in kind of a newer revision
/// than the stored one. A kind a user registered under the name stays.
pub fn put_builtin_kind(txn: &mut Txn<'_>, index: u64, source: String, kind: Kind, revision: u64) -> Applied {
    if let Some(old) = stored_kind(txn, &kind.name)? {
        match old.builtin_revision {
            None => {
                return reject(precondition(format!(
                    "built-in kind {:?} not installed: a registered kind has the name",
                    kind.name
                )))
            }
            Some(stored) if stored >= revision => {
                return reject(precondition(format!(
                    "built-in kind {:?} not installed: revision {stored} is stored, not older than {revision}",
                    kind.name
                )))
            }
            Some(_) => check_removed_states(txn, &old.kind, &kind)?,
        }
    } else if let Some(embedded) = embedded_only(&kind.name) {
        check_removed_states(txn, &embedded.kind, &kind)?;
    }
    store_kind(txn, index, source, kind, Some(revision))
}

/// The built-in kind of this build named `name`, which apply uses while
/// none is stored: resources created of it are in its states, so a kind
/// stored over it may not remove those (the fuzzer found a `PutKind` that
/// left resources in a state their kind no longer had).
fn embedded_only(name: &str) -> Option<&'static Arc<StoredKind>> {
    embedded_builtins().iter().find(|b| b.kind.name == name)
}

/// The kind stored under `name`, if any (not a built-in kind only embedded).
fn stored_kind(txn: &Txn<'_>, name: &str) -> Result<Option<Arc<StoredKind>>, ApplyError> {
    match txn.get(KINDS, name.as_bytes())? {
        None => Ok(None),
        Some(bytes) => match cached_kind(name, &bytes) {
            Ok(stored) => Ok(Some(stored)),
            Err(e) => reject(precondition(e)),
        },
    }
}

/// Refuses an update of `old` to `new` that removes a state some resource is in.
fn check_removed_states(txn: &Txn<'_>, old: &Kind, new: &Kind) -> Result<(), ApplyError> {
    for state in old.states.keys().filter(|s| new.state(s).is_none()) {
        let count = txn
            .get(STATE_COUNTS, &state_count_key(&new.name, state))?
            .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        if count > 0 {
            return reject(precondition(format!(
                "kind {:?}: the update removes state {state:?}, which {count} resource(s) are in; \
                 move or delete them first",
                new.name
            )));
        }
    }
    Ok(())
}

fn store_kind(txn: &mut Txn<'_>, index: u64, source: String, kind: Kind, builtin_revision: Option<u64>) -> Applied {
    let name = kind.name.clone();
    let stored = StoredKind {
        source,
        version: index,
        builtin_revision,
        kind,
    };
    let bytes = serde_json::to_vec(&stored).map_err(|e| TxnError(format!("encoding kind {name}: {e}")))?;
    txn.put(KINDS, name.as_bytes(), &bytes)?;
    txn.emit(encode(&DomainEvent::Kind { name: name.clone() })?);
    Ok(Outcome::KindPut { name, version: index })
}

/// Applies `CreateResource`: the resource enters its kind's initial state.
pub fn create(
    txn: &mut Txn<'_>,
    entry: EntryInfo,
    kind_name: &str,
    name: &str,
    spec_json: &str,
    labels: BTreeMap<String, String>,
    trigger: Trigger,
) -> Applied {
    let Some(stored) = txn_kind(txn, kind_name)? else {
        return reject(not_found(format!("kind: no kind {kind_name:?}")));
    };
    let kind = &stored.kind;
    if let Err(e) = validate_name(name)
        .and_then(|_| validate_entries("labels", &labels))
        .and_then(|_| validate_trigger(&trigger))
    {
        return reject(invalid(e));
    }
    if spec_json.len() > MAX_SPEC_BYTES {
        return reject(invalid(format!(
            "spec: {} bytes is more than the limit of {MAX_SPEC_BYTES}",
            spec_json.len()
        )));
    }
    let spec = match parse_object("spec", spec_json) {
        Ok(s) => s,
        Err(e) => return reject(invalid(e)),
    };
    let missing: Vec<&str> = kind
        .required
        .iter()
        .filter(|k| !spec.contains_key(k.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return reject(invalid(format!(
            "spec: kind {kind_name:?} requires {}",
            missing.join(", ")
        )));
    }
    if txn_resource(txn, kind_name, name)?.is_some() {
        return reject(Rejection::AlreadyExists(format!("{kind_name}/{name} already exists")));
    }
    let resource = ResourceRecord {
        kind: kind_name.to_string(),
        name: name.to_string(),
        state: String::new(),
        version: entry.index,
        spec_json: Value::Object(spec).to_string(),
        outputs_json: "{}".into(),
        labels,
        created_at_ms: trigger.at_ms,
        updated_at_ms: trigger.at_ms,
        active_run: None,
    };
    let initial = kind.initial.clone();
    if kind.state(&initial).is_none() {
        return reject(precondition(format!(
            "kind {kind_name:?} has no state {initial:?}, its initial state"
        )));
    }
    move_to(
        txn,
        entry,
        kind,
        resource,
        "",
        &initial,
        "create",
        &BTreeMap::new(),
        &trigger,
        true,
    )
}

/// Why `event` cannot be done to `resource` now, if it cannot: a run in
/// flight, or a state that does not take it (the message lists those it
/// takes). Shared by apply and the resource actor's early check.
pub fn refuse_event(kind: &Kind, resource: &ResourceRecord, event: &str) -> Option<Rejection> {
    let who = format!("{}/{}", resource.kind, resource.name);
    if let Some(run) = resource.active_run {
        return Some(precondition(format!(
            "{who} is in work state {:?}: run {} is in flight; wait for it or cancel it",
            resource.state,
            run_id(run)
        )));
    }
    let Some(state) = kind.state(&resource.state) else {
        return Some(precondition(format!(
            "{who} is in state {:?}, which kind {:?} does not have; it takes no events",
            resource.state, kind.name
        )));
    };
    if state.on.contains_key(event) {
        return None;
    }
    let takes = state.event_names();
    Some(precondition(if takes.is_empty() {
        format!("{who} is in final state {:?}, which takes no events", resource.state)
    } else {
        format!(
            "{who} is in state {:?}, which does not take event {event:?}; it takes: {}",
            resource.state,
            takes.join(", ")
        )
    }))
}

/// Applies `DoEvent`: the resource moves to the state the event leads to.
pub fn do_event(
    txn: &mut Txn<'_>,
    entry: EntryInfo,
    kind_name: &str,
    name: &str,
    event: &str,
    args: BTreeMap<String, String>,
    trigger: Trigger,
) -> Applied {
    let Some(resource) = txn_resource(txn, kind_name, name)? else {
        return reject(not_found(format!("resource {kind_name}/{name} not found")));
    };
    if let Err(e) = validate_entries("args", &args).and_then(|_| validate_trigger(&trigger)) {
        return reject(invalid(e));
    }
    let Some(stored) = txn_kind(txn, kind_name)? else {
        return reject(not_found(format!("kind: no kind {kind_name:?}")));
    };
    let kind = &stored.kind;
    if let Some(r) = refuse_event(kind, &resource, event) {
        return reject(r);
    }
    let from = resource.state.clone();
    // refuse_event found the state and its event; looked up again without
    // indexing, so a mistake there is a rejection, never a panic.
    let Some(target) = kind.state(&from).and_then(|s| s.on.get(event)).cloned() else {
        return reject(precondition(format!(
            "{kind_name}/{name} is in state {from:?}, which does not take event {event:?}"
        )));
    };
    if kind.state(&target).is_none() {
        return reject(precondition(format!(
            "kind {kind_name:?}: event {event:?} leads to {target:?}, which is not a state"
        )));
    }
    move_to(txn, entry, kind, resource, &from, &target, event, &args, &trigger, true)
}

/// Applies `DeleteResource`: only a resource resting in a final state is
/// removed; its runs stay for audit.
pub fn delete(txn: &mut Txn<'_>, kind_name: &str, name: &str) -> Applied {
    let Some(resource) = txn_resource(txn, kind_name, name)? else {
        return reject(not_found(format!("resource {kind_name}/{name} not found")));
    };
    let is_final = txn_kind(txn, kind_name)?
        .and_then(|k| k.kind.state(&resource.state).map(|s| s.is_final))
        .unwrap_or(false);
    if !is_final {
        return reject(precondition(format!(
            "{kind_name}/{name} is in state {:?}, not a final state; destroy it first",
            resource.state
        )));
    }
    add_state_count(txn, kind_name, &resource.state, -1)?;
    txn.delete(RESOURCES, &resource_key(kind_name, name))?;
    txn.emit(encode(&DomainEvent::ResourceDeleted(resource.clone()))?);
    Ok(Outcome::ResourceDeleted { resource })
}

/// Reads a running run for a change by `attempt` (`None`: any attempt).
fn running_run(txn: &Txn<'_>, index: u64, attempt: Option<u32>) -> Result<RunRecord, ApplyError> {
    let Some(run) = txn_run(txn, index)? else {
        return reject(not_found(format!("run {} not found", run_id(index))));
    };
    if run.outcome != RunOutcome::Running {
        return reject(precondition(format!(
            "run {} already ended: {}",
            run.run_id(),
            run.outcome.as_str()
        )));
    }
    if let Some(a) = attempt {
        if a != run.attempt {
            return reject(precondition(format!(
                "run {} is at attempt {} (taken over), so attempt {a} may no longer change it",
                run.run_id(),
                run.attempt
            )));
        }
    }
    Ok(run)
}

/// Applies `FinishRun`: records how the step ended and moves the resource on.
pub fn finish_run(txn: &mut Txn<'_>, entry: EntryInfo, index: u64, attempt: u32, end: RunEnd, at_ms: i64) -> Applied {
    let mut run = running_run(txn, index, Some(attempt))?;
    let (outcome, error, outputs_json) = match end {
        RunEnd::Succeeded { outputs_json } => (RunOutcome::Succeeded, String::new(), outputs_json),
        RunEnd::Failed { error, outputs_json } => (RunOutcome::Failed, error, outputs_json),
        RunEnd::Cancelled { error, outputs_json } => (RunOutcome::Cancelled, error, outputs_json),
        RunEnd::Interrupted { error } => (RunOutcome::Interrupted, error, String::new()),
    };
    if outputs_json.len() > MAX_OUTPUTS_BYTES {
        return reject(invalid(format!(
            "outputs: {} bytes is more than the limit of {MAX_OUTPUTS_BYTES}",
            outputs_json.len()
        )));
    }
    let outputs = match parse_object("outputs", &outputs_json) {
        Ok(o) => o,
        Err(e) => return reject(invalid(e)),
    };
    let Some(mut resource) = txn_resource(txn, &run.kind, &run.name)? else {
        return Err(ApplyError::Storage(TxnError(format!(
            "run {} has no resource {}/{}",
            run.run_id(),
            run.kind,
            run.name
        ))));
    };
    let stored = txn_kind(txn, &run.kind)?.ok_or_else(|| TxnError(format!("kind {} is missing", run.kind)))?;
    let kind = &stored.kind;
    let state = kind
        .state(&run.to)
        .ok_or_else(|| TxnError(format!("kind {} has no state {}", kind.name, run.to)))?;
    let target = match outcome {
        RunOutcome::Succeeded => state.next.as_deref(),
        RunOutcome::Cancelled => kind.cancel_target(state),
        _ => state.fail.as_deref(),
    }
    .ok_or_else(|| TxnError(format!("kind {} state {} has no target", kind.name, run.to)))?
    .to_string();

    run.outcome = outcome;
    run.finished_at_ms = Some(at_ms.max(run.trigger.at_ms));
    run.error = cut_line(error);
    run.outputs_json = Value::Object(outputs.clone()).to_string();
    txn.delete(RUNNING, &index.to_be_bytes())?;
    stats::record(txn, &run)?;
    put_run(txn, &run)?;

    // Outputs reported by a failed or cancelled step are kept too: they say what exists
    // (machines started before the failure) so a destroy can clean up.
    if !outputs.is_empty() {
        let mut merged = parse_object("outputs", &resource.outputs_json).unwrap_or_default();
        merged.extend(outputs);
        resource.outputs_json = Value::Object(merged).to_string();
    }
    let trigger = Trigger {
        at_ms: run.finished_at_ms.unwrap_or(at_ms),
        ..run.trigger.clone()
    };
    let from = run.to.clone();
    move_to(
        txn, entry, kind, resource, &from, &target, &run.event, &run.args, &trigger, false,
    )
}

/// Applies `TakeOverRun`: the entry's leader becomes the run's executor, at
/// the next attempt.
pub fn take_over(txn: &mut Txn<'_>, entry: EntryInfo, index: u64, attempt: u32) -> Applied {
    let mut run = running_run(txn, index, Some(attempt.saturating_sub(1)))?;
    let before = run.node_id;
    run.attempt = attempt;
    run.node_id = entry.leader;
    run.term = entry.term;
    run.since = entry.index;
    append_log_lines(
        txn,
        &run,
        vec![format!(
            "opsd: run taken over by node {} (attempt {attempt}; node {before} ran attempt {})",
            entry.leader,
            attempt.saturating_sub(1)
        )],
    )?;
    put_run(txn, &run)?;
    Ok(Outcome::RunChanged { run })
}

/// Applies `CancelRun`: marks the run; its executor stops the step.
pub fn cancel(txn: &mut Txn<'_>, index: u64, trigger: Trigger) -> Applied {
    if let Err(e) = validate_trigger(&trigger) {
        return reject(invalid(e));
    }
    let mut run = running_run(txn, index, None)?;
    if !run.cancel_requested {
        run.cancel_requested = true;
        let why = if trigger.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", trigger.reason)
        };
        append_log_lines(
            txn,
            &run,
            vec![format!("opsd: cancel requested by {}{why}", trigger.principal)],
        )?;
        put_run(txn, &run)?;
    }
    Ok(Outcome::RunChanged { run })
}

/// Applies `AppendRunLog`: lines from the attempt executing the run.
pub fn append_log(txn: &mut Txn<'_>, index: u64, attempt: u32, lines: Vec<String>) -> Applied {
    let run = running_run(txn, index, Some(attempt))?;
    if lines.len() > MAX_LOG_LINES {
        return reject(invalid(format!(
            "lines: {} lines in one append, the limit is {MAX_LOG_LINES}",
            lines.len()
        )));
    }
    append_log_lines(txn, &run, lines)?;
    Ok(Outcome::RunChanged { run })
}

// ---- reads ----

/// A kind by name, stored or (not yet installed) built in, with its record
/// (`None` for a built-in kind only this build embeds). A stored kind this
/// build cannot read is an error that names it and says what to do.
pub fn read_kind(view: &ReadView<'_>, name: &str) -> Result<Option<(Kind, Option<KindRecord>)>, TxnError> {
    match load_kind(|k| view.get(KINDS, k), name)? {
        None => Ok(None),
        Some(Found::Unreadable(why)) => Err(TxnError(why)),
        Some(Found::Stored(stored)) => Ok(Some(kind_and_record(&stored, true))),
        Some(Found::Embedded(stored)) => Ok(Some(kind_and_record(&stored, false))),
    }
}

fn kind_and_record(stored: &StoredKind, in_table: bool) -> (Kind, Option<KindRecord>) {
    let record = in_table.then(|| KindRecord {
        source: stored.source.clone(),
        version: stored.version,
        builtin: stored.builtin_revision.is_some(),
    });
    (stored.kind.clone(), record)
}

/// Every kind: built-in ones first (stored, else as this build embeds
/// them), then registered ones, each by name. One this build cannot read
/// fails the list with a message naming it.
pub fn list_kinds(view: &ReadView<'_>) -> Result<Vec<(Kind, Option<KindRecord>)>, TxnError> {
    let mut builtin = Vec::new();
    let mut registered = Vec::new();
    for (k, v) in view.scan_prefix(KINDS, b"")? {
        let name = String::from_utf8_lossy(&k);
        let stored = cached_kind(&name, &v).map_err(TxnError)?;
        let (kind, record) = kind_and_record(&stored, true);
        if stored.builtin_revision.is_some() {
            builtin.push((kind, record));
        } else {
            registered.push((kind, record));
        }
    }
    for embedded in embedded_builtins() {
        let name = &embedded.kind.name;
        let taken = builtin.iter().chain(&registered).any(|(k, _)| &k.name == name);
        if !taken {
            builtin.push(kind_and_record(embedded, false));
        }
    }
    // In the order this build lists them; others (a newer build's) after, by name.
    builtin.sort_by_key(|(k, _)| {
        let position = kind::BUILTIN.iter().position(|(n, _)| *n == k.name);
        (position.unwrap_or(usize::MAX), k.name.clone())
    });
    builtin.extend(registered);
    Ok(builtin)
}

/// One resource.
pub fn read_resource(view: &ReadView<'_>, kind: &str, name: &str) -> Result<Option<ResourceRecord>, TxnError> {
    view.get(RESOURCES, &resource_key(kind, name))?
        .map(|b| decode(&b, "resource record"))
        .transpose()
}

/// The resources of a kind (all kinds for an empty one), by kind and name.
pub fn list_resources(view: &ReadView<'_>, kind: &str) -> Result<Vec<ResourceRecord>, TxnError> {
    let prefix = if kind.is_empty() {
        Vec::new()
    } else {
        [kind.as_bytes(), b"\0"].concat()
    };
    view.scan_prefix(RESOURCES, &prefix)?
        .iter()
        .map(|(_, v)| decode(v, "resource record"))
        .collect()
}

/// One run.
pub fn read_run(view: &ReadView<'_>, index: u64) -> Result<Option<RunRecord>, TxnError> {
    view.get(RUNS, &index.to_be_bytes())?
        .map(|b| decode(&b, "run record"))
        .transpose()
}

/// One resource's runs, oldest first.
pub fn history(view: &ReadView<'_>, kind: &str, name: &str) -> Result<Vec<RunRecord>, TxnError> {
    let mut out = Vec::new();
    for (k, _) in view.scan_prefix(RUNS_BY_RESOURCE, &by_resource_prefix(kind, name))? {
        let Some(index) = k.get(k.len().saturating_sub(8)..).and_then(|b| b.try_into().ok()) else {
            continue;
        };
        if let Some(run) = read_run(view, u64::from_be_bytes(index))? {
            out.push(run);
        }
    }
    Ok(out)
}

/// The runs still running.
pub fn running(view: &ReadView<'_>) -> Result<Vec<RunRecord>, TxnError> {
    let mut out = Vec::new();
    for (k, _) in view.scan_prefix(RUNNING, b"")? {
        let Ok(index) = <[u8; 8]>::try_from(k.as_slice()) else {
            continue;
        };
        if let Some(run) = read_run(view, u64::from_be_bytes(index))? {
            out.push(run);
        }
    }
    Ok(out)
}

/// Runs, newest first, that pass `keep`, at most `limit`, stopping at the
/// first run started before `since_ms`.
pub fn list_runs(
    view: &ReadView<'_>,
    since_ms: Option<i64>,
    limit: usize,
    keep: impl Fn(&RunRecord) -> bool,
) -> Result<Vec<RunRecord>, TxnError> {
    let mut out = Vec::new();
    let mut until = u64::MAX.to_be_bytes().to_vec();
    'pages: loop {
        let page = view.scan_range(RUNS, &[], &until, true, 512)?;
        if page.is_empty() {
            break;
        }
        for (k, v) in &page {
            let run: RunRecord = decode(v, "run record")?;
            if since_ms.is_some_and(|s| run.trigger.at_ms < s) {
                break 'pages;
            }
            if keep(&run) {
                out.push(run);
                if out.len() >= limit {
                    break 'pages;
                }
            }
            until = k.clone();
        }
    }
    Ok(out)
}

/// A run's stored log.
pub fn read_log(view: &ReadView<'_>, index: u64) -> Result<RunLog, TxnError> {
    Ok(view
        .get(RUN_LOGS, &index.to_be_bytes())?
        .map(|b| decode(&b, "run log"))
        .transpose()?
        .unwrap_or_default())
}

#[cfg(test)]
mod tests;
