//! Tests of the log store and state machine on a real rocksdb in a temp dir:
//! openraft's own storage conformance suite, then what the suite cannot know
//! about (application tables, snapshots of them, read-your-writes in apply).

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};
use tokio::sync::broadcast;

use crate::data_dir::DataDir;
use crate::log_store::LogStore;
use crate::state_machine::{AppliedEvent, StateMachineApp, StateMachineStore, Txn, TxnError};
use crate::storage::Store;
use crate::types::{Command, NodeInfo, StorageError, TypeConfig};

/// A tiny application: "key=value" puts into table `kv`; "key" alone deletes;
/// answers with the previous value; emits the command as its event.
struct KvApp;

impl StateMachineApp for KvApp {
    fn apply(&self, txn: &mut Txn<'_>, _entry: crate::EntryInfo, command: &[u8]) -> Result<Vec<u8>, TxnError> {
        let text = String::from_utf8_lossy(command).to_string();
        let key = text.split('=').next().unwrap_or_default().to_string();
        let prev = txn.get("kv", key.as_bytes())?.unwrap_or_default();
        match text.split_once('=') {
            Some((k, v)) => txn.put("kv", k.as_bytes(), v.as_bytes())?,
            None => txn.delete("kv", key.as_bytes())?,
        }
        txn.emit(command.to_vec());
        Ok(prev)
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open(&dir);
        Ok((dir, log, sm))
    }
}

fn open(dir: &tempfile::TempDir) -> (LogStore, StateMachineStore) {
    let store = Arc::new(Store::open(&dir.path().join("db"), &["kv".to_string()]).expect("open db"));
    let (events, _) = broadcast::channel(1024);
    let sm = StateMachineStore::open(store.clone(), Arc::new(KvApp), events, dir.path().join("snapshot.bin"))
        .expect("open state machine");
    let data_dir = DataDir::open(&dir.path().join("identity")).expect("open data dir");
    (LogStore::new(store, Arc::new(Mutex::new(data_dir))).unwrap(), sm)
}

fn normal(term: u64, index: u64, cmd: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Command(vec![cmd.as_bytes().to_vec()])),
    }
}

fn node(n: u64) -> NodeInfo {
    NodeInfo {
        addr: format!("127.0.0.1:{}", 7700 + n),
        peer_addr: format!("127.0.0.1:{}", 7800 + n),
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}

#[tokio::test]
async fn entries_survive_reopen_and_truncate_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = open(&dir);
        let entries: Vec<_> = (1..=10).map(|i| normal(1, i, &format!("k{i}=v"))).collect();
        log.write_entries(entries, true).unwrap();
        log.truncate(log_id(1, 1, 8)).await.unwrap();
        log.purge(log_id(1, 1, 3)).await.unwrap();
    }
    let (mut log, _) = open(&dir);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(7));
    let got = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![4, 5, 6, 7]);
}

