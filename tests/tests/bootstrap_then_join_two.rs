//! One node bootstraps a cluster, two more join it through the API, and the
//! three become voters of one cluster: a write through a follower is then
//! readable on every node, linearizably and (once applied) from local state.

use std::collections::HashSet;
use std::time::Duration;

use opsd_tests::{Cluster, Options};

#[tokio::test]
async fn bootstrap_then_join_two() {
    let cluster = Cluster::start(3, Options::default()).await;

    // One cluster: the same id everywhere, three voters, one leader.
    let mut cluster_ids = HashSet::new();
    let mut roles = Vec::new();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let s = node.status().await.unwrap_or_else(|e| panic!("n{} status: {e}", i + 1));
        assert_eq!(s.node_id, node.id());
        assert!(!s.cluster_id.is_empty(), "{} has no cluster id", node.name());
        cluster_ids.insert(s.cluster_id.clone());
        assert_eq!(s.members.len(), 3, "{} members: {:?}", node.name(), s.members);
        assert!(
            s.members.iter().all(|m| m.voter),
            "{} members: {:?}",
            node.name(),
            s.members
        );
        let ids: HashSet<u64> = s.members.iter().map(|m| m.id).collect();
        let ours: HashSet<u64> = cluster.nodes().iter().map(|n| n.id()).collect();
        assert_eq!(ids, ours, "{} lists other members than the nodes started", node.name());
        for m in &s.members {
            let n = &cluster.nodes()[cluster.index_of(m.id).unwrap()];
            assert_eq!(
                m.addr,
                n.client_addr(),
                "client address of {} as seen by {}",
                n.name(),
                node.name()
            );
            assert_eq!(
                m.peer_addr,
                n.peer_addr(),
                "peer address of {} as seen by {}",
                n.name(),
                node.name()
            );
        }
        assert!(
            s.leader_id != 0 && !s.leader_addr.is_empty(),
            "{} knows no leader: {s:?}",
            node.name()
        );
        roles.push(s.role);
    }
    assert_eq!(
        cluster_ids.len(),
        1,
        "nodes report different cluster ids: {cluster_ids:?}"
    );
    roles.sort();
    assert_eq!(roles, ["follower", "follower", "leader"]);

    // A write through a follower (forwarded to the leader) ...
    let leader = cluster.leader().await;
    let follower = cluster.followers().await[0];
    let put = cluster
        .put(follower, "spine/greeting", "hello from a follower")
        .await
        .expect("a put through a follower");
    assert!(put.revision > 0, "a write's revision is its log index: {put:?}");
    assert!(put.previous.is_none(), "a new key has no previous value: {put:?}");
    eprintln!(
        "write through follower {} (leader {}) got revision {}",
        cluster.node(follower).name(),
        cluster.node(leader).name(),
        put.revision
    );

    // ... reads back on all three, linearizably (no waiting: the read index makes each node catch up) ...
    for (i, node) in cluster.nodes().iter().enumerate() {
        let got = cluster
            .get(i, "spine/greeting", false)
            .await
            .unwrap_or_else(|e| panic!("linearizable get on {}: {e}", node.name()));
        let setting = got.setting.expect("a setting");
        assert_eq!(
            setting.value,
            "hello from a follower",
            "linearizable read on {}",
            node.name()
        );
        assert_eq!(setting.mod_revision, put.revision);
        assert_eq!(setting.create_revision, put.revision);
        assert_eq!(setting.version, 1);
        assert!(
            got.revision >= put.revision,
            "served at {} before the write {}",
            got.revision,
            put.revision
        );
    }

    // ... and from each node's local state once its store has the write.
    for (i, node) in cluster.nodes().iter().enumerate() {
        let (_, took) = opsd_tests::wait_until(
            &format!("{} to reach settings revision {}", node.name(), put.revision),
            Duration::from_secs(30),
            Duration::from_millis(20),
            || async {
                let r = cluster
                    .list(i, "spine/", true)
                    .await
                    .map_err(|e| e.to_string())?
                    .revision;
                (r >= put.revision).then_some(()).ok_or(format!("at revision {r}"))
            },
        )
        .await;
        let got = cluster
            .get(i, "spine/greeting", true)
            .await
            .unwrap_or_else(|e| panic!("stale get on {}: {e}", node.name()));
        assert_eq!(
            got.setting.expect("a setting").value,
            "hello from a follower",
            "stale read on {}",
            node.name()
        );
        eprintln!("{} applied revision {} (waited {took:?})", node.name(), put.revision);
    }

    // Every node lists the same state.
    let expected = cluster
        .list(leader, "", false)
        .await
        .expect("list on the leader")
        .settings;
    assert_eq!(expected.len(), 1, "{expected:?}");
    for (i, node) in cluster.nodes().iter().enumerate() {
        let listed = cluster.list(i, "", true).await.expect("stale list").settings;
        assert_eq!(listed, expected, "{} lists a different state", node.name());
    }
}
