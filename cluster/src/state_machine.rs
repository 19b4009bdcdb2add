//! The replicated state: committed entries are applied, in order, by the
//! application's apply function through a [`Txn`] over named tables; the
//! applied log id and membership are written in the same atomic batch, so the
//! state on disk always says exactly which entries it covers. Snapshots are a
//! consistent copy of every table, kept in a file beside the database.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::data_dir::write_atomically;
use crate::log_store::AnyErr;
use crate::storage::{Store, CF_SM};
use crate::types::{CommandResponse, Entry, LogId, NodeId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::wire::{decode, encode, seal, unseal};

const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"last_membership";

/// Reads the state machine's bookkeeping (last applied log id, membership)
/// through `get`, which reads `sm_meta` from the database or a snapshot of it.
pub(crate) fn read_applied_state(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<(Option<LogId>, StoredMembership), String> {
    let read = |key: &[u8]| get(key).map_err(|e| format!("reading {}: {e}", String::from_utf8_lossy(key)));
    let applied = read(KEY_APPLIED)?.map(|b| decode(&b)).transpose()?.flatten();
    let membership = read(KEY_MEMBERSHIP)?
        .map(|b| decode(&b))
        .transpose()?
        .unwrap_or_default();
    Ok((applied, membership))
}

/// An application table's column family; an undeclared table is an error.
fn app_table<'s>(store: &'s Store, table: &str) -> Result<&'s rocksdb::ColumnFamily, TxnError> {
    store
        .table(table)
        .ok_or_else(|| TxnError(format!("table {table} was not declared by the application")))
}

/// The application's side of the state machine: how a committed command
/// changes the tables. It must be deterministic: the same command on the same
/// state gives the same writes and answer on every node, so it may not read
/// clocks, draw random numbers or do I/O other than through the [`Txn`].
pub trait StateMachineApp: Send + Sync + 'static {
    /// Applies the command committed as `entry` and returns the answer for
    /// the client that proposed it. A command that is invalid for the current
    /// state is answered with a rejection, not an error: an `Err` means this
    /// node cannot apply the entry (the storage failed, or its build cannot
    /// read the command) and stops it: Raft stops, the error is logged, and
    /// [`ClusterNode::failed`](crate::ClusterNode::failed) returns it. The
    /// entry stays unapplied, so a restarted (or upgraded) node retries it.
    fn apply(&self, txn: &mut Txn<'_>, entry: EntryInfo, command: &[u8]) -> Result<Vec<u8>, TxnError>;
}

/// Where a committed entry sits in the log: part of the entry itself, so the
/// same on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryInfo {
    /// The entry's log index.
    pub index: u64,
    /// The leader that appended the entry (the leader of its term): work an
    /// entry starts belongs to this node.
    pub leader: NodeId,
    /// The term the entry was appended in.
    pub term: u64,
}

/// Key/value pairs read from a table, in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A storage failure seen by the application, or a table it did not declare.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TxnError(pub String);

/// Something the state changed by, published after it is written.
#[derive(Debug, Clone)]
pub enum AppliedEvent {
    /// An event the application emitted while applying the entry at `index`.
    Applied {
        /// The log index of the entry.
        index: u64,
        /// The application's event bytes.
        event: Arc<Vec<u8>>,
    },
    /// The whole state was replaced by a snapshot covering up to `index`:
    /// anyone following changes event by event must re-read.
    SnapshotInstalled {
        /// The last index the snapshot covers.
        index: u64,
    },
}

/// The writes of one apply batch, readable before they are committed.
pub struct Txn<'a> {
    store: &'a Store,
    batch: WriteBatch,
    overlay: HashMap<(String, Vec<u8>), Option<Vec<u8>>>,
    events: Vec<(u64, Vec<u8>)>,
    index: u64,
    /// The tables written, in the store's table order.
    touched: Vec<bool>,
}

