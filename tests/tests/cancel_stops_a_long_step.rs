//! Cancelling a long step stops it promptly: the run ends `cancelled` within
//! a second, its whole process group is gone, and the resource moves to the
//! state's cancel target. A step that hangs past its state's timeout fails
//! with a timeout error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;
use opsd_tests::resources as res;
use opsd_tests::{kinds, wait_until, Cluster, Options};
use tonic::Code;

fn group_alive(pgid: i32) -> bool {
    kill(Pid::from_raw(-pgid), None).is_ok()
}

#[tokio::test]
async fn cancel_stops_a_long_step() {
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    res::apply_kind(&addr, kinds::SLOW_AND_HANGING)
        .await
        .expect("apply the kind");
    res::create(&addr, "slow", "job", serde_json::json!({}))
        .await
        .expect("create");

    let run = res::do_event(&addr, "slow", "job", "work", &[], "long job")
        .await
        .expect("work")
        .run
        .expect("a run");
    // The step writes its process group id in its working directory.
    let pgid_file: PathBuf = cluster
        .node(0)
        .data_dir()
        .join("work")
        .join(format!("{}-1", run.run_id))
        .join("pgid");
    let (pgid, _) = wait_until(
        "the step to start",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let text = std::fs::read_to_string(&pgid_file).map_err(|e| e.to_string())?;
            text.trim().parse::<i32>().map_err(|e| e.to_string())
        },
    )
    .await;
    assert!(group_alive(pgid), "the step's process group runs");

    let asked = Instant::now();
    let cancelled = res::cancel(&addr, &run.run_id).await.expect("cancel");
    assert!(cancelled.cancel_requested);
    let (ended, took) = wait_until(
        "the run to end",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let r = res::run(&addr, &run.run_id).await.map_err(|e| e.to_string())?;
            if r.outcome().label() == "running" {
                return Err("still running".into());
            }
            Ok(r)
        },
    )
    .await;
    println!(
        "cancel → {} in {:?} (since the request: {:?})",
        ended.outcome().label(),
        took,
        asked.elapsed()
    );
    assert_eq!(ended.outcome().label(), "cancelled");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "cancelled within a second, took {:?}",
        asked.elapsed()
    );
    // Its processes die with the signal; the last ones are reaped by init
    // an instant later.
    wait_until(
        "the step's process group to be gone",
        Duration::from_secs(2),
        Duration::from_millis(20),
        || async { (!group_alive(pgid)).then_some(()).ok_or("alive".to_string()) },
    )
    .await;
    let job = res::wait_resting(&addr, "slow", "job", Duration::from_secs(10)).await;
    assert_eq!(job.state, "idle", "the cancel target");
    let lines = res::log_lines(&addr, &run.run_id).await.unwrap();
    assert!(lines.iter().any(|l| l.contains("cancel requested by")), "{lines:?}");

    // Cancelling an ended run is refused.
    let err = res::cancel(&addr, &run.run_id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = res::cancel(&addr, "r999999").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = res::cancel(&addr, "nonsense").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A hung step fails at its state's timeout.
    let run = res::do_event(&addr, "slow", "job", "hang", &[], "")
        .await
        .expect("hang")
        .run
        .expect("a run");
    let job = res::wait_resting(&addr, "slow", "job", Duration::from_secs(20)).await;
    assert_eq!(job.state, "broken");
    let run = res::run(&addr, &run.run_id).await.unwrap();
    assert_eq!(run.outcome().label(), "failed");
    assert!(run.error.contains("timed out after 2s"), "{}", run.error);
}
