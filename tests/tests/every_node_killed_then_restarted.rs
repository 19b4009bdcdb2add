//! Every node dies at once (kill -9 of all three: a power cut) and is started
//! again with the same flags and data dirs, the joined ones still carrying
//! their --join flags whose members are down too. The cluster comes back by
//! itself: a leader is elected, every acknowledged write is there with its
//! revision, and new writes are accepted.

use std::time::Instant;

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

    acked.push(("durable/after".to_string(), "yes".to_string(), put.revision));
    let all: Vec<usize> = (0..cluster.len()).collect();
    cluster.assert_writes_present(&all, "durable/", &acked).await;
}
