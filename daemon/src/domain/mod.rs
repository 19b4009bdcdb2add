//! The product's replicated state: every change is a [`Command`], decoded and
//! applied in one place. Apply is deterministic: it reads only the transaction
//! it is given, and it re-validates every command against the stored state
//! (another proposal may have won), answering with a rejection, never a panic.

pub mod kind;
pub mod resources;
pub mod settings;
pub mod stats;

use std::collections::BTreeMap;

use opsd_cluster::{EntryInfo, StateMachineApp, Txn, TxnError};
use serde::{Deserialize, Serialize};

use resources::{settle, ResourceRecord, RunEnd, RunRecord};

/// The tables the domain keeps, one rocksdb column family each.
pub const TABLES: &[&str] = &[
    settings::TABLE,
    settings::META,
    resources::KINDS,
    resources::RESOURCES,
    resources::STATE_COUNTS,
    resources::RUNS,
    resources::RUNS_BY_RESOURCE,
    resources::RUNNING,
    resources::RUN_LOGS,
    stats::FINISHED,
    stats::BUCKETS,
];

/// Version of the command encoding; the first byte of every encoded command.
/// An unknown version is rejected by apply, never guessed at.
const COMMAND_VERSION: u8 = 1;

/// Every replicated change. New variants go at the end (the encoding numbers
/// variants in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set a setting, optionally only if its revision is as expected.
    PutSetting {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Compare-and-set: the key's mod_revision must equal this (0: absent).
        expected_revision: Option<u64>,
        /// Who asked, why, and when; recorded on the setting.
        trigger: Trigger,
    },
    /// Delete a setting, optionally only if its revision is as expected.
    DeleteSetting {
        /// The key.
        key: String,
        /// Compare-and-delete: the key's mod_revision must equal this.
        expected_revision: Option<u64>,
        /// Who asked, why, and when; published with the delete.
        trigger: Trigger,
    },
    /// Register or update a kind from its TOML source.
    PutKind {
        /// The kind file.
        source: String,
    },
    /// Create a resource in its kind's initial state.
    CreateResource {
        /// The kind.
        kind: String,
        /// The name, unique per kind.
        name: String,
        /// The spec, a JSON object as text.
        spec_json: String,
        /// Labels.
        labels: BTreeMap<String, String>,
        /// Who asked, why, and when.
        trigger: Trigger,
    },
    /// Do an event to a resource.
    DoEvent {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// The event.
        event: String,
        /// The event's arguments, passed to the steps it starts.
        args: BTreeMap<String, String>,
        /// Who asked, why, and when.
        trigger: Trigger,
    },
    /// Remove a resource that rests in a final state.
    DeleteResource {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
    },
    /// End a running run: its step's result, reported by the attempt that ran it.
    FinishRun {
        /// The run's index (its id is `r<index>`).
        run: u64,
        /// The attempt reporting; a stale attempt's finish is rejected.
        attempt: u32,
        /// How the step ended.
        end: RunEnd,
        /// When, by the proposer's clock.
        at_ms: i64,
    },
    /// A new leader takes over a run still running: the attempt goes up by one
    /// and the entry's leader becomes its executor.
    TakeOverRun {
        /// The run's index.
        run: u64,
        /// The new attempt: the stored attempt + 1.
        attempt: u32,
    },
    /// Ask a running run to stop.
    CancelRun {
        /// The run's index.
        run: u64,
        /// Who asked, why, and when.
        trigger: Trigger,
    },
    /// Append log lines to a running run's log.
    AppendRunLog {
        /// The run's index.
        run: u64,
        /// The attempt writing them.
        attempt: u32,
        /// The lines.
        lines: Vec<String>,
    },
}

/// Who asked for a change, why, from where, and when (by the proposer's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The user or service that asked.
    pub principal: String,
    /// Why, in their words (may be empty).
    pub reason: String,
    /// `api`, `schedule` or `recovery`.
    pub source: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Something that changed, published to the engine and to watchers once it
