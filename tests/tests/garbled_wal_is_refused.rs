//! A node whose rocksdb write-ahead log is damaged before its end (a failing
//! disk, not a crash) refuses to start, naming the data dir, the damage and
//! the way back, instead of starting without the acknowledged writes after
//! the damage. A torn tail, which is all a crash can leave, still restarts
//! with every acknowledged write: see `torn_wal_tail_restarts_with_every_key`.

use std::time::Duration;

use opsd_tests::{Cluster, Options};

/// How many acknowledged writes the WAL holds when it is damaged.
const KEYS: usize = 300;

#[tokio::test]
async fn garbled_wal_is_refused() {
    let cluster = Cluster::start(1, Options::default()).await;
    for i in 0..KEYS {
        cluster
            .put(0, &format!("wal/{i:04}"), &format!("v{i}"))
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    let node = cluster.node(0);
    node.kill9();

    let wal = node.live_wal();
    let mut bytes = std::fs::read(&wal).expect("read the WAL");
    assert!(bytes.len() > 4096, "{wal:?} is too small to hold {KEYS} writes");
    let mid = bytes.len() / 2;
    bytes[mid..mid + 512].fill(0x5a);
    std::fs::write(&wal, bytes).expect("garble the WAL");
    eprintln!("garbled 512 bytes in the middle of {wal:?}");

    node.restart();
    let exit = node.wait_exit(Duration::from_secs(30)).await;
    let data_dir = node.data_dir().display().to_string();
    exit.assert_refused_saying(
        "opsd started on a garbled WAL",
        &[
            (data_dir.as_str(), "name the data dir"),
            ("is damaged", "say the database is damaged"),
            ("Corruption", "give rocksdb's finding"),
            (
                &*format!("opsctl cluster remove {}", node.id()),
                "say how to remove the node",
            ),
            ("empty data dir", "say how to come back by hand"),
            ("recover --rejoin", "name the command that brings it back"),
        ],
    );
}
