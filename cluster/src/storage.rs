//! The node's rocksdb database: one database, so that one WAL orders the log
//! and the state (an fsynced log append also makes every state write before it
//! durable), with a column family per concern and one per application table.

use std::path::Path;

use openraft::StorageIOError;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

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

/// The open database and the application's table names.
pub(crate) struct Store {
    pub(crate) db: DB,
    pub(crate) tables: Vec<String>,
}

impl Store {
    /// Opens (or creates) the database with the cluster's column families and
    /// one per application table.
    pub(crate) fn open(path: &Path, tables: &[String]) -> Result<Store, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
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
        let cfs = names.iter().map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Store {
            db,
            tables: tables.to_vec(),
        })
    }

    /// A cluster column family.
    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageIOError::read(&AnyErr(format!("column family {name} is missing"))).into())
    }

    /// An application table's column family, or `None` for an unknown table.
    pub(crate) fn table(&self, table: &str) -> Option<&ColumnFamily> {
        if !self.tables.iter().any(|t| t == table) {
            return None;
        }
        self.db.cf_handle(&format!("{TABLE_PREFIX}{table}"))
    }

    /// Writes a batch atomically; `sync` waits for the WAL to reach the disk.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)
    }
}
