//! The Raft log in rocksdb: entries in the `raft_log` column family keyed by
//! big-endian index, and the vote, committed id and purge point in `raft_meta`.
//! Appends and votes are fsynced before they are acknowledged.
//!
//! An append is written at once (readable by replication) but acknowledged
//! only once a dedicated thread has fsynced the write-ahead log. That thread
//! syncs whatever has been written by the time it runs, so appends that
//! arrive while it syncs share the next fsync (group commit). openraft 0.9's
//! core still waits for each append's acknowledgement before the next one,
//! so on a leader every client write pays its own fsync; batching writes
//! into one entry is what would lift that.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::data_dir::DataDir;
use crate::log_mark::LogMark;
use crate::storage::{Store, CF_LOG, CF_META};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::wire::{decode, encode, index_key, key_index};

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_PURGED: &[u8] = b"last_purged";

/// The log store; cheap to clone (it shares the database and the syncer).
#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
    syncer: mpsc::Sender<LogFlushed<TypeConfig>>,
    /// The data dir, to record there (once, before the write) that the
    /// database took a vote or a log entry: see `NodeIdentity::raft_state`.
    data_dir: Arc<Mutex<DataDir>>,
    raft_state_recorded: Arc<AtomicBool>,
    /// The highest index known to be on disk: see `log_mark`.
    mark: Arc<LogMark>,
}

impl LogStore {
    /// Opens the log store on the database and its data dir (where the log
    /// mark is kept); fails naming the file if the mark cannot be read, or if
    /// the sync thread cannot start.
    pub(crate) fn new(store: Arc<Store>, data_dir: Arc<Mutex<DataDir>>) -> Result<Self, String> {
        let (recorded, mark) = {
            let dir = data_dir.lock().unwrap_or_else(|p| p.into_inner());
            let mark = LogMark::open(dir.path()).map_err(|e| {
                format!(
                    "{e}; the log mark is damaged: if `opsd --data-dir {} check` finds everything else sound, delete \
                     the file to start without this check once",
                    dir.path().display()
                )
            })?;
            (dir.identity().raft_state, mark)
        };
        let mark = Arc::new(mark);
        let (syncer, pending) = mpsc::channel();
        // The thread ends when the last clone of this log store is dropped;
        // it holds no strong reference, so it never keeps the database open.
        let wal = Arc::downgrade(&store);
        let sync_mark = mark.clone();
        std::thread::Builder::new()
            .name("opsd-wal-sync".into())
            .spawn(move || sync_appends(&wal, &sync_mark, pending))
            .map_err(|e| format!("cannot start the log's sync thread: {e}"))?;
        Ok(LogStore {
            store,
            syncer,
            data_dir,
            raft_state_recorded: Arc::new(AtomicBool::new(recorded)),
            mark,
        })
    }

    /// The log's last index and the mark, if the log ends before the mark:
    /// entries that were fsynced (and acknowledged) are gone, because the
    /// write-ahead log was cut short or lost its tail.
    pub(crate) fn ends_before_mark(&self) -> Result<Option<(u64, u64)>, StorageError> {
        let last = self.log_state()?.last_log_id.map(|l| l.index).unwrap_or(0);
        let mark = self.mark.get();
        Ok((last < mark).then_some((last, mark)))
    }

    /// Whether the database holds a vote or any log entry (or a purge point,
    /// which only a log that had entries leaves).
    pub(crate) fn has_raft_state(&self) -> Result<bool, StorageError> {
        let vote: Option<Vote<NodeId>> = self.get_meta(KEY_VOTE)?;
        Ok(vote.is_some() || self.log_state()?.last_log_id.is_some())
    }

