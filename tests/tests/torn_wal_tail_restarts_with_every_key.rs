//! A crash can tear the last record of rocksdb's write-ahead log: such a node
//! restarts, with every acknowledged write (the torn record was never
//! acknowledged, or is replayed from the Raft log). The counterpart of
//! `garbled_wal_is_refused`, so refusing damage does not refuse crashes.

use std::time::Duration;

use opsd_tests::{Cluster, Options};

/// How many acknowledged writes the WAL holds when it is torn.
const KEYS: usize = 300;

#[tokio::test]
async fn torn_wal_tail_restarts_with_every_key() {
    let cluster = Cluster::start(1, Options::default()).await;
    let mut acked = Vec::new();
    for i in 0..KEYS {
        let (key, value) = (format!("wal/{i:04}"), format!("v{i}"));
        let put = cluster
            .put(0, &key, &value)
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        acked.push((key, value, put.revision));
    }
    let node = cluster.node(0);
    node.kill9();

    let wal = node.live_wal();
    let len = std::fs::metadata(&wal).expect("the WAL's size").len();
    std::fs::File::options()
        .write(true)
        .open(&wal)
        .and_then(|f| f.set_len(len - 5))
        .expect("tear the WAL's tail");
    eprintln!("cut the last 5 of {len} bytes of {wal:?}");

    node.restart();
    node.wait_ready(Duration::from_secs(60)).await;
    cluster.assert_writes_present(&[0], "wal/", &acked).await;
}