#[tokio::test]
async fn apply_reads_its_own_writes_and_publishes_events() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut sm) = open(&dir);
    let mut events = sm_events(&mut sm);
    let responses = sm
        .apply(vec![normal(1, 1, "a=1"), normal(1, 2, "a=2"), normal(1, 3, "a")])
        .await
        .unwrap();
    let answers: Vec<String> = responses
        .iter()
        .map(|r| String::from_utf8(r.0[0].clone()).unwrap())
        .collect();
    assert_eq!(
        answers,
        vec!["", "1", "2"],
        "each command sees the one before it in the same batch"
    );
    let view = sm.reader();
    let view = view.view();
    assert_eq!(view.get("kv", b"a").unwrap(), None);
    assert_eq!(view.applied_index().unwrap(), 3);
    for want in [1u64, 2, 3] {
        match events.try_recv().unwrap() {
            AppliedEvent::Applied { index, .. } => assert_eq!(index, want),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn sm_events(sm: &mut StateMachineStore) -> broadcast::Receiver<AppliedEvent> {
    sm.subscribe_for_test()
}

#[tokio::test]
async fn snapshot_round_trip_carries_tables_and_membership() {
    let src_dir = tempfile::tempdir().unwrap();
    let (_, mut src) = open(&src_dir);
    let membership = Membership::new(vec![[1u64, 2].into_iter().collect()], None);
    let mut entries = vec![Entry {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Membership(membership),
    }];
    entries.extend((2..=101).map(|i| normal(1, i, &format!("key{i:03}=value{i}"))));
    src.apply(entries).await.unwrap();
    let mut builder = src.get_snapshot_builder().await;
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(101));

    // Install it on a node holding other data: that data must go.
    let dst_dir = tempfile::tempdir().unwrap();
    let (_, mut dst) = open(&dst_dir);
    dst.apply(vec![normal(1, 1, "stale=yes")]).await.unwrap();
    let data = snap.snapshot.into_inner();
    dst.install_snapshot(&snap.meta, Box::new(Cursor::new(data)))
        .await
        .unwrap();
    drop(dst);

    // Reopen: the installed state and the current snapshot are durable.
    let (_, mut dst) = open(&dst_dir);
    let (applied, m) = dst.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(101));
    assert_eq!(m.membership().voter_ids().collect::<Vec<_>>(), vec![1, 2]);
    let reader = dst.reader();
    let view = reader.view();
    assert_eq!(view.get("kv", b"stale").unwrap(), None);
    assert_eq!(view.get("kv", b"key050").unwrap().as_deref(), Some(&b"value50"[..]));
    assert_eq!(view.scan_prefix("kv", b"key").unwrap().len(), 100);
    let current = dst.get_current_snapshot().await.unwrap().expect("snapshot kept");
    assert_eq!(current.meta.snapshot_id, snap.meta.snapshot_id);
}

