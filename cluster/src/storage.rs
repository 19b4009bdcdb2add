//! The node's rocksdb database: one database, so that one WAL orders the log
//! and the state (an fsynced log append also makes every state write before it
//! durable), with a column family per concern and one per application table.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use openraft::StorageIOError;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};
use tokio::sync::watch;

use tracing::error;

use crate::log_store::AnyErr;
use crate::types::StorageError;

/// Raft log entries, keyed by big-endian index.
pub(crate) const CF_LOG: &str = "raft_log";
/// The vote, the committed log id and the purge point.
pub(crate) const CF_META: &str = "raft_meta";
/// The state machine's own bookkeeping: last applied log id and membership.
pub(crate) const CF_SM: &str = "sm_meta";

/// The prefix of an application table's column family.
const TABLE_PREFIX: &str = "t.";

/// What all memtables together may hold before the largest is flushed.
const MEMTABLES_BYTES: usize = 32 << 20;
/// What one column family's memtable may hold before it is flushed.
const MEMTABLE_BYTES: usize = 8 << 20;
/// The one block cache every column family shares.
const BLOCK_CACHE_BYTES: usize = 16 << 20;
/// The write-ahead logs kept before the column families holding their
/// oldest writes are flushed: what a restart may replay.
const WAL_BYTES: u64 = 64 << 20;

/// Bounds the database's memory, which counts in the process's RSS:
/// rocksdb's defaults give each of the ~20 column families a 64 MiB
/// memtable and a 32 MiB block cache of its own.
fn bound_memory(opts: &mut Options) {
    opts.set_db_write_buffer_size(MEMTABLES_BYTES);
    opts.set_write_buffer_size(MEMTABLE_BYTES);
    opts.set_max_total_wal_size(WAL_BYTES);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
    opts.set_block_based_table_factory(&table);
}

/// The open database and the application's table names.
pub(crate) struct Store {
    pub(crate) db: DB,
    pub(crate) tables: Vec<String>,
    /// Each application table's column family name, in `tables` order.
    table_families: Vec<String>,
    /// Per application table, in `tables` order: how many committed writes
    /// have changed it since this process opened the database (see
    /// [`Store::generations`]).
    generations: Vec<AtomicU64>,
    path: PathBuf,
    /// The first damage a read met (a failed checksum), once one has.
    damage: watch::Sender<Option<String>>,
    /// The first write that failed, if one has: the database (and so Raft)
    /// cannot go on after it.
    write_error: Mutex<Option<String>>,
}

impl Store {
    /// Opens (or creates) the database with the cluster's column families and
    /// one per application table.
    pub(crate) fn open(path: &Path, tables: &[String]) -> Result<Store, rocksdb::Error> {
        Store::open_as(path, tables, false)
    }

    /// Opens an existing database without writing to it (for `opsd check`):
    /// the write-ahead log is replayed in memory only.
    pub(crate) fn open_read_only(path: &Path, tables: &[String]) -> Result<Store, rocksdb::Error> {
        Store::open_as(path, tables, true)
    }

