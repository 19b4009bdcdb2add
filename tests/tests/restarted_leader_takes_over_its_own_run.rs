//! kill -9 of a single node while it executes a run, then a restart: the node
//! leads again (possibly in the same term) and must not take the run for one
//! it started itself in this life. It takes it over (attempt 2, recorded)
//! and drives it to its end once.

use std::time::Duration;

use opsd_tests::resources as res;
use opsd_tests::{wait_until, Cluster, Options, FORM_TIMEOUT};

const LONG: &str = r#"
kind = "long"
initial = "idle"
provider = "exec"

[states.idle]
on = { go = "working" }

[states.working]
work = true
run = '''
echo "attempt $OPSD_ATTEMPT"
sleep 2
echo "{\"attempt\": $OPSD_ATTEMPT}" > "$OPSD_OUTPUTS"
'''
next = "done"
fail = "idle"

[states.done]
on = { go = "working" }
"#;

#[tokio::test]
async fn restarted_leader_takes_over_its_own_run() {
    let cluster = Cluster::start(1, Options::default()).await;
    let node = cluster.node(0);
    let addr = node.client_addr();
    res::apply_kind(&addr, LONG).await.expect("apply the kind");
    res::create(&addr, "long", "task", serde_json::json!({}))
        .await
        .expect("create");
    let run = res::do_event(&addr, "long", "task", "go", &[], "restart test")
        .await
        .expect("go")
        .run
        .expect("a run");
    wait_until(
        "the step to start",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let lines = res::log_lines(&addr, &run.run_id).await.map_err(|e| e.to_string())?;
            lines
                .iter()
                .any(|l| l.contains("attempt 1"))
                .then_some(())
                .ok_or(format!("{lines:?}"))
        },
    )
    .await;

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
