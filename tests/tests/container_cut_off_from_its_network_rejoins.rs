//! A node cut off by its network, as containers are: three opsd nodes in
//! containers on a bridge network this test made, the leader's container
//! disconnected from it (`docker network disconnect`), and connected again.
//!
//! The two that remain elect a leader and acknowledge every write made while
//! the old leader is gone; once its container is back on the network (with
//! whatever address Docker gives it: peers find each other by container
//! name), it follows the new leader and holds every acknowledged write. The
//! nodes are the `opsd` binary under test in a `FROM scratch` image with the
//! libraries it links, so no registry is needed.
//!
//! The fault suite (`make nemesis`) cuts links between processes in network
//! namespaces; this is the same fault where opsd runs in containers.

use std::time::Duration;

use opsd_tests::opsd_containers::OpsdContainers;
use opsd_tests::{client, docker, wait_until};

const TEST: &str = "container_cut_off_from_its_network_rejoins";

/// Keys written before the cut, and while the old leader is cut off.
const BEFORE: usize = 20;
const DURING: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn container_cut_off_from_its_network_rejoins() {
    if !docker::require(TEST) {
        return;
    }
    let bed = OpsdContainers::start(TEST, 3);

    // Writes through any node; the cluster has three voters.
    let first = bed.client_addr(0);
    wait_until(
        "three voters",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let s = client::status(&first, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            let voters = s.members.iter().filter(|m| m.voter).count();
            (voters == 3 && s.leader_id != 0)
                .then_some(())
                .ok_or(format!("{voters} voters, leader {:?}", s.leader_id))
        },
    )
    .await;
    for i in 0..BEFORE {
        client::put(&first, &format!("k{i}"), &format!("v{i}")).await.unwrap();
    }

    // Cut the leader's container off.
    let status = client::status(&first, Duration::from_secs(5)).await.unwrap();
    let leader_id = status.leader_id;
    assert_ne!(leader_id, 0, "no leader");
    let leader = bed.index_of(&status, leader_id);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    bed.disconnect(leader);

    // The other two elect one of themselves and take every write.
    let survivor = bed.client_addr(others[0]);
    let (new_leader, _) = wait_until(
        "a new leader among the other two",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let s = client::status(&survivor, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            match s.leader_id {
                0 => Err("no leader yet".to_string()),
                id if id == leader_id => Err(format!("still led by {id}")),
                id => Ok(id),
            }
        },
    )
    .await;
    for i in BEFORE..BEFORE + DURING {
        client::put(&survivor, &format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }

    // Back on the network: it follows the new leader and has every write.
    bed.connect(leader);
    let back = bed.client_addr(leader);
    wait_until(
        "the cut-off node to follow the new leader",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let s = client::status(&back, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            (s.leader_id == new_leader)
                .then_some(())
                .ok_or(format!("it sees leader {:?}", s.leader_id))
        },
    )
    .await;
    // Its own applied state (stale reads are served from it, never forwarded).
    let last = format!("k{}", BEFORE + DURING - 1);
    wait_until(
        "the cut-off node to apply the writes it missed",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let got = client::get(&back, &last, true).await.map_err(|e| e.to_string())?;
            got.setting.map(|_| ()).ok_or(format!("{last} not there yet"))
        },
    )
    .await;
    for i in 0..BEFORE + DURING {
        let got = client::get(&back, &format!("k{i}"), true).await.unwrap();
        let value = got.setting.map(|s| s.value);
        assert_eq!(value, Some(format!("v{i}")), "k{i} on the node that was cut off");
    }
    // And it takes writes again (forwarded to the leader).
    client::put(&back, "after", "healed").await.unwrap();
    let got = client::get(&bed.client_addr(others[1]), "after", false).await.unwrap();
    assert_eq!(got.setting.map(|s| s.value).as_deref(), Some("healed"));
}
