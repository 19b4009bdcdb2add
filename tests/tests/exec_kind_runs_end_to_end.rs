//! A user kind with three work states, each a shell script run by the exec
//! provider: creation runs all three, outputs merge, the history records
//! every run with who asked and why; a failing step lands in its fail state,
//! `retry` recovers, and the stats count both.

use std::time::Duration;

use opsd_tests::resources::{self as res, PRINCIPAL};
use opsd_tests::{kinds, Cluster, Options};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn exec_kind_runs_end_to_end() {
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();

    let kind = res::apply_kind(&addr, kinds::THREE_STEP_APP)
        .await
        .expect("apply the kind");
    assert_eq!((kind.name.as_str(), kind.provider.as_str()), ("app", "exec"));

    // Creation runs the three work states, one run each.
    let created = res::create(&addr, "app", "web", serde_json::json!({"replicas": 2}))
        .await
        .expect("create");
    let first = created.run.expect("creation starts a run");
    assert_eq!((first.to.as_str(), first.outcome().label()), ("fetching", "running"));
    let web = res::wait_resting(&addr, "app", "web", WAIT).await;
    assert_eq!(web.state, "ready", "{web:?}");
    let outputs: serde_json::Value = opsd_tests::resources::json_of(web.outputs.as_ref());
    assert_eq!(outputs["fetched"], true);
    assert_eq!(outputs["version"], "1");
    assert!(
        outputs["built"].as_str().is_some_and(|r| r.starts_with('r')),
        "{outputs}"
    );

    let runs = res::history(&addr, "app", "web").await.unwrap();
    let chain: Vec<(&str, &str, &str)> = runs
        .iter()
        .map(|r| (r.from.as_str(), r.to.as_str(), r.outcome().label()))
        .collect();
    assert_eq!(
        chain,
        vec![
            ("", "fetching", "succeeded"),
            ("fetching", "building", "succeeded"),
            ("building", "deploying", "succeeded"),
        ]
    );
    for r in &runs {
        assert_eq!(
            (r.event.as_str(), r.principal.as_str(), r.reason.as_str()),
            ("create", PRINCIPAL, "create web")
        );
        assert_eq!((r.attempt, r.node_id), (1, cluster.node(0).id()));
        let ms =
            |t: Option<&opsd_proto::prost_types::Timestamp>| opsd_proto::time::timestamp_ms("t", t.unwrap()).unwrap();
        assert!(ms(r.finished_at.as_ref()) >= ms(r.started_at.as_ref()));
    }
    let lines = res::log_lines(&addr, &runs[0].run_id).await.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("fetching web for create") && l.contains("attempt 1")),
        "{lines:?}"
    );
    let lines = res::log_lines(&addr, &runs[1].run_id).await.unwrap();
    assert!(
        lines.iter().any(|l| l.contains("building web with 2 replicas")),
        "{lines:?}"
    );

    // An event the state does not take is refused with the ones it does.
    let err = res::do_event(&addr, "app", "web", "retry", &[], "").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("deploy, destroy"), "{}", err.message());

    // A failing step lands in the fail state with the script's error.
    let change = res::do_event(&addr, "app", "web", "deploy", &[("version", "bad")], "release bad")
        .await
        .expect("deploy");
    let bad = change.run.expect("deploy starts a run");
    let web = res::wait_resting(&addr, "app", "web", WAIT).await;
    assert_eq!(web.state, "failed");
    let bad = res::run(&addr, &bad.run_id).await.unwrap();
    assert_eq!(bad.outcome().label(), "failed");
    assert!(bad.error.contains("status 3"), "{}", bad.error);
    assert_eq!(
        (bad.reason.as_str(), bad.args["version"].as_str()),
        ("release bad", "bad")
    );
    let lines = res::log_lines(&addr, &bad.run_id).await.unwrap();
    assert!(
        lines.iter().any(|l| l.contains("cannot deploy version bad")),
        "{lines:?}"
    );

    // retry recovers.
    res::do_event(&addr, "app", "web", "retry", &[("version", "3")], "try 3")
        .await
        .expect("retry");
    let web = res::wait_resting(&addr, "app", "web", WAIT).await;
    assert_eq!(web.state, "ready");
    let outputs: serde_json::Value = opsd_tests::resources::json_of(web.outputs.as_ref());
    // The script reads args by the one rule of --set and --arg: "3" is the number 3.
    assert_eq!(outputs["version"], 3);

    // The stats count both.
    let stats = res::stats(&addr, "app").await.unwrap();
    let of = |from: &str, to: &str| {
        stats
            .iter()
            .find(|t| t.from == from && t.to == to)
            .unwrap_or_else(|| panic!("no stats for {from} -> {to}: {stats:?}"))
    };
    let failed = of("ready", "deploying");
    assert_eq!((failed.count, failed.failed, failed.succeeded), (1, 1, 0));
    assert!(failed.fail_mean_ms > 0.0);
    let recovered = of("failed", "deploying");
    assert_eq!((recovered.count, recovered.succeeded), (1, 1));
    assert!(recovered.mean_ms > 0.0 && recovered.p50_ms > 0.0 && recovered.max_ms >= recovered.p50_ms);

    // Delete goes through the destroy path, then removes the record; the
    // history stays.
    let del = res::delete(&addr, "app", "web").await.expect("delete");
    assert!(!del.deleted, "a ready resource is destroyed first");
    let web = res::wait_resting(&addr, "app", "web", WAIT).await;
    assert_eq!(web.state, "destroyed");
    let del = res::delete(&addr, "app", "web").await.expect("delete");
    assert!(del.deleted);
    let err = res::get(&addr, "app", "web").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(res::history(&addr, "app", "web").await.unwrap().len(), 6);
}
