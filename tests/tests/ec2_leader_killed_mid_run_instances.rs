//! kill -9 of the leader of a 3-node opsd cluster in the middle of an EC2
//! cluster's `RunInstances` calls, at the worst moment: EC2 (moto) has made
//! the second instance but the leader never heard the answer (a proxy holds
//! it back). The new leader takes the run over, finds the instances the dead
//! leader made by their tags, starts only the missing one, and the cluster
//! ends with exactly `size` instances, one per index, none twin, as EC2's
//! own `DescribeInstances` says.
//!
//! moto does not honour `ClientToken`, so what this proves is opsd's own
//! idempotency (find by tag before `RunInstances`); on AWS the token covers
//! the window in which a new instance is not yet listed.

use std::collections::BTreeMap;
use std::time::Duration;

use opsd_tests::moto::{HoldingProxy, Moto};
use opsd_tests::resources as res;
use opsd_tests::{Cluster, Options, FORM_TIMEOUT};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn ec2_leader_killed_mid_run_instances() {
    let Some(moto) = Moto::start("ec2_leader_killed_mid_run_instances").await else {
        return;
    };
    // RunInstances #1 is the image's builder; #2 to #4 are the cluster's
    // machines 0 to 2: the answer to #3 (machine 1) is held.
    let proxy = HoldingProxy::start(moto.addr(), 3).await;
    // A long attempt timeout: the leader must still be waiting for the held
    // answer (not retrying) when it is killed.
    let mut env = Moto::node_env(&proxy.endpoint());
    env.push(("OPSD_EC2_ATTEMPT_TIMEOUT".into(), "60s".into()));
    let cluster = Cluster::start_placed(3, Options::default(), move |c| c.env.extend(env.clone())).await;
    let leader = cluster.leader().await;
    let follower = cluster.followers().await[0];
    let addr = cluster.node(follower).client_addr();
    let scope = cluster.node(follower).status().await.expect("status").cluster_id;
    let base = moto.base_ami().await;

    res::create(&addr, "image", "base", json!({"provider": "ec2", "source": base}))
        .await
        .expect("create the image");
    let image = res::wait_resting(&addr, "image", "base", WAIT).await;
    assert_eq!(image.state, "built", "{:?}", res::json_of(image.outputs.as_ref()));

    let created = res::create(
        &addr,
        "cluster",
        "web",
        json!({"provider": "ec2", "image": "base", "size": 3, "port": 8080}),
    )
    .await
    .expect("create the cluster");
    let run_id = created.run.expect("the create's run").run_id;
    tokio::time::timeout(WAIT, proxy.held())
        .await
        .expect("the second machine's RunInstances never came");
    // The leader waits for the held answer: what EC2 made is what it made
    // before the kill (read now; after the kill the new leader soon adds machine 2).
    let made = moto.instances(&scope, "cluster/web").await;
    assert_eq!(made.len(), 2, "EC2 made machines 0 and 1 before the kill: {made:?}");
    cluster.node(leader).kill9();
    let new_leader = cluster.wait_for_leader(&[leader], FORM_TIMEOUT).await;
    let addr = cluster.node(new_leader).client_addr();
    let web = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    let outputs = res::json_of(web.outputs.as_ref());
    assert_eq!(web.state, "running", "{outputs}");

    let run = res::run(&addr, &run_id).await.expect("the create's run");
    assert_eq!(run.attempt, 2, "the takeover is recorded: {run:?}");
    assert_eq!(run.node_id, cluster.node(new_leader).id());
    let lines = res::log_lines(&addr, &run_id).await.expect("the run's log");
    assert!(
        lines.iter().any(|l| l.contains("machine 1 is instance")),
        "the new leader found machine 1 by its tags: {lines:#?}"
    );

    // Exactly three instances were ever made for the cluster, one per index.
    let instances = moto.instances(&scope, "cluster/web").await;
    let mut by_index: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in &instances {
        assert_eq!(i["state"], "running", "{instances:?}");
        by_index
            .entry(i["tags"]["opsd.index"].as_str().unwrap_or("?").to_string())
            .or_default()
            .push(i["id"].as_str().unwrap_or("?").to_string());
    }
    assert_eq!(instances.len(), 3, "{by_index:?}");
    assert_eq!(by_index.keys().collect::<Vec<_>>(), ["0", "1", "2"], "{by_index:?}");
    let machines = outputs["machines"].as_array().cloned().unwrap_or_default();
    for m in &machines {
        let index = m["index"].as_u64().expect("index").to_string();
        assert_eq!(json!(by_index[&index]), json!([m["instance_id"]]), "{m}");
    }
    assert_eq!(machines.len(), 3, "{outputs}");

    // Cleanup through opsd, checked with EC2's list calls.
    res::do_event(&addr, "cluster", "web", "destroy", &[], "test over")
        .await
        .expect("destroy");
    assert_eq!(
        res::wait_resting(&addr, "cluster", "web", WAIT).await.state,
        "destroyed"
    );
    res::do_event(&addr, "image", "base", "destroy", &[], "test over")
        .await
        .expect("destroy");
    assert_eq!(res::wait_resting(&addr, "image", "base", WAIT).await.state, "destroyed");
    assert_eq!(
        moto.live_instances().await,
        Vec::<serde_json::Value>::new(),
        "instances left running"
    );
}
