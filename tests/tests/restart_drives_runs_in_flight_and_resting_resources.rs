//! A node holding resources at rest and one run in flight is killed and
//! restarted. Actors start lazily: at start-up only the resource with a run
//! in flight gets one, and it takes the run over (attempt 2) and drives it
//! to its end; every resource at rest still takes events, a second event
//! right after the first, a refused delete and a cancel, through actors
//! started when those requests come.

use std::time::Duration;

use opsd_tests::resources as res;
use opsd_tests::{kinds, Cluster, Options, FORM_TIMEOUT};
use tonic::Code;

const RESTING: usize = 40;

fn name(i: usize) -> String {
    format!("n{i:02}")
}

#[tokio::test]
async fn restart_drives_runs_in_flight_and_resting_resources() {
    let cluster = Cluster::start(1, Options::default()).await;
    let node = cluster.node(0);
    let addr = node.client_addr();
    res::apply_kind(&addr, kinds::NOOP).await.expect("apply the noop kind");
    for i in 0..RESTING {
        res::create(&addr, "noop", &name(i), serde_json::json!({}))
            .await
            .expect("create");
    }
    let run = res::start_long_step(&addr, "before the restart").await;

    node.kill9();
    node.restart();
    cluster.wait_for_leader(&[], FORM_TIMEOUT).await;

    // The run in flight is picked up without any request about its resource.
    let task = res::wait_resting(&addr, "long", "task", Duration::from_secs(60)).await;
    assert_eq!(task.state, "done");
    let ended = res::run(&addr, &run.run_id).await.unwrap();
    assert_eq!((ended.outcome().label(), ended.attempt), ("succeeded", 2), "{ended:?}");

    // Every resource at rest takes an event, and another one once it rests again.
    for round in 1..=2 {
        let tasks: Vec<_> = (0..RESTING)
            .map(|i| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    res::do_event(&addr, "noop", &name(i), "go", &[], "after the restart")
                        .await
                        .map_err(|e| format!("go {}: {e}", name(i)))?;
                    let r = res::wait_resting(&addr, "noop", &name(i), Duration::from_secs(60)).await;
                    (r.state == "done")
                        .then_some(())
                        .ok_or(format!("{} rests in {}", name(i), r.state))
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    for i in 0..RESTING {
        let history = res::history(&addr, "noop", &name(i)).await.unwrap();
        let go: Vec<&str> = history
            .iter()
            .filter(|r| r.event == "go")
            .map(|r| r.outcome().label())
            .collect();
        assert_eq!(go, vec!["succeeded", "succeeded"], "{}: {history:?}", name(i));
    }

    // A delete the state refuses is refused by the resource's actor, as before.
    let refused = res::delete(&addr, "noop", &name(0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("no destroy path"), "{refused:?}");

    // A new run is cancelled through its actor.
    let again = res::do_event(&addr, "long", "task", "go", &[], "to cancel")
        .await
        .expect("go")
        .run
        .expect("a run");
    let cancelled = res::cancel(&addr, &again.run_id).await.expect("cancel");
    assert_eq!(cancelled.run_id, again.run_id);
    let task = res::wait_resting(&addr, "long", "task", Duration::from_secs(60)).await;
    let ended = res::run(&addr, &again.run_id).await.unwrap();
    assert_eq!(ended.outcome().label(), "cancelled", "{ended:?} {task:?}");
}
