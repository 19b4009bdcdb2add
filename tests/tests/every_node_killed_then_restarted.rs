//! Every node dies at once (kill -9 of all three: a power cut) and is started
//! again with the same flags and data dirs, the joined ones still carrying
//! their --join flags whose members are down too. The cluster comes back by
//! itself: a leader is elected, every acknowledged write is there with its
//! revision, and new writes are accepted.

use std::time::{Duration, Instant};

use opsd_tests::{Cluster, Options, FORM_TIMEOUT};

#[tokio::test]
async fn every_node_killed_then_restarted() {
    let cluster = Cluster::start(3, Options::default()).await;
    let ids: Vec<u64> = cluster.nodes().iter().map(|n| n.id()).collect();
    let cluster_id = cluster.node(0).status().await.expect("status").cluster_id;

    let mut acked = Vec::new();
    for i in 0..100 {
        let key = format!("durable/{i:03}");
        let put = cluster
            .put(i % 3, &key, &format!("v{i}"))
            .await
            .expect("write before the power cut");
        acked.push((key, format!("v{i}"), put.revision));
    }

    for n in cluster.nodes() {
        n.kill9();
    }
    eprintln!(
        "killed all three nodes with SIGKILL after {} acknowledged writes",
        acked.len()
    );

    let restarted = Instant::now();
    for n in cluster.nodes() {
        n.restart();
    }
    for (n, id) in cluster.nodes().iter().zip(&ids) {
        let s = n.wait_ready(FORM_TIMEOUT).await;
        assert_eq!(s.node_id, *id, "{} came back with another identity", n.name());
        assert_eq!(s.cluster_id, cluster_id, "{} came back in another cluster", n.name());
    }
    let serving = restarted.elapsed();
    let leader = cluster.wait_for_leader(&[], FORM_TIMEOUT).await;
    let elected = restarted.elapsed();
    let put = cluster
        .put(leader, "durable/after", "yes")
        .await
        .expect("a write after the restart");
    eprintln!(
        "TIMING full restart: all restarted -> all answering {serving:?}; -> leader {} agreed {elected:?}; \
         -> first write acknowledged {:?}",
        cluster.node(leader).name(),
        restarted.elapsed()
    );
    cluster.wait_membership(&[], 3, 0, FORM_TIMEOUT).await;

    let max_revision = put.revision;
    for i in 0..cluster.len() {
        cluster
            .node(i)
            .wait_applied(max_revision, Duration::from_secs(30))
            .await;
        for stale in [true, false] {
            let listed = cluster
                .list(i, "durable/", stale)
                .await
                .expect("list after the restart");
            let by_key: std::collections::HashMap<_, _> = listed
                .settings
                .iter()
                .map(|s| (s.key.as_str(), (s.value.as_str(), s.mod_revision)))
                .collect();
            for (k, v, rev) in &acked {
                assert_eq!(
                    by_key.get(k.as_str()),
                    Some(&(v.as_str(), *rev)),
                    "{} ({}) lost acknowledged write {k}",
                    cluster.node(i).name(),
                    if stale { "stale" } else { "linearizable" }
                );
            }
            assert_eq!(by_key.get("durable/after"), Some(&("yes", put.revision)));
        }
    }
}
