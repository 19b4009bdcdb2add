//! A node killed with kill -9 misses writes, is restarted from its data dir
//! with the same flags, and catches up: same identity, same membership, and
//! every write it missed in its local state.

use std::time::{Duration, Instant};

use opsd_tests::{Cluster, Options};

#[tokio::test]
async fn killed_node_restarts_and_catches_up() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let victim = cluster.followers().await[0];
    let victim_id = cluster.node(victim).id();

    for i in 0..50 {
        cluster
            .put(leader, &format!("before/{i:04}"), &format!("v{i}"))
            .await
            .expect("write before the kill");
    }
    let before = cluster.node(leader).status().await.expect("leader status");
    cluster
        .node(victim)
        .wait_applied(before.applied_index, Duration::from_secs(30))
        .await;

    cluster.node(victim).kill9();
    eprintln!(
        "killed {} (id {victim_id}) with SIGKILL at applied index {}",
        cluster.node(victim).name(),
        before.applied_index
    );

    // The two others still form a majority: writes go on, through both of them.
    let others: Vec<usize> = cluster.serving();
    let mut last_revision = 0;
    for i in 0..300 {
        let via = others[i % others.len()];
        let put = cluster
            .put(via, &format!("missed/{i:04}"), &format!("w{i}"))
            .await
            .unwrap_or_else(|e| panic!("write {i} while {} is down: {e}", cluster.node(victim).name()));
        last_revision = last_revision.max(put.revision);
    }
    let target = cluster
        .node(cluster.leader().await)
        .status()
        .await
        .expect("leader status")
        .applied_index;
    assert!(target >= last_revision);

    let restarted_at = Instant::now();
    cluster.node(victim).restart();
    let status = cluster.node(victim).wait_ready(Duration::from_secs(60)).await;
    let serving_after = restarted_at.elapsed();
    assert_eq!(status.node_id, victim_id, "the restarted node has another identity");
    let caught_up = restarted_at.elapsed() + cluster.node(victim).wait_applied(target, Duration::from_secs(60)).await;
    eprintln!(
        "TIMING catch-up: {} restarted -> answering {serving_after:?}; -> applied index {target} \
         (the leader's; {} entries behind at restart) {caught_up:?}",
        cluster.node(victim).name(),
        target - before.applied_index
    );

    // Its local state has every write it missed.
    let listed = cluster
        .list(victim, "missed/", true)
        .await
        .expect("stale list on the restarted node");
    assert_eq!(
        listed.settings.len(),
        300,
        "the restarted node's local state lacks missed writes"
    );
    for (i, s) in listed.settings.iter().enumerate() {
        assert_eq!(
            (s.key.as_str(), s.value.as_str()),
            (format!("missed/{i:04}").as_str(), format!("w{i}").as_str())
        );
    }
    let got = cluster
        .get(victim, "before/0049", true)
        .await
        .expect("a write from before the kill");
    assert_eq!(got.setting.expect("a setting").value, "v49");

    // It is a voter of the same cluster again, following the current leader.
    cluster.wait_membership(&[], 3, 0, Duration::from_secs(60)).await;
    let s = cluster.node(victim).status().await.expect("status");
    assert_eq!(s.cluster_id, before.cluster_id);
    assert!(
        s.members.iter().any(|m| m.id == victim_id && m.voter),
        "{:?}",
        s.members
    );

    // And it takes writes again (forwarded to the leader) that everyone sees.
    let put = cluster
        .put(victim, "after/restart", "yes")
        .await
        .expect("write through the restarted node");
    for i in 0..cluster.len() {
        let got = cluster.get(i, "after/restart", false).await.expect("linearizable read");
        assert_eq!(got.setting.expect("a setting").mod_revision, put.revision);
    }
}
