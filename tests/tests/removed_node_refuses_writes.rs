//! A follower is removed through the API: the others shrink their membership
//! and carry on; the removed node, still running, refuses requests saying it
//! was removed, and refuses to start again from its data dir. Removing a node
//! id that is not a member is NOT_FOUND and changes nothing.

use std::time::Duration;

use opsd_tests::api::{GetRequest, PutRequest, RemoveRequest};
use opsd_tests::{client, Cluster, Options, FORM_TIMEOUT};
use tonic::Code;

#[tokio::test]
async fn removed_node_refuses_writes() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers().await;
    let (victim, other) = (followers[0], followers[1]);
    let victim_id = cluster.node(victim).id();
    cluster
        .put(leader, "members/before", "3")
        .await
        .expect("write with three members");

    // Remove it through the other follower (forwarded to the leader).
    let mut c = cluster.node(other).client();
    let removed = c
        .cluster
        .remove(RemoveRequest { node_id: victim_id })
        .await
        .unwrap_or_else(|e| panic!("removing {}: {}", cluster.node(victim).name(), client::describe(&e)))
        .into_inner();
    assert!(
        removed.members.iter().all(|m| m.id != victim_id) && removed.members.len() == 2,
        "Remove answered members {:?}",
        removed.members
    );
    eprintln!("removed {} (id {victim_id})", cluster.node(victim).name());

    // The remaining two agree: two voters, the removed node not among them.
    cluster.wait_membership(&[victim], 2, 0, FORM_TIMEOUT).await;
    for i in [leader, other] {
        let s = cluster.node(i).status().await.expect("status");
        assert!(
            s.members.iter().all(|m| m.id != victim_id),
            "{} still lists it: {:?}",
            cluster.node(i).name(),
            s.members
        );
    }

    // The removed node refuses writes and reads with FAILED_PRECONDITION "... removed".
    let (err, took) = opsd_tests::wait_until(
        "the removed node to refuse writes",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let mut c = cluster.node(victim).client();
            match c
                .settings
                .put(PutRequest {
                    key: "members/from-removed".into(),
                    value: "x".into(),
                    expected_revision: None,
                    ..Default::default()
                })
                .await
            {
                Err(e) if e.code() == Code::FailedPrecondition => Ok(e),
                Err(e) => Err(client::describe(&e)),
                Ok(r) => panic!("the removed node accepted a write: {:?}", r.into_inner()),
            }
        },
    )
    .await;
    eprintln!(
        "removed node refused a write ({took:?} after the removal): {}",
        client::describe(&err)
    );
    assert!(
        err.message().contains("removed"),
        "the refusal does not say why: {}",
        client::describe(&err)
    );
    let mut c = cluster.node(victim).client();
    let read = c
        .settings
        .get(GetRequest {
            key: "members/before".into(),
            stale: false,
            ..Default::default()
        })
        .await;
    let err = read.expect_err("the removed node served a linearizable read");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", client::describe(&err));
    assert!(err.message().contains("removed"), "{}", client::describe(&err));
    assert!(
        cluster.node(victim).is_running(),
        "the removed node is expected to keep running and refuse requests"
    );

    // Nothing it was sent was written.
    let missing = cluster
        .get(leader, "members/from-removed", false)
        .await
        .expect_err("a refused write was applied");
    assert_eq!(missing.code(), Code::NotFound, "{}", client::describe(&missing));

    // The rest carries on: writes through both remaining nodes.
    for (n, i) in [leader, other].into_iter().enumerate() {
        let put = cluster
            .put(i, &format!("members/after/{n}"), "2")
            .await
            .expect("write with two members");
        for j in [leader, other] {
            let got = cluster
                .get(j, &format!("members/after/{n}"), false)
                .await
                .expect("read with two members");
            assert_eq!(got.setting.expect("a setting").mod_revision, put.revision);
        }
    }

    // Removing a node id that is not a member: NOT_FOUND, membership unchanged.
    for unknown in [victim_id, 424_242] {
        let mut c = cluster.node(leader).client();
        let err = c
            .cluster
            .remove(RemoveRequest { node_id: unknown })
            .await
            .expect_err("removing a non-member succeeded");
        assert_eq!(
            err.code(),
            Code::NotFound,
            "removing {unknown}: {}",
            client::describe(&err)
        );
    }
    cluster.wait_membership(&[victim], 2, 0, FORM_TIMEOUT).await;

    // The removed node does not come back from its data dir.
    let exit = cluster.node(victim).terminate(Duration::from_secs(30)).await;
    eprintln!("removed node stopped on SIGTERM: {:?}", exit.status);
    cluster.node(victim).restart();
    let exit = cluster.node(victim).wait_exit(Duration::from_secs(30)).await;
    assert!(
        !exit.status.success(),
        "the removed node started again from its data dir:\n{}",
        exit.output
    );
    assert!(
        exit.output.contains("removed"),
        "the refusal to start does not say why:\n{}",
        exit.output
    );
    cluster.wait_membership(&[victim], 2, 0, FORM_TIMEOUT).await;
}