/// is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DomainEvent {
    /// A setting changed.
    Setting(settings::SettingEvent),
    /// A kind was registered or updated.
    Kind {
        /// The kind's name.
        name: String,
    },
    /// A resource was created or changed: the record after the change.
    Resource(ResourceRecord),
    /// A resource was removed: the record as it was.
    ResourceDeleted(ResourceRecord),
    /// A run started or changed: the record after the change.
    Run(RunRecord),
    /// Lines were appended to a run's log.
    RunLog {
        /// The run's index.
        run: u64,
        /// The resource's kind.
        kind: String,
        /// The resource's name.
        name: String,
        /// The position of the first line in the run's whole log.
        first_line: u64,
        /// The lines.
        lines: Vec<String>,
    },
}

impl DomainEvent {
    /// Decodes a published event.
    pub fn decode(bytes: &[u8]) -> Result<DomainEvent, String> {
        bincode::deserialize(bytes).map_err(|e| format!("undecodable event: {e}"))
    }
}

/// Why apply refused a command; maps onto a gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The command names something absent.
    NotFound(String),
    /// The command conflicts with the current state.
    FailedPrecondition(String),
    /// The command would create something that exists.
    AlreadyExists(String),
    /// The command itself is malformed.
    InvalidArgument(String),
}

/// Apply's answer to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A setting was written.
    SettingPut {
        /// The setting before, if it existed.
        previous: Option<settings::SettingRecord>,
        /// The revision of the write.
        revision: u64,
    },
    /// A setting was deleted.
    SettingDeleted {
        /// The setting before.
        previous: settings::SettingRecord,
        /// The revision of the delete.
        revision: u64,
    },
    /// A kind was registered or updated at `version`.
    KindPut {
        /// The kind's name.
        name: String,
        /// The log index of the change.
        version: u64,
    },
    /// A resource changed (created, or an event done); `run` is the run the
    /// change started, if any.
    ResourceChanged {
        /// The resource after the change.
        resource: ResourceRecord,
        /// The run started by the change.
        run: Option<RunRecord>,
    },
    /// A resource was removed.
    ResourceDeleted {
        /// The resource as it was.
        resource: ResourceRecord,
    },
    /// A run changed (finished, taken over, asked to cancel, log appended).
    RunChanged {
        /// The run after the change.
        run: RunRecord,
    },
    /// Nothing changed, for this reason.
    Rejected(Rejection),
}

impl Command {
    /// Encodes the command for the log.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![COMMAND_VERSION];
        // Encoding owned strings and integers into a Vec cannot fail.
        out.extend(bincode::serialize(self).unwrap_or_default());
        out
    }

    /// Decodes a command from the log.
    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        match bytes.split_first() {
            Some((&COMMAND_VERSION, rest)) => bincode::deserialize(rest).map_err(|e| format!("undecodable command: {e}")),
            Some((v, _)) => Err(format!(
                "command encoding version {v} is unknown to this opsd (it understands {COMMAND_VERSION}); upgrade this node"
            )),
            None => Err("empty command".into()),
        }
    }
}

impl Command {
    /// Whether apply lets this command share its log entry, and so its index,
    /// with other commands: it starts no run (a run's id is its entry's
    /// index). Settings writes then share a revision, as one transaction.
    pub fn may_share_entry(&self) -> bool {
        matches!(
            self,
            Command::PutSetting { .. } | Command::DeleteSetting { .. } | Command::AppendRunLog { .. }
        )
    }

    /// Replicates the command through `node`; returns its log index and the
    /// encoded apply answer.
    pub async fn replicate(
        &self,
        node: &opsd_cluster::ClusterNode,
    ) -> Result<(u64, Vec<u8>), opsd_cluster::ClusterError> {
        if self.may_share_entry() {
            node.write_shared(self.encode()).await
        } else {
            node.write(self.encode()).await
        }
    }
}

/// Decodes an apply answer.
pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, String> {
    bincode::deserialize(bytes).map_err(|e| format!("undecodable apply answer: {e}"))
}

/// The domain's apply function, handed to the cluster.
pub struct Domain;