impl<'a> Txn<'a> {
    fn new(store: &'a Store) -> Self {
        Txn {
            store,
            batch: WriteBatch::default(),
            overlay: HashMap::new(),
            events: Vec::new(),
            index: 0,
            touched: vec![false; store.tables.len()],
        }
    }

    /// Marks `table` written; an unknown table is an error.
    fn touch(&mut self, table: &str) -> Result<&'a rocksdb::ColumnFamily, TxnError> {
        let cf = app_table(self.store, table)?;
        if let Some(i) = self.store.table_index(table) {
            self.touched[i] = true;
        }
        Ok(cf)
    }

    /// Writes the batch, then counts the writes in the tables' generations.
    fn commit(self, sync: bool) -> Result<(), rocksdb::Error> {
        self.store.write(self.batch, sync)?;
        self.store.bump(&self.touched);
        Ok(())
    }

    /// Reads a key, seeing this transaction's own writes.
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        let cf = app_table(self.store, table)?;
        if let Some(v) = self.overlay.get(&(table.to_string(), key.to_vec())) {
            return Ok(v.clone());
        }
        self.store
            .checked(self.store.db.get_cf(cf, key))
            .map_err(|e| TxnError(format!("reading table {table}: {e}")))
    }

    /// Writes a key.
    pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), TxnError> {
        let cf = self.touch(table)?;
        self.batch.put_cf(cf, key, value);
        self.overlay
            .insert((table.to_string(), key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    /// Deletes a key.
    pub fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), TxnError> {
        let cf = self.touch(table)?;
        self.batch.delete_cf(cf, key);
        self.overlay.insert((table.to_string(), key.to_vec()), None);
        Ok(())
    }

    /// Publishes an event once this transaction is written (watchers get it).
    pub fn emit(&mut self, event: Vec<u8>) {
        self.events.push((self.index, event));
    }
}

/// A consistent, point-in-time view of the applied state.
pub struct ReadView<'a> {
    store: &'a Store,
    snap: rocksdb::Snapshot<'a>,
    /// The tables' generations, read just before the snapshot was taken.
    generations: Vec<u64>,
}

impl<'a> ReadView<'a> {
    fn new(store: &'a Store) -> Self {
        let generations = store.generations();
        ReadView {
            store,
            snap: store.db.snapshot(),
            generations,
        }
    }

    /// How many committed writes had changed `table` (since this process
    /// started) when this view was taken; `None` for an unknown table. Two
    /// views with the same generation of a table saw the same rows of it,
    /// except around a write still being applied: a view taken after the
    /// apply that wrote returned (and so after any answer to its writer)
    /// has a higher generation. So what was read from a table may be kept
    /// and used again while the generation stays the same.
    pub fn generation(&self, table: &str) -> Option<u64> {
        self.store.table_index(table).map(|i| self.generations[i])
    }

    /// The index of the last entry this view covers (0 before any).
    pub fn applied_index(&self) -> Result<u64, TxnError> {
        let cf = self.store.cf(CF_SM).map_err(|e| TxnError(e.to_string()))?;
        let (applied, _) = read_applied_state(|k| self.store.checked(self.snap.get_cf(cf, k))).map_err(TxnError)?;
        Ok(applied.map(|l| l.index).unwrap_or(0))
    }

