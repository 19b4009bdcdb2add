//! A node whose `db/` was wiped while its `node.json` was kept has forgotten
//! its vote and its log: resuming under its old id could let it vote twice in
//! a term or count towards a quorum for entries it no longer has. It refuses
//! to start, naming the data dir, the node, the cluster and the way back, and
//! keeps refusing (it does not record a fresh start on the way out).

use std::time::Duration;

use opsd_tests::{Cluster, Options};

#[tokio::test]
async fn wiped_database_is_refused() {
    let cluster = Cluster::start(1, Options::default()).await;
    for i in 0..20 {
        cluster
            .put(0, &format!("wiped/{i:04}"), "v")
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    let node = cluster.node(0);
    let cluster_id = node.status().await.expect("status").cluster_id;
    node.kill9();
    std::fs::remove_dir_all(node.data_dir().join("db")).expect("wipe db/");

    let data_dir = node.data_dir().display().to_string();
    let expected = format!(
        "node {} of cluster {cluster_id} has lost its Raft state (no vote, no log)",
        node.id()
    );
    for attempt in ["first", "second"] {
        node.restart();
        let exit = node.wait_exit(Duration::from_secs(30)).await;
        exit.assert_refused_saying(
            &format!("opsd resumed with a wiped database ({attempt} restart)"),
            &[
                (data_dir.as_str(), "name the data dir"),
                (expected.as_str(), "name the node, its cluster and what it lost"),
                (
                    &*format!("opsctl cluster remove {}", node.id()),
                    "say how to remove the node",
                ),
                ("empty data dir", "say how to come back by hand"),
                ("recover --rejoin", "name the command that brings it back"),
            ],
        );
    }
}

/// In a three-node cluster a follower started with `--join` (its restart
/// keeps its flags) is refused the same way, and the two others go on.
#[tokio::test]
async fn wiped_follower_is_refused_and_the_cluster_goes_on() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    cluster.put(leader, "wiped/before", "v").await.expect("a write");
    let victim = cluster.followers().await[0];
    let node = cluster.node(victim);
    node.kill9();
    std::fs::remove_dir_all(node.data_dir().join("db")).expect("wipe db/");

    node.restart();
    let exit = node.wait_exit(Duration::from_secs(30)).await;
    eprintln!("refused: {}", exit.output.trim_end().lines().last().unwrap_or(""));
    assert!(
        !exit.status.success(),
        "a follower resumed with a wiped database:\n{}",
        exit.output
    );
    let expected = format!("node {} of cluster", node.id());
    assert!(
        exit.output.contains(&expected) && exit.output.contains("has lost its Raft state"),
        "the refusal does not say node {} lost its Raft state:\n{}",
        node.id(),
        exit.output
    );
    let others = cluster.serving();
    assert_eq!(others.len(), 2);
    cluster
        .put(others[0], "wiped/after", "v")
        .await
        .expect("a write after the refusal");
}
