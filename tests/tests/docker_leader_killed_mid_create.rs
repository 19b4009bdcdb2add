//! kill -9 of the opsd leader while its docker cluster's containers are
//! being created: three opsd nodes, one Docker engine; the leader runs
//! `start_machines` of a 3-machine docker cluster and is killed once the
//! first container exists. A new leader takes the run over, finds the
//! containers the dead one made (by their labels and names) and makes only
//! what is missing: the cluster ends running with exactly 3 containers
//! carrying its label, all running, all of the one run.
//!
//! Skipped with a visible message where Docker is missing (a failure under
//! `OPSD_TEST_STRICT`).

use std::time::Duration;

use opsd_tests::docker::{self, Owned};
use opsd_tests::resources as res;
use opsd_tests::{wait_until, Cluster, Options, FORM_TIMEOUT};
use serde_json::json;

const TEST: &str = "docker_leader_killed_mid_create";
const WAIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn docker_leader_killed_mid_create() {
    if !docker::require(TEST) {
        return;
    }
    let owned = Owned::default();
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let addr = cluster.node(leader).client_addr();
    owned.set(&cluster.node(leader).status().await.expect("status").cluster_id);
    let image_dir = docker::backend_image_dir();
    res::create(
        &addr,
        "image",
        "web",
        json!({"provider": "docker", "source": image_dir.path()}),
    )
    .await
    .expect("create the image");
    assert_eq!(res::wait_resting(&addr, "image", "web", WAIT).await.state, "built");

    let created = res::create(
        &addr,
        "cluster",
        "web",
        json!({"provider": "docker", "image": "web", "size": 3,
               "checks": [{"type": "http", "path": "/", "body": "^web m", "retries": 20, "interval": 0.2}]}),
    )
    .await
    .expect("create the cluster");
    let run_id = created.run.expect("a run").run_id;
    // The first container exists: the step is under way on the leader.
    let (at_kill, _) = wait_until(
        "the first container of cluster/web",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || async {
            let listed = owned.containers(Some("cluster/web"));
            if listed.is_empty() {
                Err("none yet".to_string())
            } else {
                Ok(listed)
            }
        },
    )
    .await;
    cluster.node(leader).kill9();
    let running_at_kill = at_kill.iter().filter(|c| c.state == "running").count();
    eprintln!(
        "[test] killed the leader with {} containers, {running_at_kill} running",
        at_kill.len()
    );

    let new_leader = cluster.wait_for_leader(&[leader], FORM_TIMEOUT).await;
    let addr = cluster.node(new_leader).client_addr();
    let c = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    let outputs = res::json_of(c.outputs.as_ref());
    assert_eq!(c.state, "running", "{outputs:#}");
    let start = res::run(&addr, &run_id).await.expect("the run");
    assert_eq!(start.error, "", "{start:?}");
    if running_at_kill < 3 {
        // The step could not have finished before the kill: it was taken over.
        assert!(start.attempt >= 2, "the run was not taken over: {start:?}");
    }
    let listed = owned.containers(Some("cluster/web"));
    assert_eq!(listed.len(), 3, "twins or missing containers: {listed:?}");
    assert!(listed.iter().all(|c| c.state == "running"), "{listed:?}");
    let mut names: Vec<&str> = listed.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 3, "{listed:?}");
    let runs = docker::docker(&[
        "ps",
        "-a",
        "--filter",
        "label=opsd.resource=cluster/web",
        "--filter",
        &format!(
            "label=opsd.cluster={}",
            cluster.node(new_leader).status().await.unwrap().cluster_id
        ),
        "--format",
        "{{.Label \"opsd.run\"}}",
    ])
    .unwrap();
    assert!(runs.lines().all(|r| r == run_id), "containers of other runs: {runs}");
    assert_eq!(outputs["machines"].as_array().map(Vec::len), Some(3), "{outputs:#}");
    assert_eq!(outputs["checks"]["passed"], json!(true), "{outputs:#}");
}
