//! A node's data directory: the lock that keeps a second process out, and the
//! node's identity (its id, its cluster's id, the format version), written once
//! and read at every start.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::types::NodeId;

/// The on-disk format this build writes and understands. Bump it, with a
/// migration, whenever what is written to the data dir changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

const IDENTITY_FILE: &str = "node.json";
const LOCK_FILE: &str = "LOCK.opsd";

/// Who this node is, kept in `node.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The data dir's format version.
    pub format_version: u32,
    /// This node's id.
    pub node_id: NodeId,
    /// The cluster this node belongs to; `None` until it bootstraps or joins.
    pub cluster_id: Option<String>,
    /// Set once the cluster told this node it was removed: such a data dir never
    /// serves again, so a stale node cannot come back and confuse anyone.
    #[serde(default)]
    pub removed: bool,
    /// Set (before the write) the first time this node's database takes a
    /// Raft vote or log entry, and at any start that finds one: from then
    /// on a database without either has lost a promise this node made to
    /// its cluster, so the node must not start. Data dirs written before
    /// this field read as `false` and gain it at their next start.
    #[serde(default)]
    pub raft_state: bool,
}

/// An open, locked data directory. The lock is held until this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    identity: NodeIdentity,
    _lock: File,
}

impl DataDir {
    /// Opens (creating if needed) and locks the data dir, reading the node's
    /// identity or creating a new one.
    pub fn open(path: &Path) -> Result<DataDir, ClusterError> {
        let dir = DataDir::open_as(path, true)?;
        dir.save()?;
        Ok(dir)
    }

    /// Locks an existing data dir and reads its identity, writing nothing:
    /// for offline checks and repairs. Refused if the dir or its `node.json`
    /// is missing, or an opsd runs on it.
    pub fn inspect(path: &Path) -> Result<DataDir, ClusterError> {
        if !path.join(IDENTITY_FILE).exists() {
            return Err(ClusterError::DataDir {
                path: path.display().to_string(),
                reason: format!("it has no {IDENTITY_FILE}: it is not an opsd data dir, or has never been started"),
            });
        }
        DataDir::open_as(path, false)
    }