impl StateMachineApp for Domain {
    fn apply(&self, txn: &mut Txn<'_>, entry: EntryInfo, command: &[u8]) -> Result<Vec<u8>, TxnError> {
        let index = entry.index;
        let outcome = match Command::decode(command) {
            Err(reason) => Outcome::Rejected(Rejection::InvalidArgument(reason)),
            Ok(Command::PutSetting {
                key,
                value,
                expected_revision,
                trigger,
            }) => settings::apply_put(txn, &key, &value, expected_revision, trigger)?,
            Ok(Command::DeleteSetting {
                key,
                expected_revision,
                trigger,
            }) => settings::apply_delete(txn, &key, expected_revision, trigger)?,
            Ok(Command::PutKind { source }) => settle(resources::put_kind(txn, index, &source))?,
            Ok(Command::CreateResource {
                kind,
                name,
                spec_json,
                labels,
                trigger,
            }) => settle(resources::create(txn, entry, &kind, &name, &spec_json, labels, trigger))?,
            Ok(Command::DoEvent {
                kind,
                name,
                event,
                args,
                trigger,
            }) => settle(resources::do_event(txn, entry, &kind, &name, &event, args, trigger))?,
            Ok(Command::DeleteResource { kind, name }) => settle(resources::delete(txn, &kind, &name))?,
            Ok(Command::FinishRun {
                run,
                attempt,
                end,
                at_ms,
            }) => settle(resources::finish_run(txn, entry, run, attempt, end, at_ms))?,
            Ok(Command::TakeOverRun { run, attempt }) => settle(resources::take_over(txn, entry, run, attempt))?,
            Ok(Command::CancelRun { run, trigger }) => settle(resources::cancel(txn, run, trigger))?,
            Ok(Command::AppendRunLog { run, attempt, lines }) => {
                settle(resources::append_log(txn, run, attempt, lines))?
            }
        };
        bincode::serialize(&outcome).map_err(|e| TxnError(format!("encoding the outcome: {e}")))
    }
}

/// Encodes a stored record or event.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, TxnError> {
    bincode::serialize(v).map_err(|e| TxnError(format!("encoding: {e}")))
}

/// Decodes a stored record; `what` names it in the error.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, TxnError> {
    bincode::deserialize(bytes).map_err(|e| TxnError(format!("undecodable {what}: {e}")))
}

/// Apply without Raft, for unit tests of every command.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use opsd_cluster::{EntryInfo, LocalState};

    use super::*;

    /// A real rocksdb state in a temporary directory, applying commands at
    /// increasing indexes as if committed by `leader`.
    pub struct TestState {
        _dir: tempfile::TempDir,
        /// The state.
        pub state: LocalState,
        /// The index of the last applied command.
        pub index: u64,
        /// The leader the next commands are committed by.
        pub leader: u64,
        /// The term they are committed in.
        pub term: u64,
    }

    impl TestState {
        /// An empty state.
        pub fn new() -> TestState {
            let dir = tempfile::tempdir().unwrap();
            let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
            let state = LocalState::open(dir.path(), &tables, Arc::new(Domain)).unwrap();
            TestState {
                _dir: dir,
                state,
                index: 0,
                leader: 1,
                term: 1,
            }
        }

        /// Applies a command at the next index.
        pub fn apply(&mut self, cmd: Command) -> (Outcome, Vec<DomainEvent>) {
            let (answer, events) = self.apply_raw(&cmd.encode());
            (answer, events)
        }

        /// Applies raw command bytes at the next index.
        pub fn apply_raw(&mut self, bytes: &[u8]) -> (Outcome, Vec<DomainEvent>) {
            self.index += 1;
            let entry = EntryInfo {
                index: self.index,
                leader: self.leader,
                term: self.term,
            };
            let (answer, events) = self.state.apply(entry, bytes).unwrap();
            let events = events.iter().map(|e| DomainEvent::decode(e).unwrap()).collect();
            (decode_outcome(&answer).unwrap(), events)
        }
    }
}
