//! The README's resource tour through the real `opsctl`: define a kind from a
//! file, create a resource and wait for it, do an event that fails (`--wait`
//! exits 1 naming the run), cancel a long step, read the history, a run, its
//! log and the stats — every JSON document in the shape DESIGN.md promises.

use std::time::Duration;

use opsd_tests::{kinds, wait_until, Cluster, Opsctl, Options};
use serde_json::Value;

const RUN_KEYS: &[&str] = &[
    "run_id",
    "kind",
    "name",
    "event",
    "from",
    "to",
    "outcome",
    "attempt",
    "node_id",
    "principal",
    "reason",
    "started_at",
    "finished_at",
    "duration_ms",
    "error",
    "outputs",
];

fn assert_run_shape(run: &Value) {
    for k in RUN_KEYS {
        assert!(run.get(k).is_some(), "run JSON has {k}: {run}");
    }
}

#[tokio::test]
async fn opsctl_drives_resources() {
    let cluster = Cluster::start(1, Options::default()).await;
    let opsctl = Opsctl {
        addr: cluster.node(0).client_addr(),
    };
    let dir = tempfile::tempdir().unwrap();
    let kind_file = kinds::path("deployable_app.toml");
    let spec_file = dir.path().join("web.json");
    std::fs::write(&spec_file, r#"{"replicas": 1, "region": "eu"}"#).unwrap();

    let kind = opsctl.json(&["kinds", "apply", kind_file.to_str().unwrap()]).await;
    assert_eq!(kind["name"], "app");
    let kinds = opsctl.json(&["kinds", "ls"]).await;
    let names: Vec<&str> = kinds
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert!(
        names.contains(&"app") && names.contains(&"image") && names.contains(&"cluster"),
        "{names:?}"
    );

    // create -f + --set, waiting for the chain.
    let spec_arg = spec_file.to_str().unwrap();
    let run = opsctl
        .json(&[
            "create",
            "app",
            "web",
            "-f",
            spec_arg,
            "--set",
            "replicas=3",
            "--set",
            "db.pool=5",
            "--wait",
        ])
        .await;
    assert_run_shape(&run);
    assert_eq!(
        (run["outcome"].as_str(), run["to"].as_str()),
        (Some("succeeded"), Some("building"))
    );
    let web = opsctl.json(&["get", "app/web"]).await;
    for k in ["kind", "name", "state", "version", "spec", "outputs"] {
        assert!(web.get(k).is_some(), "get JSON has {k}: {web}");
    }
    assert_eq!(web["state"], "ready");
    assert_eq!(web["spec"]["replicas"], 3);
    assert_eq!(web["spec"]["region"], "eu");
    assert_eq!(web["spec"]["db"]["pool"], 5);
    assert!(web["outputs"]["image"].as_str().unwrap().starts_with("web:r"), "{web}");

    // A failing deploy: --wait exits 1 and names the run.
    let err = opsctl
        .fails(
            &[
                "do",
                "app/web",
                "deploy",
                "--arg",
                "version=bad",
                "--reason",
                "try bad",
                "--wait",
            ],
            1,
        )
        .await;
    assert!(err.contains("failed") && err.contains("status 4"), "{err}");
    let err = opsctl.fails(&["do", "app/web", "deploy"], 1).await;
    assert!(err.contains("retry, destroy") || err.contains("retry"), "{err}");

    // retry, then a long deploy cancelled while it runs.
    opsctl.json(&["do", "app/web", "retry", "--wait"]).await;
    let long = opsctl
        .json(&[
            "do",
            "app/web",
            "deploy",
            "--arg",
            "version=2",
            "--arg",
            "sleep=60",
            "--reason",
            "release 2",
        ])
        .await;
    let run_id = long["run_id"].as_str().unwrap().to_string();
    assert_eq!(long["outcome"], "running");
    wait_until(
        "the deploy to log",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let out = opsctl.run(&["logs", &run_id]).await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("deploying 2").then_some(()).ok_or(text)
        },
    )
    .await;
    let cancelled = opsctl.json(&["cancel", &run_id]).await;
    assert_eq!(cancelled["cancel_requested"], true);
    let (run, _) = wait_until(
        "the run to end",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let run = opsctl.json(&["run", &run_id]).await;
            (run["outcome"] != "running")
                .then_some(run.clone())
                .ok_or(run.to_string())
        },
    )
    .await;
    assert_run_shape(&run);
    assert_eq!(run["outcome"], "cancelled");
    assert_eq!(opsctl.json(&["get", "app/web"]).await["state"], "ready");

    // The history: every run, who and why.
    let history = opsctl.json(&["history", "app/web"]).await;
    let runs = history.as_array().unwrap();
    let events: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        vec![
            ("create", "succeeded"),
            ("deploy", "failed"),
            ("retry", "succeeded"),
            ("deploy", "cancelled")
        ]
    );
    for r in runs {
        assert_run_shape(r);
        assert!(!r["principal"].as_str().unwrap().is_empty());
    }
    assert_eq!(runs[1]["reason"], "try bad");
    let all = opsctl.json(&["runs", "--outcome", "failed", "--since", "1h"]).await;
    assert_eq!(all.as_array().unwrap().len(), 1);

    // Stats, per transition.
    let stats = opsctl.json(&["stats", "--kind", "app"]).await;
    let deploy = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["from"] == "ready" && t["to"] == "deploying")
        .unwrap_or_else(|| panic!("{stats}"));
    for k in [
        "kind",
        "from",
        "to",
        "count",
        "succeeded",
        "failed",
        "cancelled",
        "mean_ms",
        "p50_ms",
        "p95_ms",
        "max_ms",
        "fail_mean_ms",
    ] {
        assert!(deploy.get(k).is_some(), "stats JSON has {k}: {deploy}");
    }
    assert_eq!(
        (
            deploy["count"].as_u64(),
            deploy["failed"].as_u64(),
            deploy["cancelled"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );

    // Delete: through destroy, then removed.
    opsctl.json(&["delete", "app/web", "--wait"]).await;
    let gone = opsctl.json(&["delete", "app/web"]).await;
    assert_eq!(gone["deleted"], true);
    let err = opsctl.fails(&["get", "app/web"], 1).await;
    assert!(err.contains("not found"), "{err}");
}
