//! kill -9 of the leader while it executes a run: the new leader takes the
//! run over (attempt 2, recorded), drives it to its end once, and nothing
//! stays running.

use std::time::Duration;

use opsd_tests::api::ListRunsRequest;
use opsd_tests::resources as res;
use opsd_tests::{client, Cluster, Options, FORM_TIMEOUT};

#[tokio::test]
async fn leader_killed_mid_run_is_taken_over() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let follower = cluster.followers().await[0];
    let addr = cluster.node(follower).client_addr();
    // Started through a follower; executed by the leader.
    let run = res::start_long_step(&addr, "takeover test").await;
    assert_eq!(run.node_id, cluster.node(leader).id());

    cluster.node(leader).kill9();
    let new_leader = cluster.wait_for_leader(&[leader], FORM_TIMEOUT).await;
    let addr = cluster.node(new_leader).client_addr();
    let task = res::wait_resting(&addr, "long", "task", Duration::from_secs(60)).await;
    assert_eq!(task.state, "done");

    let ended = res::run(&addr, &run.run_id).await.unwrap();
    assert_eq!(ended.outcome().label(), "succeeded");
    assert_eq!(ended.attempt, 2, "the takeover is recorded");
    assert_eq!(ended.node_id, cluster.node(new_leader).id());
    let outputs: serde_json::Value = opsd_tests::resources::json_of(task.outputs.as_ref());
    assert_eq!(outputs["attempt"], 2);
    assert_eq!(outputs["done_by"], cluster.node(new_leader).id());
    let lines = res::log_lines(&addr, &run.run_id).await.unwrap();
    assert!(lines.iter().any(|l| l.contains("taken over by node")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("attempt 2 on node")), "{lines:?}");

    // Finished once: one run for the event, and nothing running anywhere.
    let history = res::history(&addr, "long", "task").await.unwrap();
    assert_eq!(history.iter().filter(|r| r.event == "go").count(), 1, "{history:?}");
    let running = client::connect(&addr)
        .resources
        .list_runs(ListRunsRequest {
            outcome: opsd_tests::api::RunOutcome::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert!(running.is_empty(), "{running:?}");
}