    /// Reads one key.
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        let cf = app_table(self.store, table)?;
        self.store
            .checked(self.snap.get_cf(cf, key))
            .map_err(|e| TxnError(format!("reading table {table}: {e}")))
    }

    /// Reads every key that starts with `prefix`, in key order.
    pub fn scan_prefix(&self, table: &str, prefix: &[u8]) -> Result<Rows, TxnError> {
        let cf = app_table(self.store, table)?;
        let mut out = Vec::new();
        let iter = self
            .snap
            .iterator_cf(cf, IteratorMode::From(prefix, rocksdb::Direction::Forward));
        for item in iter {
            let (k, v) = self
                .store
                .checked(item)
                .map_err(|e| TxnError(format!("reading table {table}: {e}")))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Reads keys in `[from, until)`, in key order or (with `reverse`) from
    /// the end, at most `limit` of them.
    pub fn scan_range(
        &self,
        table: &str,
        from: &[u8],
        until: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Rows, TxnError> {
        let cf = app_table(self.store, table)?;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_lower_bound(from.to_vec());
        opts.set_iterate_upper_bound(until.to_vec());
        opts.set_snapshot(&self.snap);
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::Start
        };
        let mut out = Vec::new();
        for item in self.store.db.iterator_cf_opt(cf, opts, mode).take(limit) {
            let (k, v) = self
                .store
                .checked(item)
                .map_err(|e| TxnError(format!("reading table {table}: {e}")))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

/// Reads the applied state; cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    store: Arc<Store>,
}

impl StateReader {
    /// A consistent view of the state as applied now.
    pub fn view(&self) -> ReadView<'_> {
        ReadView::new(&self.store)
    }
}

/// What a snapshot file holds: its metadata and the encoded tables.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The tables of a snapshot, by table name.
#[derive(Serialize, Deserialize)]
struct SnapshotTables {
    tables: Vec<(String, Rows)>,
}

/// Reads and verifies a snapshot file whole (its checksum, its tables):
/// the last log index it covers, or `None` if there is no file.
pub(crate) fn read_snapshot_file(path: &std::path::Path) -> Result<Option<u64>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let stored: StoredSnapshot = decode(&bytes)?;
    let _: SnapshotTables = decode(unseal(&stored.data)?)?;
    Ok(Some(stored.meta.last_log_id.map(|l| l.index).unwrap_or(0)))
}

/// The state machine openraft drives.
pub struct StateMachineStore {
    store: Arc<Store>,
    app: Arc<dyn StateMachineApp>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    events: broadcast::Sender<AppliedEvent>,
    snapshot_path: PathBuf,
    snapshot_seq: u64,
}

impl StateMachineStore {
    pub(crate) fn open(
        store: Arc<Store>,
        app: Arc<dyn StateMachineApp>,
        events: broadcast::Sender<AppliedEvent>,
        snapshot_path: PathBuf,
    ) -> Result<Self, StorageError> {
        let cf = store.cf(CF_SM)?;
        let (last_applied, last_membership) = read_applied_state(|k| store.db.get_cf(cf, k))
            .map_err(|e| StorageIOError::read_state_machine(&AnyErr(e)))?;
        Ok(StateMachineStore {
            store,
            app,
            last_applied,
            last_membership,
            events,
            snapshot_path,
            snapshot_seq: 0,
        })
    }

    /// A reader of the same state.
    pub(crate) fn reader(&self) -> StateReader {
        StateReader {
            store: self.store.clone(),
        }
    }

    #[cfg(test)]
    pub(crate) fn subscribe_for_test(&self) -> broadcast::Receiver<AppliedEvent> {
        self.events.subscribe()
    }

    fn put_meta(&self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        let cf = self.store.cf(CF_SM)?;
        let applied = encode(&self.last_applied).map_err(|e| StorageIOError::write_state_machine(&AnyErr(e)))?;
        let membership = encode(&self.last_membership).map_err(|e| StorageIOError::write_state_machine(&AnyErr(e)))?;
        batch.put_cf(cf, KEY_APPLIED, applied);
        batch.put_cf(cf, KEY_MEMBERSHIP, membership);
        Ok(())
    }
}

/// Builds snapshots from a consistent view of the database.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    snapshot_path: PathBuf,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let path = self.snapshot_path.clone();
        let seq = self.seq;
        tokio::task::spawn_blocking(move || build_snapshot_blocking(&store, &path, seq))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &AnyErr(e.to_string())))?
    }
}

