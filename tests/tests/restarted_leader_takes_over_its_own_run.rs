//! kill -9 of a single node while it executes a run, then a restart: the node
//! leads again (possibly in the same term) and must not take the run for one
//! it started itself in this life. It takes it over (attempt 2, recorded)
//! and drives it to its end once.

use std::time::Duration;

use opsd_tests::resources as res;
use opsd_tests::{Cluster, Options, FORM_TIMEOUT};

#[tokio::test]
async fn restarted_leader_takes_over_its_own_run() {
    let cluster = Cluster::start(1, Options::default()).await;
    let node = cluster.node(0);
    let addr = node.client_addr();
    let run = res::start_long_step(&addr, "restart test").await;

    node.kill9();
    node.restart();
    cluster.wait_for_leader(&[], FORM_TIMEOUT).await;
    let task = res::wait_resting(&addr, "long", "task", Duration::from_secs(60)).await;
    assert_eq!(task.state, "done");
    let ended = res::run(&addr, &run.run_id).await.unwrap();
    assert_eq!((ended.outcome().label(), ended.attempt), ("succeeded", 2), "{ended:?}");
    let outputs: serde_json::Value = opsd_tests::resources::json_of(task.outputs.as_ref());
    assert_eq!(outputs["attempt"], 2);
    let history = res::history(&addr, "long", "task").await.unwrap();
    assert_eq!(history.iter().filter(|r| r.event == "go").count(), 1);
}
