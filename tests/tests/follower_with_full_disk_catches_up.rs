//! A follower whose disk fills up below `--min-free-mb` takes no more
//! entries from the leader (it answers that its disk is full, and the leader
//! sends them again later) and refuses writes sent to it, while the other two
//! nodes keep committing; once its space is freed it catches up by itself,
//! and every acknowledged write is on every node.

use std::time::Duration;

use opsd_tests::client::{self, health};
use opsd_tests::tmpfs::{Tmpfs, MB};
use opsd_tests::{skip, wait_until, Cluster, Options};
use tonic::Code;
use tonic_health::ServingStatus;

const TEST: &str = "follower_with_full_disk_catches_up";
const FLOOR_MB: u64 = 48;

#[tokio::test]
async fn follower_with_full_disk_catches_up() {
    let mount = tempfile::Builder::new()
        .prefix("opsd-e2e-disk-")
        .tempdir()
        .expect("a temp dir for the mount point");
    let disk = match Tmpfs::mount(mount.path(), 256) {
        Ok(d) => d,
        Err(why) => return skip(TEST, &why),
    };
    let on_disk = disk.path().join("data");
    let placed = on_disk.clone();
    let options = Options {
        extra_args: vec!["--min-free-mb".into(), FLOOR_MB.to_string()],
        ..Options::default()
    };
    // n3 keeps its data dir on the small disk; n1 (which bootstraps and
    // leads) and n2 on the ordinary one.
    let cluster = Cluster::start_placed(3, options, move |config| {
        if config.name == "n3" {
            config.data_dir = placed.clone();
        }
    })
    .await;
    let leader = cluster.leader().await;
    let small = 2;
    assert_ne!(leader, small, "n3 leads; this scenario needs it to follow");

    let mut acked = Vec::new();
    let write = |i: usize| {
        let cluster = &cluster;
        async move {
            let (key, value) = (format!("app/k{i:03}"), format!("v{i}"));
            let put = cluster
                .put(leader, &key, &value)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            (key, value, put.revision)
        }
    };
    for i in 0..10 {
        acked.push(write(i).await);
    }
    cluster.wait_caught_up(small, Duration::from_secs(30)).await;

    let filler = disk.fill_until_free_below("filler", (FLOOR_MB / 2) * MB);
    let addr = cluster.node(small).client_addr();
    wait_until(
        "n3 to notice its full disk",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let addr = addr.clone();
            async move {
                let s = client::status(&addr, Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string())?;
                s.problem.starts_with("disk full at").then_some(()).ok_or(s.problem)
            }
        },
    )
    .await;
    assert_eq!(health(&addr).await.expect("health"), ServingStatus::NotServing);

    // The other two commit on; n3 stays behind and refuses writes sent to it.
    for i in 10..60 {
        acked.push(write(i).await);
    }
    let refused = client::put_once(&addr, "app/via-n3", "x")
        .await
        .expect_err("n3 refuses writes");
    assert_eq!(refused.code(), Code::Unavailable, "{}", client::describe(&refused));
    assert!(refused.message().contains("disk full at"), "{}", refused.message());
    let leader_log = cluster
        .node(leader)
        .status()
        .await
        .expect("leader status")
        .last_log_index;
    let behind = cluster.node(small).status().await.expect("n3 status");
    assert!(
        behind.last_log_index < leader_log,
        "n3 took entries on a full disk: {} of {leader_log}",
        behind.last_log_index
    );
    assert_eq!(behind.role, "follower", "{behind:?}");
    // Its own state still answers a stale read of what it had.
    let got = cluster.get(small, "app/k005", true).await.expect("a stale read on n3");
    assert_eq!(got.setting.expect("app/k005").value, "v5");

    // Room again: n3 catches up by itself, in the same process.
    std::fs::remove_file(&filler).expect("removing the filler");
    cluster.wait_caught_up(small, Duration::from_secs(30)).await;
    assert_eq!(health(&addr).await.expect("health"), ServingStatus::Serving);
    assert_eq!(
        cluster.leader().await,
        leader,
        "the leader changed over a follower's full disk"
    );
    cluster.assert_writes_present(&[0, 1, 2], "app/", &acked).await;
}
