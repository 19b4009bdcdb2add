//! A leader whose disk fills up below `--min-free-mb` cannot take writes, so
//! it stops leading: it sends no more heartbeats and stands for no election,
//! the other two elect a leader among themselves and commit on, and once its
//! space is freed the old leader catches up as a follower. Every
//! acknowledged write is on every node.

use std::time::Duration;

use opsd_tests::client::{self, health};
use opsd_tests::tmpfs::{Tmpfs, MB};
use opsd_tests::{skip, wait_until, Cluster, Options};
use tonic_health::ServingStatus;

const TEST: &str = "leader_with_full_disk_hands_over";
const FLOOR_MB: u64 = 48;

#[tokio::test]
async fn leader_with_full_disk_hands_over() {
    let mount = tempfile::Builder::new()
        .prefix("opsd-e2e-disk-")
        .tempdir()
        .expect("a temp dir for the mount point");
    let disk = match Tmpfs::mount(mount.path(), 256) {
        Ok(d) => d,
        Err(why) => return skip(TEST, &why),
    };
    let placed = disk.path().join("data");
    let options = Options {
        extra_args: vec!["--min-free-mb".into(), FLOOR_MB.to_string()],
        ..Options::default()
    };
    // n1 bootstraps, so it leads; its data dir is on the small disk.
    let cluster = Cluster::start_placed(3, options, move |config| {
        if config.name == "n1" {
            config.data_dir = placed.clone();
        }
    })
    .await;
    let small = 0;
    assert_eq!(cluster.leader().await, small, "n1 should lead after bootstrapping");

    let mut acked = Vec::new();
    for i in 0..10 {
        let (key, value) = (format!("app/k{i:03}"), format!("v{i}"));
        let put = cluster
            .put(small, &key, &value)
            .await
            .expect("a write before the disk fills");
        acked.push((key, value, put.revision));
    }

    let filler = disk.fill_until_free_below("filler", (FLOOR_MB / 2) * MB);
    // The other two elect a leader of their own.
    let leader = cluster.wait_for_leader(&[small], Duration::from_secs(20)).await;
    assert_ne!(leader, small);
    let addr = cluster.node(small).client_addr();
    assert_eq!(health(&addr).await.expect("health"), ServingStatus::NotServing);
    for i in 10..40 {
        let (key, value) = (format!("app/k{i:03}"), format!("v{i}"));
        let put = cluster
            .put(leader, &key, &value)
            .await
            .unwrap_or_else(|e| panic!("{key} through the new leader: {e}"));
        acked.push((key, value, put.revision));
    }

    // Room again: n1 follows the new leader and catches up, in the same process.
    std::fs::remove_file(&filler).expect("removing the filler");
    wait_until(
        "n1 to serve again",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let addr = addr.clone();
            async move {
                let s = client::status(&addr, Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string())?;
                (s.problem.is_empty() && s.role == "follower")
                    .then_some(())
                    .ok_or(format!("{} {}", s.role, s.problem))
            }
        },
    )
    .await;
    cluster.wait_caught_up(small, Duration::from_secs(30)).await;
    assert_eq!(health(&addr).await.expect("health"), ServingStatus::Serving);
    cluster.assert_writes_present(&[0, 1, 2], "app/", &acked).await;
}
