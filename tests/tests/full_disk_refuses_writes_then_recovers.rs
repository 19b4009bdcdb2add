//! A full disk is a state, not a death. A single node whose data dir sits on
//! a small filesystem (a tmpfs) that fills up below `--min-free-mb` refuses
//! writes with UNAVAILABLE naming the disk, says NOT_SERVING on gRPC health,
//! says why in `status`, and still serves reads of what it had; once space is
//! freed it takes writes again in the same process, with every acknowledged
//! write kept. Started on a disk below the floor it refuses to start, with
//! exit code 75 and a message naming the path, the space and the flag, and
//! starts once there is room.

use std::time::Duration;

use opsd_tests::client::{self, health};
use opsd_tests::tmpfs::{Tmpfs, MB};
use opsd_tests::{skip, Cluster, NodeConfig, Opsctl, Options};
use tonic::Code;
use tonic_health::ServingStatus;

const TEST: &str = "full_disk_refuses_writes_then_recovers";
/// The floor the node runs with, in MiB.
const FLOOR_MB: u64 = 48;
/// How long the node may take to notice the disk (it measures every second).
const NOTICE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn full_disk_refuses_writes_then_recovers() {
    let mut cluster = Cluster::empty(Options {
        extra_args: vec!["--min-free-mb".into(), FLOOR_MB.to_string()],
        ..Options::default()
    });
    // rocksdb reserves room for its write-ahead log up front (about 70 MiB).
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
    let pid = node.pid();

    let mut acked = Vec::new();
    for i in 0..10 {
        let (key, value) = (format!("app/k{i}"), format!("v{i}"));
        let put = cluster.put(n, &key, &value).await.expect("a write on a disk with room");
        acked.push((key, value, put.revision));
    }
    assert_eq!(health(&addr).await.expect("health"), ServingStatus::Serving);

    // Fill the disk to below the floor (but not to nothing).
    let filler = disk.fill_until_free_below("filler", (FLOOR_MB / 2) * MB);
    eprintln!("filled: {} MiB free", disk.free_bytes() / MB);
    // Writes sent before the node measured the disk again are acknowledged
    // and kept; then every write is refused, naming the disk.
    let filled = std::time::Instant::now();
    let refusal = loop {
        let key = format!("app/k{}", acked.len());
        match client::put_once(&addr, &key, "late").await {
            Ok(put) => acked.push((key, "late".to_string(), put.revision)),
            Err(e) => break e,
        }
        assert!(
            filled.elapsed() < NOTICE,
            "writes are still taken {NOTICE:?} after the disk filled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refusal.code(), Code::Unavailable, "{}", client::describe(&refusal));
    let message = refusal.message();
    assert!(message.contains(&format!("disk full at {data_dir}")), "{message}");
    assert!(
        message.contains("below the floor of 48 MB (--min-free-mb)"),
        "{message}"
    );

    // Health, status and opsctl say why; the node is still the leader.
    assert_eq!(health(&addr).await.expect("health"), ServingStatus::NotServing);
    let status = node.status().await.expect("status");
    assert_eq!(status.role, "leader");
    assert!(
        status.problem.starts_with(&format!("disk full at {data_dir}")),
        "{status:?}"
    );
    let shown = Opsctl { addr: addr.clone() }.run(&["status"]).await;
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(shown.contains("problem") && shown.contains("disk full at"), "{shown}");
    assert!(node.log().contains("ERROR") && node.log().contains(&format!("disk full at {data_dir}")));

    // Reads of what the node had go on, stale and linearizable.
    for stale in [true, false] {
        let got = cluster.get(n, "app/k3", stale).await.expect("a read on a full disk");
        assert_eq!(got.setting.expect("app/k3").value, "v3");
    }
    // A refused write changed nothing, however often it is sent.
    for _ in 0..3 {
        let again = client::put_once(&addr, "app/refused", "x").await.expect_err("refused");
        assert_eq!(again.code(), Code::Unavailable);
    }

    // Free the space: the same process takes writes again.
    std::fs::remove_file(&filler).expect("removing the filler");
    let put = cluster
        .put(n, "app/after", "room again")
        .await
        .expect("a write once there is room");
    acked.push(("app/after".into(), "room again".into(), put.revision));
    assert_eq!(node.pid(), pid, "the node was not restarted");
    assert_eq!(health(&addr).await.expect("health"), ServingStatus::Serving);
    assert_eq!(node.status().await.expect("status").problem, "");
    let refused = cluster.get(n, "app/refused", false).await;
    assert_eq!(
        refused.as_ref().map_err(|e| e.code()).err(),
        Some(Code::NotFound),
        "a refused write was applied: {refused:?}"
    );
    cluster.assert_writes_present(&[n], "app/", &acked).await;

    // Restarting on a disk below the floor is refused, with exit code 75.
    let exit = node.terminate(Duration::from_secs(30)).await;
    assert!(exit.status.success(), "{:?}", exit.status);
    let filler = disk.fill_until_free_below("filler", (FLOOR_MB / 2) * MB);
    node.restart();
    let exit = node.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(exit.status.code(), Some(75), "{:?}:\n{}", exit.status, exit.output);
    assert!(
        exit.output.contains(&format!("disk full at {data_dir}: ")),
        "{}",
        exit.output
    );
    assert!(
        exit.output.contains("below the floor of 48 MB (--min-free-mb)"),
        "{}",
        exit.output
    );
    std::fs::remove_file(&filler).expect("removing the filler");
    node.restart();
    node.wait_ready(Duration::from_secs(30)).await;
    cluster.assert_writes_present(&[n], "app/", &acked).await;
}
