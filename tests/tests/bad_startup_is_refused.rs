//! opsd refuses to start, with a non-zero exit and a message saying why, when
//! starting would damage data or a cluster: a data dir already in use, a data
//! dir of a format it does not understand, a data dir of another cluster asked
//! to join this one, and --join addresses that never answer (after retrying for
//! --join-timeout-ms). None of these changes the running cluster. SIGTERM, by
//! contrast, is a clean exit 0.

use std::time::Duration;

use opsd_tests::api::{JoinRequest, MembersRequest};
use opsd_tests::{client, Cluster, Exit, Node, NodeConfig, Options};
use tonic::Code;

/// How long a refused start may take before the test calls it a hang.
const EXIT_BOUND: Duration = Duration::from_secs(30);

async fn member_ids(cluster: &Cluster) -> Vec<u64> {
    let mut c = cluster.node(0).client();
    let mut ids: Vec<u64> = c
        .cluster
        .members(MembersRequest {})
        .await
        .expect("members")
        .into_inner()
        .members
        .iter()
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids
}

/// Waits for `node` to exit, which must be a refusal (a non-zero exit);
/// `what` names the start. Returns the exit, to check what it says.
async fn refused(node: &Node, what: &str) -> Exit {
    let exit = node.wait_exit(EXIT_BOUND).await;
    eprintln!("{what}: {:?} after {:?}", exit.status, exit.ran_for);
    assert!(!exit.status.success(), "opsd started: {what}:\n{}", exit.output);
    exit
}

/// Asserts a refusal's `output` contains `needle`; `what` says what it
/// should do ("name the address").
fn assert_says(output: &str, needle: &str, what: &str) {
    assert!(output.contains(needle), "the refusal does not {what}:\n{output}");
}

/// Asserts a SIGTERM ended the node with exit 0.
fn assert_clean_exit(exit: Exit) {
    assert!(
        exit.status.success(),
        "SIGTERM should exit 0, got {:?}:\n{}",
        exit.status,
        exit.output
    );
}

#[tokio::test]
async fn bad_startup_is_refused() {
    let cluster = Cluster::start(1, Options::default()).await;
    let member = cluster.node(0);
    cluster.put(0, "startup/kept", "yes").await.expect("a write");
    let members = member_ids(&cluster).await;
    assert_eq!(members, vec![member.id()]);

    // 1. A second opsd on a data dir in use.
    let mut config = NodeConfig::new("second-on-same-dir", cluster.dir(), Options::default());
    config.data_dir = member.data_dir().to_path_buf();
    let exit = refused(&Node::spawn(config), "a second opsd on a data dir in use").await;
    let out = exit.output.to_lowercase();
    assert!(
        out.contains("lock") || out.contains("in use"),
        "the refusal does not say the data dir is in use:\n{}",
        exit.output
    );
    let data_dir = member.data_dir().display().to_string().to_lowercase();
    assert_says(&out, &data_dir, "name the data dir");
    let got = cluster
        .get(0, "startup/kept", false)
        .await
        .expect("the first opsd still serves");
    assert_eq!(got.setting.expect("a setting").value, "yes");

    // 2. A data dir of an unknown format version: refused, and left as it was.
    let config = NodeConfig::new("future-format", cluster.dir(), Options::default());
    std::fs::create_dir_all(&config.data_dir).expect("creating a data dir");
    let node_json = config.data_dir.join("node.json");
    let future = r#"{"format_version":99,"node_id":12345,"cluster_id":"from-the-future"}"#;
    std::fs::write(&node_json, future).expect("writing node.json");
    let node = Node::spawn(config);
    let exit = refused(&node, "a data dir of format_version 99").await;
    assert_says(
        &exit.output.to_lowercase(),
        "format version",
        "mention the format version",
    );
    assert_says(&exit.output, "99", "say which version it found");
    assert_eq!(
        std::fs::read_to_string(&node_json).expect("node.json"),
        future,
        "opsd rewrote a data dir it cannot read"
    );
    assert!(
        !node.data_dir().join("db").exists(),
        "opsd created a database in a data dir it cannot read"
    );

    // 3. A node of another cluster, asked to join this one.
    let foreign_config = NodeConfig::new("foreign", cluster.dir(), Options::default());
    let foreign = Node::spawn(foreign_config.clone());
    let foreign_status = foreign.wait_ready(Duration::from_secs(60)).await;
    assert_ne!(
        foreign_status.cluster_id,
        member.status().await.expect("status").cluster_id
    );
    // Directly through the API: refused, FAILED_PRECONDITION.
    let mut c = member.client();
    let err = c
        .cluster
        .join(JoinRequest {
            node_id: foreign_status.node_id,
            addr: foreign.client_addr(),
            peer_addr: foreign.peer_addr(),
            cluster_id: foreign_status.cluster_id.clone(),
            join_token: String::new(),
        })
        .await
        .expect_err("a node of another cluster was let in");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", client::describe(&err));
    assert!(err.message().contains("cluster"), "{}", client::describe(&err));
    // SIGTERM stops it cleanly.
    assert_clean_exit(foreign.terminate(Duration::from_secs(30)).await);
    // Restarted from its own data dir with --join to this cluster: refused.
    let mut config = foreign_config;
    config.join = vec![member.client_addr()];
    drop(foreign);
    let exit = refused(&Node::spawn(config), "a data dir of another cluster with --join").await;
    assert_says(&exit.output, "cluster", "mention the cluster");
    assert_says(&exit.output, &foreign_status.cluster_id, "name the data dir's cluster");
    assert_eq!(
        member_ids(&cluster).await,
        members,
        "the refused node changed the membership"
    );

    // 4. --join to an address where nobody answers: retries, then gives up naming it.
    let nobody = opsd_tests::closed_address().to_string();
    let mut config = NodeConfig::new(
        "join-nobody",
        cluster.dir(),
        Options {
            join_timeout_ms: Some(3000),
            ..Options::default()
        },
    );
    config.join = vec![nobody.clone()];
    let what = format!("--join {nobody} (nobody there) with --join-timeout-ms 3000");
    let exit = refused(&Node::spawn(config), &what).await;
    assert_says(&exit.output, &nobody, "name the address");
    let gave_up_after = exit.ran_for;
    assert!(
        exit.status.code().is_some(),
        "killed by a signal rather than exiting: {:?}",
        exit.status
    );

    // The cluster is as it was, and the member exits 0 on SIGTERM.
    assert_eq!(member_ids(&cluster).await, members);
    let got = cluster.get(0, "startup/kept", false).await.expect("still serving");
    assert_eq!(got.setting.expect("a setting").value, "yes");
    assert_clean_exit(member.terminate(Duration::from_secs(30)).await);

    // Last, so the checks above run even if this one fails: it kept retrying
    // for (about) the join timeout, not giving up early.
    assert!(
        gave_up_after >= Duration::from_millis(2500),
        "with --join-timeout-ms 3000 opsd gave up after {gave_up_after:?}: it should retry for the whole join timeout"
    );
}