fn build_snapshot_blocking(
    store: &Store,
    path: &std::path::Path,
    seq: u64,
) -> Result<Snapshot<TypeConfig>, StorageError> {
    let err = |e: String| -> StorageError { StorageIOError::write_snapshot(None, &AnyErr(e)).into() };
    let snap = store.db.snapshot();
    let sm = store.cf(CF_SM)?;
    let (last_applied, last_membership) = read_applied_state(|k| snap.get_cf(sm, k)).map_err(err)?;
    let mut tables = Vec::with_capacity(store.tables.len());
    for name in &store.tables {
        let cf = store
            .table(name)
            .ok_or_else(|| err(format!("table {name} is missing")))?;
        let mut rows = Vec::new();
        for item in snap.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = store.checked(item).map_err(|e| err(e.to_string()))?;
            rows.push((k.to_vec(), v.to_vec()));
        }
        tables.push((name.clone(), rows));
    }
    let data = seal(encode(&SnapshotTables { tables }).map_err(err)?);
    let snapshot_id = match last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
        None => format!("0-0-{seq}"),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership,
        snapshot_id,
    };
    let stored = StoredSnapshot {
        meta: meta.clone(),
        data,
    };
    let bytes = encode(&stored).map_err(err)?;
    write_atomically(path, &bytes).map_err(|e| {
        let e = format!("writing {}: {e}", path.display());
        store.note_write_error(&e);
        err(e)
    })?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(stored.data)),
    })
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let store = self.store.clone();
        let mut txn = Txn::new(&store);
        let mut responses = Vec::new();
        for entry in entries {
            txn.index = entry.log_id.index;
            self.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(cmd) => {
                    let info = EntryInfo {
                        index: entry.log_id.index,
                        leader: entry.log_id.leader_id.node_id,
                        term: entry.log_id.leader_id.term,
                    };
                    let mut answers = Vec::with_capacity(cmd.0.len());
                    for command in &cmd.0 {
                        let answer = self
                            .app
                            .apply(&mut txn, info, command)
                            .map_err(|e| StorageIOError::write_state_machine(&AnyErr(e.0)))?;
                        answers.push(answer);
                    }
                    answers
                }
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
            };
            responses.push(CommandResponse(response));
        }
        self.put_meta(&mut txn.batch)?;
        let events = std::mem::take(&mut txn.events);
        // Not fsynced: the log entries these came from already are, and a
        // node that loses this write re-applies them from the log.
        txn.commit(false).map_err(|e| StorageIOError::write_state_machine(&e))?;
        for (index, event) in events {
            // No subscribers is fine.
            let _ = self.events.send(AppliedEvent::Applied {
                index,
                event: Arc::new(event),
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            store: self.store.clone(),
            snapshot_path: self.snapshot_path.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let sig = Some(meta.signature());
        let err = |e: String| -> StorageError { StorageIOError::write_snapshot(sig.clone(), &AnyErr(e)).into() };
        // Verified whole before anything is written: a damaged snapshot
        // changes nothing and fails the install.
        let tables: SnapshotTables = decode(unseal(&data).map_err(err)?).map_err(err)?;
        let mut batch = WriteBatch::default();
        for name in &self.store.tables {
            let cf = self
                .store
                .table(name)
                .ok_or_else(|| err(format!("table {name} is missing")))?;
            for item in self.store.db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = self.store.checked(item).map_err(|e| err(e.to_string()))?;
                batch.delete_cf(cf, k);
            }
        }
        for (name, rows) in &tables.tables {
            // A table this version does not know is dropped: nothing reads it.
            let Some(cf) = self.store.table(name) else { continue };
            for (k, v) in rows {
                batch.put_cf(cf, k, v);
            }
        }
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.put_meta(&mut batch)?;
        self.store.write(batch, true).map_err(|e| err(e.to_string()))?;
        self.store.bump(&vec![true; self.store.tables.len()]);
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let bytes = encode(&stored).map_err(err)?;
        write_atomically(&self.snapshot_path, &bytes).map_err(|e| {
            let e = format!("writing {}: {e}", self.snapshot_path.display());
            self.store.note_write_error(&e);
            err(e)
        })?;
        let _ = self.events.send(AppliedEvent::SnapshotInstalled {
            index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let bytes = match std::fs::read(&self.snapshot_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        let stored: StoredSnapshot = decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &AnyErr(e)))?;
        // A damaged file is never sent to another node.
        unseal(&stored.data).map_err(|e| {
            StorageIOError::read_snapshot(None, &AnyErr(format!("{}: {e}", self.snapshot_path.display())))
        })?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

/// A state without Raft: applies commands straight to a rocksdb database in
/// a directory. For unit tests of an application's apply function, so every
/// transition rule is tested on real storage without starting a cluster.
pub struct LocalState {
    store: Arc<Store>,
    app: Arc<dyn StateMachineApp>,
}

impl LocalState {
    /// Opens (or creates) the database in `dir` with the given tables.
    pub fn open(dir: &std::path::Path, tables: &[String], app: Arc<dyn StateMachineApp>) -> Result<Self, TxnError> {
        let store = Store::open(dir, tables).map_err(|e| TxnError(e.to_string()))?;
        Ok(LocalState {
            store: Arc::new(store),
            app,
        })
    }

    /// Applies one command as if committed as `entry`; returns the answer and
    /// the events it emitted. Its writes are committed only if apply succeeds.
    pub fn apply(&self, entry: EntryInfo, command: &[u8]) -> Result<(Vec<u8>, Vec<Vec<u8>>), TxnError> {
        let mut txn = Txn::new(&self.store);
        txn.index = entry.index;
        let answer = self.app.apply(&mut txn, entry, command)?;
        let events = std::mem::take(&mut txn.events);
        txn.commit(false).map_err(|e| TxnError(e.to_string()))?;
        Ok((answer, events.into_iter().map(|(_, e)| e).collect()))
    }

    /// Runs `f` on one transaction and commits its writes, for tests that
    /// build a large state directly rather than command by command.
    pub fn with_txn(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<(), TxnError>) -> Result<(), TxnError> {
        let mut txn = Txn::new(&self.store);
        f(&mut txn)?;
        txn.commit(false).map_err(|e| TxnError(e.to_string()))
    }

    /// A view of the state.
    pub fn view(&self) -> ReadView<'_> {
        ReadView::new(&self.store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts the command's bytes under key `k` of the table it names.
    struct PutIn;

    impl StateMachineApp for PutIn {
        fn apply(&self, txn: &mut Txn<'_>, _: EntryInfo, command: &[u8]) -> Result<Vec<u8>, TxnError> {
            let table = std::str::from_utf8(command).map_err(|e| TxnError(e.to_string()))?;
            txn.put(table, b"k", command)?;
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_committed_write_moves_only_its_tables_generation() {
        let dir = tempfile::tempdir().unwrap();
        let tables = vec!["a".to_string(), "b".to_string()];
        let state = LocalState::open(dir.path(), &tables, Arc::new(PutIn)).unwrap();
        let entry = EntryInfo {
            index: 1,
            leader: 1,
            term: 1,
        };
        let before = state.view();
        assert_eq!((before.generation("a"), before.generation("b")), (Some(0), Some(0)));
        assert_eq!(before.generation("c"), None);
        state.apply(entry, b"a").unwrap();
        let after = state.view();
        assert_eq!((after.generation("a"), after.generation("b")), (Some(1), Some(0)));
        // A view keeps the generations it was taken with.
        assert_eq!(before.generation("a"), Some(0));
        // A write apply refuses commits nothing and counts nothing.
        assert!(state.apply(entry, b"c").is_err());
        assert_eq!(state.view().generation("a"), Some(1));
    }
}
