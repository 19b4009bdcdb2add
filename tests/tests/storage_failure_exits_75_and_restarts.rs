//! A write to the data dir that fails under Raft (here: the disk filled to
//! the last byte with the free-space floor off, so the next log append, or
//! else the first snapshot, cannot be written) stops Raft for good in that process: openraft cannot go on
//! after a storage error. The node logs the failure at error level naming the
//! data dir, exits with code 75 (once the disk has the floor free: at once,
//! with `--min-free-mb 0`), and, restarted on a disk with room, serves again
//! with every acknowledged write.

use std::time::Duration;

use opsd_tests::client;
use opsd_tests::tmpfs::Tmpfs;
use opsd_tests::{skip, Cluster, NodeConfig, Options};

const TEST: &str = "storage_failure_exits_75_and_restarts";

#[tokio::test]
async fn storage_failure_exits_75_and_restarts() {
    let mut cluster = Cluster::empty(Options {
        // The first snapshot comes after 20 entries and must be written out.
        snapshot_threshold: Some(20),
        extra_args: vec!["--min-free-mb".into(), "0".into()],
        ..Options::default()
    });
    let disk = match Tmpfs::mount(&cluster.dir().join("disk"), 256) {
        Ok(d) => d,
        Err(why) => return skip(TEST, &why),
    };
    let mut config = NodeConfig::new("n1", cluster.dir(), cluster.options().clone());
    config.data_dir = disk.path().join("data");
    let data_dir = config.data_dir.display().to_string();
    let n = cluster.spawn(config);
    let node = cluster.node(n);
    node.wait_ready(Duration::from_secs(30)).await;
    let addr = node.client_addr();

    let mut acked = Vec::new();
    for i in 0..5 {
        let (key, value) = (format!("app/k{i:03}"), format!("v{i}"));
        let put = cluster.put(n, &key, &value).await.expect("a write on a disk with room");
        acked.push((key, value, put.revision));
    }

    let filler = disk.fill_completely("filler");
    // Writes fail from the first that needs a byte more of the disk (the
    // snapshot due at entry 20 does, if the log append has room left).
    let mut failed = None;
    for i in acked.len()..100 {
        let (key, value) = (format!("app/k{i:03}"), format!("v{i}"));
        match client::put_once(&addr, &key, &value).await {
            Ok(put) => acked.push((key, value, put.revision)),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let failed = failed.expect("a write fails once the snapshot cannot be written");
    eprintln!("the first failed write: {}", client::describe(&failed));

    let exit = node.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(exit.status.code(), Some(75), "{:?}:\n{}", exit.status, exit.output);
    assert!(
        exit.output
            .contains(&format!("opsd: this node stopped: disk full at {data_dir}: ")),
        "{}",
        exit.output
    );
    assert!(exit.output.contains("No space left on device"), "{}", exit.output);
    assert!(
        exit.output.contains("ERROR") && exit.output.contains("a write to the data dir failed"),
        "{}",
        exit.output
    );

    std::fs::remove_file(&filler).expect("removing the filler");
    node.restart();
    node.wait_ready(Duration::from_secs(30)).await;
    cluster.assert_writes_present(&[n], "app/", &acked).await;
    let put = cluster
        .put(n, "app/after", "again")
        .await
        .expect("a write after the restart");
    acked.push(("app/after".into(), "again".into(), put.revision));
    cluster.assert_writes_present(&[n], "app/", &acked).await;
}
