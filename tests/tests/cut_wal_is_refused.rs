//! A write-ahead log cut short (a disk that lost the file's tail) looks to
//! rocksdb exactly like a crash's torn tail, and would open without the
//! acknowledged entries cut off. The log mark (`log.mark`, the highest log
//! index fsynced) tells them apart: the node refuses to start, naming the
//! data dir, what it expected and found, and the way back; `opsd check`
//! finds the same. A kill -9 alone leaves a data dir `opsd check` finds
//! clean; a torn tail alone still restarts (`torn_wal_tail_restarts_with_every_key`).

use std::time::Duration;

use opsd_tests::{Cluster, Options};

/// How many acknowledged writes the WAL holds when it is cut.
const KEYS: usize = 300;

#[tokio::test]
async fn cut_wal_is_refused() {
    let cluster = Cluster::start(1, Options::default()).await;
    for i in 0..KEYS {
        cluster
            .put(0, &format!("cut/{i:04}"), &format!("v{i}"))
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    let node = cluster.node(0);
    let (clean, report) = node.check();
    assert!(
        !clean && report.contains("in use by another opsd"),
        "opsd check did not refuse the data dir of a running node:\n{report}"
    );
    node.kill9();
    let (clean, report) = node.check();
    eprintln!("opsd check after kill -9:\n{report}");
    assert!(clean, "opsd check finds a node killed with kill -9 damaged:\n{report}");

    let wal = node.live_wal();
    let len = std::fs::metadata(&wal).expect("the WAL's size").len();
    std::fs::File::options()
        .write(true)
        .open(&wal)
        .and_then(|f| f.set_len(len / 2))
        .expect("cut the WAL");
    eprintln!("cut {wal:?} from {len} to {} bytes", len / 2);

    let (clean, report) = node.check();
    eprintln!("opsd check after the cut:\n{report}");
    assert!(!clean, "opsd check finds a cut WAL clean:\n{report}");
    assert!(
        report.contains("DAMAGED") && report.contains("cut short"),
        "opsd check does not say the log was cut short:\n{report}"
    );

    node.restart();
    let exit = node.wait_exit(Duration::from_secs(30)).await;
    let data_dir = node.data_dir().display().to_string();
    exit.assert_refused_saying(
        "opsd started on a WAL cut short",
        &[
            (data_dir.as_str(), "name the data dir"),
            ("is damaged", "say the database is damaged"),
            ("cut short", "say the log was cut short"),
            ("records that entries up to index", "say what it expected"),
            ("its Raft log ends at index", "say what it found"),
            ("recover --rejoin", "name the command that brings it back"),
            (
                &*format!("opsctl cluster remove {}", node.id()),
                "say how to remove the node by hand",
            ),
        ],
    );
}