/// A snapshot damaged on its way (or on the sender's disk) fails its checksum
/// before anything is written: the receiver keeps its state. A damaged
/// snapshot file is never sent on, and `opsd check` names it.
#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let src_dir = tempfile::tempdir().unwrap();
    let (_, mut src) = open(&src_dir);
    src.apply(
        (1..=50)
            .map(|i| normal(1, i, &format!("key{i:03}=value{i}")))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let snap = src.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut data = snap.snapshot.into_inner();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;

    let dst_dir = tempfile::tempdir().unwrap();
    let (_, mut dst) = open(&dst_dir);
    dst.apply(vec![normal(1, 1, "kept=yes")]).await.unwrap();
    let err = dst
        .install_snapshot(&snap.meta, Box::new(Cursor::new(data)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    let (applied, _) = dst.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(1));
    assert_eq!(
        dst.reader().view().get("kv", b"kept").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    assert!(dst.get_current_snapshot().await.unwrap().is_none());

    // The sender's own file, damaged on disk, is not sent.
    let file = src_dir.path().join("snapshot.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    assert!(src.get_current_snapshot().await.is_err());
    let err = crate::state_machine::read_snapshot_file(&file).unwrap_err();
    assert!(err.contains("checksum mismatch"), "{err}");
}

#[tokio::test]
async fn unknown_table_is_an_error_not_a_panic() {
    struct BadApp;
    impl StateMachineApp for BadApp {
        fn apply(&self, txn: &mut Txn<'_>, _: crate::EntryInfo, _: &[u8]) -> Result<Vec<u8>, TxnError> {
            txn.put("nope", b"k", b"v")?;
            Ok(vec![])
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db"), &["kv".to_string()]).unwrap());
    let (events, _) = broadcast::channel(16);
    let mut sm = StateMachineStore::open(store, Arc::new(BadApp), events, dir.path().join("s")).unwrap();
    let err = sm.apply(vec![normal(1, 1, "x")]).await.unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn membership_entries_encode_round_trip() {
    let nodes = [(1u64, node(1)), (2, node(2)), (3, node(3)), (4, node(4))];
    let m = Membership::<u64, NodeInfo>::new(
        vec![[1u64, 2, 3].into_iter().collect()],
        nodes.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    );
    let e: Entry<TypeConfig> = Entry {
        log_id: log_id(3, 1, 9),
        payload: EntryPayload::Membership(m),
    };
    let bytes = crate::wire::encode(&e).unwrap();
    let back: Entry<TypeConfig> = crate::wire::decode(&bytes).unwrap();
    assert_eq!(format!("{e:?}"), format!("{back:?}"));
}

#[tokio::test]
async fn the_first_vote_is_recorded_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = open(&dir);
        assert!(!log.has_raft_state().unwrap());
        log.save_vote(&openraft::Vote::new(1, 1)).await.unwrap();
        assert!(log.has_raft_state().unwrap());
    }
    let data_dir = DataDir::open(&dir.path().join("identity")).unwrap();
    assert!(data_dir.identity().raft_state);
}

/// An empty database is refused only when node.json says it held Raft state;
/// a node that never wrote any (a bootstrap or join interrupted before the
/// first vote or entry) starts, and an older data dir with Raft state gains
/// the mark at its start.
#[test]
fn an_empty_database_is_refused_only_after_raft_state_was_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let open_log = |db: &str| {
        let mut data_dir = DataDir::open(&dir.path().join("identity")).unwrap();
        data_dir.set_cluster_id("c1").unwrap();
        let data_dir = Arc::new(Mutex::new(data_dir));
        let store = Arc::new(Store::open(&dir.path().join(db), &[]).unwrap());
        (LogStore::new(store, data_dir.clone()).unwrap(), data_dir)
    };
    {
        let (log, data_dir) = open_log("db");
        crate::node::check_raft_state(&log, &data_dir, "c1").expect("a node that wrote nothing starts");
        assert!(!data_dir.lock().unwrap().identity().raft_state);
        // Raft state written by an older build, which did not mark it.
        log.write_entries([normal(1, 1, "a=1")], true).unwrap();
        crate::node::check_raft_state(&log, &data_dir, "c1").unwrap();
        assert!(data_dir.lock().unwrap().identity().raft_state);
    }
    let (log, data_dir) = open_log("wiped-db");
    let err = crate::node::check_raft_state(&log, &data_dir, "c1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("of cluster c1 has lost its Raft state (no vote, no log)"),
        "{err}"
    );
}

/// The live write-ahead log under `dir/db` (the largest `*.log`).
fn live_wal(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("db"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a WAL")
}

/// Writes `n` synced entries (raising the log mark) and closes the store
/// without a flush, so they live in the WAL only.
fn write_synced(dir: &tempfile::TempDir, n: u64) {
    let (log, _) = open(dir);
    for i in 1..=n {
        log.write_entries([normal(1, i, &format!("k{i}=v"))], true).unwrap();
    }
}

/// A WAL cut short looks like a torn tail to rocksdb, which opens without
/// the entries cut off; the log mark says they had been on disk.
#[tokio::test]
async fn a_wal_cut_short_is_caught_by_the_log_mark() {
    let dir = tempfile::tempdir().unwrap();
    write_synced(&dir, 300);
    let wal = live_wal(dir.path());
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (log, _) = open(&dir);
    let (last, mark) = log.ends_before_mark().unwrap().expect("the cut is caught");
    assert_eq!(mark, 300);
    assert!(last < 200, "the log ends at {last}");
}

#[tokio::test]
async fn the_log_mark_follows_truncations_and_purges_without_false_alarms() {
    let dir = tempfile::tempdir().unwrap();
    write_synced(&dir, 10);
    {
        let (mut log, _) = open(&dir);
        assert_eq!(log.ends_before_mark().unwrap(), None);
        // A leader's conflicting entries replace 8.. : the mark falls first.
        log.truncate(log_id(1, 1, 8)).await.unwrap();
        assert_eq!(log.ends_before_mark().unwrap(), None);
        log.write_entries([normal(2, 8, "k8=w")], true).unwrap();
        // A purge past the log's end (after a snapshot) keeps the rule.
        log.purge(log_id(2, 1, 20)).await.unwrap();
    }
    let (log, _) = open(&dir);
    assert_eq!(log.ends_before_mark().unwrap(), None);
    assert_eq!(
        crate::log_mark::read_mark(&dir.path().join("identity/log.mark")).unwrap(),
        Some(8)
    );
}
