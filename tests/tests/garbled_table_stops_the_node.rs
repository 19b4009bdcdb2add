//! A garbled block in an SST file of an application table (bit rot on a
//! disk) is met by the first read that touches it. The node does not go on
//! answering INTERNAL "block checksum mismatch" for ever while it leads: it
//! logs the damage at error level and stops, naming the data dir and the way
//! back, so the cluster moves on. `opsd check` finds the damage offline.
//! A garbled block in a Raft column family is refused at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opsd_tests::{Cluster, Options};

const KEYS: usize = 200;

/// The SST files under `db` whose column family is `family` (an SST names
/// its column family in its properties block), but not `other` (a family
/// whose name starts with the same letters).
fn sst_files_of(db: &Path, family: &str, other: &str) -> Vec<PathBuf> {
    let holds = |bytes: &[u8], name: &str| bytes.windows(name.len()).any(|w| w == name.as_bytes());
    std::fs::read_dir(db)
        .expect("read db/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .filter(|p| {
            let bytes = std::fs::read(p).expect("read an SST");
            holds(&bytes, family) && !holds(&bytes, other)
        })
        .collect()
}

/// Overwrites bytes inside the first data block of `sst` (blocks are not
/// compressed, the first starts at offset 0 and, with the keys written
/// here, fills the default 4 KiB).
fn garble(sst: &Path) {
    let mut bytes = std::fs::read(sst).expect("read the SST");
    assert!(bytes.len() > 8192, "{sst:?} is too small to hold a full data block");
    bytes[64..192].fill(0x5a);
    std::fs::write(sst, bytes).expect("garble the SST");
    eprintln!("garbled 128 bytes of the first data block of {sst:?}");
}

/// Writes keys, then restarts the node so that opening the database moves
/// the WAL's contents into SST files; stops it again.
async fn flushed_node(prefix: &str) -> Cluster {
    let cluster = Cluster::start(1, Options::default()).await;
    for i in 0..KEYS {
        cluster
            .put(0, &format!("{prefix}/{i:04}"), &format!("v{i}"))
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    let node = cluster.node(0);
    let exit = node.terminate(Duration::from_secs(30)).await;
    assert!(exit.status.success(), "stopping: {}", exit.output);
    node.restart();
    node.wait_ready(Duration::from_secs(60)).await;
    let exit = node.terminate(Duration::from_secs(30)).await;
    assert!(exit.status.success(), "stopping: {}", exit.output);
    cluster
}

#[tokio::test]
async fn garbled_table_stops_the_node() {
    let cluster = flushed_node("rot").await;
    let node = cluster.node(0);
    let db = node.data_dir().join("db");
    let ssts = sst_files_of(&db, "t.settings", "t.settings_meta");
    assert!(!ssts.is_empty(), "no SST of the settings table in {db:?}");
    for sst in &ssts {
        garble(sst);
    }
    let (clean, report) = node.check();
    eprintln!("opsd check:\n{report}");
    assert!(!clean, "opsd check finds a garbled table clean:\n{report}");
    assert!(
        report.contains("DAMAGED  column family t.settings"),
        "opsd check does not name the damaged table:\n{report}"
    );
    assert!(
        !report.contains("DAMAGED  column family raft_"),
        "the garbling reached a Raft column family:\n{report}"
    );

    // The Raft column families are intact: the node starts, and the first
    // read of the table meets the damage (at start-up, or from this get).
    node.restart();
    let got = cluster.list(0, "rot/", true).await.map(|l| l.settings.len());
    eprintln!("a read of the damaged table answered: {got:?}");
    let exit = node.wait_exit(Duration::from_secs(30)).await;
    let data_dir = node.data_dir().display().to_string();
    exit.assert_refused_saying(
        "the node went on serving a damaged table",
        &[
            ("ERROR", "log the damage at error level"),
            (data_dir.as_str(), "name the data dir"),
            ("is damaged", "say the database is damaged"),
            ("Corruption", "give rocksdb's finding"),
            ("recover --rejoin", "name the command that brings it back"),
        ],
    );
}

#[tokio::test]
async fn garbled_raft_log_is_refused_at_start() {
    let cluster = flushed_node("rotlog").await;
    let node = cluster.node(0);
    let db = node.data_dir().join("db");
    let ssts = sst_files_of(&db, "raft_log", "t.settings");
    assert!(!ssts.is_empty(), "no SST of the Raft log in {db:?}");
    for sst in &ssts {
        garble(sst);
    }
    node.restart();
    let exit = node.wait_exit(Duration::from_secs(30)).await;
    exit.assert_refused_saying(
        "opsd started on a garbled Raft log",
        &[
            (&*node.data_dir().display().to_string(), "name the data dir"),
            ("is damaged", "say the database is damaged"),
            ("recover --rejoin", "name the command that brings it back"),
        ],
    );
}