    /// Records in the data dir that the database holds Raft state, the first
    /// time this is called; `write` says what for, in the error.
    fn record_raft_state(&self, write: fn(&AnyErr) -> StorageIOError<NodeId>) -> Result<(), StorageError> {
        if self.raft_state_recorded.load(Ordering::Acquire) {
            return Ok(());
        }
        self.data_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark_raft_state()
            .map_err(|e| write(&AnyErr(e.to_string())))?;
        self.raft_state_recorded.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes entries in one batch; with `sync`, fsynced before returning.
    pub(crate) fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        sync: bool,
    ) -> Result<(), StorageError> {
        let cf = self.store.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        let mut last = None;
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| StorageIOError::write_logs(&AnyErr(e)))?;
            batch.put_cf(cf, index_key(entry.log_id.index), bytes);
            last = Some(entry.log_id.index);
        }
        self.store
            .write(batch, false)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        if let Some(last) = last {
            self.mark.written(last);
        }
        if sync {
            sync_wal(&self.store, &self.mark).map_err(|e| StorageIOError::write_logs(&AnyErr(e)))?;
        }
        Ok(())
    }

    /// The first damage a read of the database met, once one has.
    pub(crate) fn damage(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.store.damage()
    }

    /// Writes every memtable to the table files, so that the next start has
    /// no write-ahead log to replay, then stops the database's background
    /// flushes and compactions, waiting for those under way: the last thing
    /// before the process exits.
    pub(crate) fn stop_background_work(&self) {
        self.store.flush_all();
        self.store.db.cancel_all_background_work(true);
    }

    /// The first and last log ids in the log (as openraft asks at start-up).
    pub(crate) fn log_state(&self) -> Result<LogState<TypeConfig>, StorageError> {
        let cf = self.store.cf(CF_LOG)?;
        let last = match self.store.db.iterator_cf(cf, IteratorMode::End).next() {
            Some(item) => {
                let (_, v) = self.store.checked(item).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(
                    decode::<Entry>(&v)
                        .map_err(|e| StorageIOError::read_logs(&AnyErr(e)))?
                        .log_id,
                )
            }
            None => None,
        };
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let raw = self
            .store
            .checked(self.store.db.get_cf(self.store.cf(CF_META)?, key))
            .map_err(|e| StorageIOError::read(&e))?;
        raw.map(|b| decode(&b).map_err(|e| StorageIOError::read(&AnyErr(e)).into()))
            .transpose()
    }
}

/// A string error for openraft's error constructors.
#[derive(Debug)]
pub(crate) struct AnyErr(pub String);
impl std::fmt::Display for AnyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for AnyErr {}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.store.cf(CF_LOG)?;
        let mut out = Vec::new();
        for item in self
            .store
            .db
            .iterator_cf(cf, IteratorMode::From(&index_key(start), Direction::Forward))
        {
            let (k, v) = self.store.checked(item).map_err(|e| StorageIOError::read_logs(&e))?;
            let index =
                key_index(&k).ok_or_else(|| StorageIOError::read_logs(&AnyErr("log key is not 8 bytes".into())))?;
            if !range.contains(&index) {
                break;
            }
            out.push(decode::<Entry>(&v).map_err(|e| StorageIOError::read_logs(&AnyErr(e)))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.log_state()
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.record_raft_state(|e| StorageIOError::write_vote(e))?;
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&AnyErr(e)))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.store.cf(CF_META)?, KEY_VOTE, bytes);
        self.store
            .write(batch, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = encode(&committed).map_err(|e| StorageIOError::write(&AnyErr(e)))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.store.cf(CF_META)?, KEY_COMMITTED, bytes);
        self.store
            .write(batch, false)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Err(e) = self.record_raft_state(|e| StorageIOError::write_logs(e)) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(e);
        }
        match self.write_entries(entries, false) {
            Ok(()) => {
                if let Err(mpsc::SendError(callback)) = self.syncer.send(callback) {
                    callback.log_io_completed(Err(std::io::Error::other("the log's sync thread has stopped")));
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.mark.before_truncate(log_id.index).map_err(|e| {
            StorageIOError::write_logs(&AnyErr(format!("cannot lower the log mark before a truncation: {e}")))
        })?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.store.cf(CF_LOG)?, index_key(log_id.index), index_key(u64::MAX));
        self.store
            .write(batch, true)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&log_id).map_err(|e| StorageIOError::write_logs(&AnyErr(e)))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.store.cf(CF_META)?, KEY_PURGED, bytes);
        batch.delete_range_cf(
            self.store.cf(CF_LOG)?,
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.store
            .write(batch, false)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// Acknowledges appends once the write-ahead log holding them is on disk:
/// waits for one, takes every other already waiting, fsyncs once, and
/// acknowledges them all, in order.
fn sync_appends(store: &std::sync::Weak<Store>, mark: &LogMark, pending: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let synced = match store.upgrade() {
            Some(store) => sync_wal(&store, mark),
            None => Err("the database is closed".to_string()),
        };
        for callback in batch {
            callback.log_io_completed(synced.clone().map_err(std::io::Error::other));
        }
    }
}

/// Fsyncs the write-ahead log, then raises the log mark to what was written
/// before the fsync began. A mark that cannot be written is logged, not
/// failed: the entries are on disk, and a mark left behind only catches less.
fn sync_wal(store: &Store, mark: &LogMark) -> Result<(), String> {
    let ticket = mark.before_sync();
    store.db.flush_wal(true).map_err(|e| {
        store.note_write_error(&e);
        e.to_string()
    })?;
    if let Err(e) = mark.after_sync(ticket) {
        tracing::warn!("cannot update the log mark {}: {e}", crate::log_mark::MARK_FILE);
    }
    Ok(())
}
