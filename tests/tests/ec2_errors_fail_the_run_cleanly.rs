//! EC2 faults end the run with a clear error and leave nothing running:
//! a bad AMI fails with AWS's own code and message (from moto, which
//! validates AMIs as EC2 does), an endpoint that accepts connections and
//! never answers fails the step on its timeout, and a bad spec is refused
//! before anything is written. What is left is checked with EC2's own
//! `DescribeInstances`.

use std::time::Duration;

use opsd_tests::moto::{Moto, SilentEndpoint};
use opsd_tests::resources as res;
use opsd_tests::{Cluster, Options};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

/// The error of the last run of `kind/name`, and its log.
async fn last_failure(addr: &str, kind: &str, name: &str) -> (String, Vec<String>) {
    let history = res::history(addr, kind, name).await.expect("history");
    let run = history
        .iter()
        .rev()
        .find(|r| !r.error.is_empty())
        .unwrap_or_else(|| panic!("no failed run: {history:?}"));
    let lines = res::log_lines(addr, &run.run_id).await.expect("the run's log");
    (run.error.clone(), lines)
}

#[tokio::test]
async fn ec2_errors_fail_the_run_cleanly() {
    let Some(moto) = Moto::start("ec2_errors_fail_the_run_cleanly").await else {
        return;
    };
    let silent = SilentEndpoint::start().await;
    let env = Moto::node_env(&moto.endpoint());
    let cluster = Cluster::start_placed(1, Options::default(), move |c| c.env.extend(env.clone())).await;
    let addr = cluster.node(0).client_addr();

    // A bad spec: refused at create, naming the field; nothing is written.
    let e = res::create(
        &addr,
        "cluster",
        "bad",
        json!({"provider": "ec2", "image": "x", "size": 0}),
    )
    .await
    .expect_err("size 0 is refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("spec.size"), "{e:?}");
    let e = res::create(&addr, "image", "bad", json!({"provider": "ec2", "source": "./web"}))
        .await
        .expect_err("a directory is not an AMI");
    assert!(e.message().contains("spec.source"), "{e:?}");
    assert_eq!(
        res::get(&addr, "image", "bad").await.map_err(|s| s.code()).err(),
        Some(tonic::Code::NotFound)
    );

    // A bad AMI: RunInstances fails with AWS's code and message.
    res::create(
        &addr,
        "image",
        "ghost",
        json!({"provider": "ec2", "source": "ami-0000dead"}),
    )
    .await
    .expect("create");
    let ghost = res::wait_resting(&addr, "image", "ghost", WAIT).await;
    assert_eq!(ghost.state, "failed");
    let (error, lines) = last_failure(&addr, "image", "ghost").await;
    assert!(error.starts_with("RunInstances: InvalidAMIID.NotFound: "), "{error}");
    assert!(error.contains("ami-0000dead"), "{error}");
    assert!(lines.iter().any(|l| l.contains("InvalidAMIID.NotFound")), "{lines:#?}");
    assert_eq!(
        moto.live_instances().await,
        Vec::<Value>::new(),
        "instances left running"
    );
    res::do_event(&addr, "image", "ghost", "destroy", &[], "test over")
        .await
        .expect("destroy");
    assert_eq!(
        res::wait_resting(&addr, "image", "ghost", WAIT).await.state,
        "destroyed"
    );

    // An endpoint that never answers: the step fails on its timeout.
    let env = Moto::node_env(&silent.endpoint());
    let hung = Cluster::start_placed(1, Options::default(), move |c| c.env.extend(env.clone())).await;
    let hung_addr = hung.node(0).client_addr();
    res::create(
        &hung_addr,
        "image",
        "stuck",
        json!({"provider": "ec2", "source": "ami-0123abcd"}),
    )
    .await
    .expect("create");
    let stuck = res::wait_resting(&hung_addr, "image", "stuck", WAIT).await;
    assert_eq!(stuck.state, "failed");
    let (error, _) = last_failure(&hung_addr, "image", "stuck").await;
    assert!(error.contains("did not answer in time"), "{error}");
    assert!(error.contains("OPSD_EC2_ATTEMPT_TIMEOUT"), "{error}");
}
