//! The way back for a node that lost its state: `opsd recover --rejoin`
//! removes its old id from the cluster, moves what is left of its state
//! aside, and brings it back under a new id as a new member, which receives
//! every acknowledged write. It never comes back under its old id.

use std::time::Duration;

use opsd_tests::{wait_until, Cluster, Options};

const KEYS: usize = 100;

#[tokio::test]
async fn wiped_node_recovers_as_a_new_member() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let mut acked = Vec::new();
    for i in 0..KEYS {
        let (key, value) = (format!("back/{i:04}"), format!("v{i}"));
        let put = cluster
            .put(leader, &key, &value)
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        acked.push((key, value, put.revision));
    }
    let victim = cluster.followers().await[0];
    let node = cluster.node(victim);
    let old_id = node.id();
    node.kill9();
    std::fs::remove_dir_all(node.data_dir().join("db")).expect("wipe db/");

    node.restart();
    let exit = node.wait_exit(Duration::from_secs(30)).await;
    assert!(!exit.status.success(), "a wiped node resumed:\n{}", exit.output);
    assert!(
        exit.output.contains("has lost its Raft state") && exit.output.contains("recover --rejoin"),
        "the refusal does not name the way back:\n{}",
        exit.output
    );

    let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let rejoin: Vec<String> = others.iter().map(|&i| cluster.node(i).client_addr()).collect();
    node.recover(&rejoin);
    let status = node.wait_ready(Duration::from_secs(60)).await;
    let new_id = status.node_id;
    eprintln!("node {old_id} came back as node {new_id}");
    assert_ne!(new_id, old_id, "the node came back under its old id");
    let output = node.run_log();
    assert!(
        output.contains(&format!("removed the old node id {old_id}")) && output.contains("damaged-"),
        "recover does not say what it did:\n{output}"
    );

    wait_until(
        "the cluster to list three members, the new id and not the old",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let members = cluster
                .node(others[0])
                .status()
                .await
                .map_err(|e| e.to_string())?
                .members;
            let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
            (ids.len() == 3 && ids.contains(&new_id) && !ids.contains(&old_id))
                .then_some(())
                .ok_or(format!("members {ids:?}"))
        },
    )
    .await;
    cluster.assert_writes_present(&[victim], "back/", &acked).await;

    // The old state was kept aside, with the old identity.
    let aside = std::fs::read_dir(node.data_dir())
        .expect("read the data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("damaged-"))
        })
        .expect("a damaged-* directory");
    let old_identity = std::fs::read_to_string(aside.join("node.json")).expect("the old node.json");
    assert!(old_identity.contains(&old_id.to_string()), "{old_identity}");

    // A write after the return reaches the returned node as well.
    cluster
        .put(others[0], "back/after", "v")
        .await
        .expect("a write after the return");
}