    fn open_as(path: &Path, tables: &[String], read_only: bool) -> Result<Store, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // A crash can tear only the WAL's last record, so that is all replay
        // forgives; damage anywhere before it fails the open. The default
        // (point in time) would stop at the damage and open silently without
        // every acknowledged write after it. A WAL cut short, though, looks
        // like a torn tail and is not caught (see the tests).
        opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        // rocksdb's default, kept explicit: a failed checksum fails the open
        // (and later reads) instead of being skipped.
        opts.set_paranoid_checks(true);
        // The manifest records each closed WAL's size, and the open checks
        // it: a closed WAL cut short or missing fails the open. The live WAL
        // is covered by the log mark (see `log_mark`).
        opts.set_track_and_verify_wals_in_manifest(true);
        bound_memory(&mut opts);
        let mut names: Vec<String> = [CF_LOG, CF_META, CF_SM].iter().map(|s| s.to_string()).collect();
        names.extend(tables.iter().map(|t| format!("{TABLE_PREFIX}{t}")));
        // Column families left by an earlier version are opened too: rocksdb
        // refuses to open a database without naming all of them.
        if let Ok(existing) = DB::list_cf(&opts, path) {
            for name in existing {
                if name != "default" && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let db = if read_only {
            DB::open_cf_for_read_only(&opts, path, &names, false)?
        } else {
            let cfs = names.iter().map(|n| ColumnFamilyDescriptor::new(n, opts.clone()));
            DB::open_cf_descriptors(&opts, path, cfs)?
        };
        Ok(Store {
            db,
            tables: tables.to_vec(),
            table_families: tables.iter().map(|t| format!("{TABLE_PREFIX}{t}")).collect(),
            generations: tables.iter().map(|_| AtomicU64::new(0)).collect(),
            path: path.to_path_buf(),
            damage: watch::channel(None).0,
            write_error: Mutex::new(None),
        })
    }

    /// Passes a read's result through, noting damage: a failed checksum (or
    /// any corruption) is logged at error level, naming the database and
    /// the file if rocksdb names it, and published to [`Store::damage`], so
    /// the node stops instead of answering errors for ever.
    pub(crate) fn checked<T>(&self, result: Result<T, rocksdb::Error>) -> Result<T, rocksdb::Error> {
        if let Err(e) = &result {
            if e.kind() == rocksdb::ErrorKind::Corruption {
                tracing::error!(db = %self.path.display(), "the database is damaged: {e}");
                self.damage.send_if_modified(|d| {
                    if d.is_some() {
                        return false;
                    }
                    *d = Some(e.to_string());
                    true
                });
            }
        }
        result
    }

    /// The first damage reads met, once they have.
    pub(crate) fn damage(&self) -> watch::Receiver<Option<String>> {
        self.damage.subscribe()
    }

    /// Reads every key and value of a column family, verifying every block's
    /// checksum (without filling the cache); returns how many keys it holds.
    pub(crate) fn verify_family(&self, name: &str) -> Result<u64, rocksdb::Error> {
        let Some(cf) = self.db.cf_handle(name) else {
            return Ok(0);
        };
        let mut opts = ReadOptions::default();
        opts.set_verify_checksums(true);
        opts.fill_cache(false);
        let mut keys = 0;
        for item in self.db.iterator_cf_opt(cf, opts, IteratorMode::Start) {
            item?;
            keys += 1;
        }
        Ok(keys)
    }

    /// Writes every column family's memtable to its table files (a failure
    /// is logged: the write-ahead log still holds the writes).
    pub(crate) fn flush_all(&self) {
        for name in self.families() {
            let flushed = match self.db.cf_handle(&name) {
                Some(cf) => self.db.flush_cf(cf),
                None => Ok(()),
            };
            if let Err(e) = flushed {
                tracing::warn!(db = %self.path.display(), "cannot flush column family {name}: {e}");
            }
        }
    }

    /// Every column family's name, the cluster's first.
    pub(crate) fn families(&self) -> Vec<String> {
        let mut names: Vec<String> = [CF_LOG, CF_META, CF_SM].iter().map(|s| s.to_string()).collect();
        names.extend(self.table_families.iter().cloned());
        names
    }

    /// A cluster column family.
    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageIOError::read(&AnyErr(format!("column family {name} is missing"))).into())
    }

    /// An application table's column family, or `None` for an unknown table.
    pub(crate) fn table(&self, table: &str) -> Option<&ColumnFamily> {
        self.db.cf_handle(&self.table_families[self.table_index(table)?])
    }

    /// An application table's position in `tables`.
    pub(crate) fn table_index(&self, table: &str) -> Option<usize> {
        self.tables.iter().position(|t| t == table)
    }

    /// Every application table's generation now, in `tables` order. Read
    /// before a snapshot is taken: a table whose generation is unchanged
    /// since an earlier read has had no write committed in between, except
    /// one whose bump is still on its way, which no caller has been told
    /// of yet (the bump comes before apply returns).
    pub(crate) fn generations(&self) -> Vec<u64> {
        self.generations.iter().map(|g| g.load(Ordering::SeqCst)).collect()
    }

    /// Counts a committed write to each table marked in `touched` (in
    /// `tables` order); called after the write is visible to readers.
    pub(crate) fn bump(&self, touched: &[bool]) {
        for (g, _) in self.generations.iter().zip(touched).filter(|(_, t)| **t) {
            g.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Writes a batch atomically; `sync` waits for the WAL to reach the disk.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).inspect_err(|e| self.note_write_error(e))
    }

    /// Records a failed write to the data dir (the first one is kept, and
    /// logged at error level with the path): see [`Store::write_error`].
    pub(crate) fn note_write_error(&self, error: impl std::fmt::Display) {
        let mut first = self.write_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            error!(path = %self.path.display(), "a write to the data dir failed: {error}");
            *first = Some(error.to_string());
        }
    }

    /// The first write to the database that failed, if one has.
    pub(crate) fn write_error(&self) -> Option<String> {
        self.write_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;

    const KEYS: usize = 300;

    /// Writes `KEYS` synced keys into the log family and closes the database
    /// without a flush, so they live in the WAL only; returns the WAL file.
    fn write_keys(path: &Path) -> PathBuf {
        let store = Store::open(path, &[]).unwrap();
        for i in 0..KEYS {
            let mut batch = WriteBatch::default();
            batch.put_cf(store.cf(CF_LOG).unwrap(), format!("key{i:04}"), [7u8; 100]);
            store.write(batch, true).unwrap();
        }
        drop(store);
        let mut wals: Vec<PathBuf> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        wals.sort_by_key(|p| fs::metadata(p).unwrap().len());
        let wal = wals.pop().unwrap();
        assert!(
            fs::metadata(&wal).unwrap().len() > (KEYS * 100) as u64,
            "{wal:?} holds the keys"
        );
        wal
    }

    fn cut_to(wal: &Path, len: u64) {
        fs::File::options().write(true).open(wal).unwrap().set_len(len).unwrap();
    }

    fn count_keys(path: &Path) -> Result<usize, rocksdb::Error> {
        let store = Store::open(path, &[])?;
        let cf = store.cf(CF_LOG).unwrap();
        Ok(store.db.iterator_cf(cf, rocksdb::IteratorMode::Start).count())
    }

    #[test]
    fn a_torn_wal_tail_opens_with_every_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let wal = write_keys(dir.path());
        cut_to(&wal, fs::metadata(&wal).unwrap().len() - 5);
        // The torn last record is the only one lost.
        assert_eq!(count_keys(dir.path()).unwrap(), KEYS - 1);
    }

    #[test]
    fn a_wal_garbled_in_its_middle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wal = write_keys(dir.path());
        let mut bytes = fs::read(&wal).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid..mid + 512].fill(0x5a);
        fs::write(&wal, bytes).unwrap();
        let err = count_keys(dir.path()).unwrap_err();
        assert_eq!(err.kind(), rocksdb::ErrorKind::Corruption, "{err}");
    }

    /// The limit of any recovery mode: a WAL cut short looks exactly like a
    /// crash's torn tail, so rocksdb opens without the records cut off. Only
    /// refusing every torn tail (`AbsoluteConsistency`) would catch it, and
    /// that would refuse the restart after any crash. The log mark catches
    /// it above rocksdb (`store_tests::a_wal_cut_short_is_caught_by_the_log_mark`);
    /// this test records the limit, so a rocksdb that starts telling the two
    /// apart shows up here.
    #[test]
    fn a_wal_cut_in_half_looks_like_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let wal = write_keys(dir.path());
        cut_to(&wal, fs::metadata(&wal).unwrap().len() / 2);
        let got = count_keys(dir.path()).unwrap();
        assert!(got < KEYS / 2 + 10, "opened with {got} of {KEYS} keys");
    }
}