    fn open_as(path: &Path, create: bool) -> Result<DataDir, ClusterError> {
        let io = |what: &str, e: std::io::Error| ClusterError::DataDir {
            path: path.display().to_string(),
            reason: format!("{what}: {e}"),
        };
        if create {
            fs::create_dir_all(path).map_err(|e| io("cannot create it", e))?;
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("cannot open its lock file", e))?;
        if lock.try_lock().is_err() {
            return Err(ClusterError::DataDir {
                path: path.display().to_string(),
                reason: "it is in use by another opsd process (its lock is held)".into(),
            });
        }
        let id_path = path.join(IDENTITY_FILE);
        let identity = match fs::read(&id_path) {
            Ok(bytes) => parse_identity(&bytes).map_err(|reason| ClusterError::DataDir {
                path: path.display().to_string(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if path.join("db").exists() {
                    return Err(ClusterError::DataDir {
                        path: path.display().to_string(),
                        reason: format!(
                            "it holds a database but no {IDENTITY_FILE}; it was not written by opsd or is damaged"
                        ),
                    });
                }
                NodeIdentity {
                    format_version: FORMAT_VERSION,
                    node_id: new_node_id(),
                    cluster_id: None,
                    removed: false,
                    raft_state: false,
                }
            }
            Err(e) => return Err(io(&format!("cannot read {IDENTITY_FILE}"), e)),
        };
        Ok(DataDir {
            path: path.to_path_buf(),
            identity,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the rocksdb database lives.
    pub fn db_path(&self) -> PathBuf {
        self.path.join("db")
    }

    /// Where the latest snapshot is kept.
    pub fn snapshot_path(&self) -> PathBuf {
        self.path.join("snapshot.bin")
    }

    /// Where the log mark is kept (see [`crate::log_mark`]).
    pub fn mark_path(&self) -> PathBuf {
        self.path.join(crate::log_mark::MARK_FILE)
    }

    /// Starts this data dir anew under a fresh node id, in no cluster yet,
    /// after moving its state (the database, the snapshot, the log mark and
    /// the old `node.json`) into `aside`, a new directory inside it. Returns
    /// the new id. The damaged node's files are kept for inspection; the
    /// node joins again as a new member and never under its old id.
    pub fn start_anew(&mut self, aside: &Path) -> Result<NodeId, ClusterError> {
        let err = |what: String| ClusterError::DataDir {
            path: self.path.display().to_string(),
            reason: what,
        };
        fs::create_dir(aside).map_err(|e| err(format!("cannot create {}: {e}", aside.display())))?;
        for name in ["db", "snapshot.bin", crate::log_mark::MARK_FILE, IDENTITY_FILE] {
            let from = self.path.join(name);
            if !from.exists() {
                continue;
            }
            fs::rename(&from, aside.join(name))
                .map_err(|e| err(format!("cannot move {} to {}: {e}", from.display(), aside.display())))?;
        }
        let old = self.identity.node_id;
        let node_id = std::iter::repeat_with(new_node_id).find(|id| *id != old).unwrap_or(old);
        self.identity = NodeIdentity {
            format_version: FORMAT_VERSION,
            node_id,
            cluster_id: None,
            removed: false,
            raft_state: false,
        };
        self.save()?;
        Ok(self.identity.node_id)
    }

    /// The node's identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Records the cluster this node belongs to (at bootstrap or join).
    pub fn set_cluster_id(&mut self, cluster_id: &str) -> Result<(), ClusterError> {
        self.identity.cluster_id = Some(cluster_id.to_string());
        self.save()
    }

    /// Records that this node was removed from its cluster.
    pub fn mark_removed(&mut self) -> Result<(), ClusterError> {
        self.identity.removed = true;
        self.save()
    }

    /// Records that the database holds Raft state (a vote or a log entry),
    /// once: see [`NodeIdentity::raft_state`].
    pub fn mark_raft_state(&mut self) -> Result<(), ClusterError> {
        if self.identity.raft_state {
            return Ok(());
        }
        self.identity.raft_state = true;
        self.save()
    }

    fn save(&self) -> Result<(), ClusterError> {
        let bytes = serde_json::to_vec_pretty(&self.identity).map_err(|e| ClusterError::DataDir {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_atomically(&self.path.join(IDENTITY_FILE), &bytes).map_err(|e| ClusterError::DataDir {
            path: self.path.display().to_string(),
            reason: format!("cannot write {IDENTITY_FILE}: {e}"),
        })
    }
}

fn parse_identity(bytes: &[u8]) -> Result<NodeIdentity, String> {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(|e| format!("{IDENTITY_FILE} is not valid: {e}"))?;
    if v.format_version != FORMAT_VERSION {
        return Err(format!(
            "it has data format version {}, but this opsd understands format version {FORMAT_VERSION} only",
            v.format_version
        ));
    }
    let id: NodeIdentity = serde_json::from_slice(bytes).map_err(|e| format!("{IDENTITY_FILE} is not valid: {e}"))?;
    if id.node_id == 0 {
        return Err(format!("{IDENTITY_FILE} has node_id 0, which is never valid"));
    }
    Ok(id)
}

/// A random id in 1..=2^53.
fn new_node_id() -> NodeId {
    (rand::random::<u64>() >> 11) + 1
}

/// Writes a file so that a crash leaves either the old or the new content:
/// write a temporary file, fsync it, rename it over, fsync the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = DataDir::open(dir.path()).unwrap().identity().clone();
        assert!(id.node_id > 0 && id.node_id <= 1 << 53);
        assert_eq!(id.cluster_id, None);
        let again = DataDir::open(dir.path()).unwrap();
        assert_eq!(again.identity(), &id);
    }

    #[test]
    fn a_second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another opsd"), "{err}");
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDir::open(dir.path()).unwrap());
        fs::write(
            dir.path().join(IDENTITY_FILE),
            r#"{"format_version": 99, "node_id": 5, "cluster_id": "x"}"#,
        )
        .unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format version 99"), "{err}");
        // Nothing was rewritten.
        let kept = fs::read_to_string(dir.path().join(IDENTITY_FILE)).unwrap();
        assert!(kept.contains("99"));
    }

    #[test]
    fn cluster_id_and_removal_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut d = DataDir::open(dir.path()).unwrap();
            d.set_cluster_id("c1").unwrap();
            d.mark_removed().unwrap();
            d.mark_raft_state().unwrap();
        }
        let d = DataDir::open(dir.path()).unwrap();
        assert_eq!(d.identity().cluster_id.as_deref(), Some("c1"));
        assert!(d.identity().removed);
        assert!(d.identity().raft_state);
    }

    #[test]
    fn an_identity_written_before_raft_state_was_recorded_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(IDENTITY_FILE),
            r#"{"format_version": 1, "node_id": 5, "cluster_id": "c1", "removed": false}"#,
        )
        .unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        assert_eq!(d.identity().node_id, 5);
        assert!(!d.identity().raft_state);
    }
}
