//! Five voters survive losing two (a majority remains: writes go on). Losing a
//! third leaves no quorum: writes fail with a clear error in bounded time
//! instead of hanging, the survivors keep running and answering, and once a
//! node comes back writes succeed again.

use std::time::{Duration, Instant};

use opsd_tests::{client, Cluster, Options, FORM_TIMEOUT};
use tonic::Code;

/// The bound on a write without quorum: far above the daemon's write timeout
/// (5 s by default); the point is that it returns at all.
const NO_HANG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn five_nodes_lose_two_then_three() {
    let cluster = Cluster::start(5, Options::default()).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers().await;
    assert_eq!(followers.len(), 4);

    // Lose two followers: three of five voters remain, a majority.
    for &f in &followers[..2] {
        cluster.node(f).kill9();
        eprintln!("killed {} with SIGKILL", cluster.node(f).name());
    }
    let alive = cluster.serving();
    let mut acked = Vec::new();
    for (n, &via) in alive.iter().cycle().take(30).enumerate() {
        let key = format!("quorum/{n:03}");
        let put = cluster
            .put(via, &key, "kept")
            .await
            .unwrap_or_else(|e| panic!("write through {} with 3 of 5 voters up: {e}", cluster.node(via).name()));
        acked.push((key, put.revision));
    }
    assert_eq!(
        cluster.leader().await,
        leader,
        "losing two followers should not move the leader"
    );

    // Lose a third voter, a follower: the leader is still up but two of five
    // voters are no quorum. Writes through the leader (which cannot commit) and
    // through the other survivor (forwarded) must fail, not hang.
    cluster.node(followers[2]).kill9();
    eprintln!(
        "killed {} with SIGKILL: 2 of 5 voters remain, one of them the old leader",
        cluster.node(followers[2]).name()
    );
    let survivors = cluster.serving();
    assert_eq!(survivors, {
        let mut v = vec![leader, followers[3]];
        v.sort();
        v
    });
    for &s in &survivors {
        expect_no_quorum(&cluster, s, &acked[0]).await;
    }
    survivors_are_healthy(&cluster, &survivors).await;

    // Lose the old leader too: the last survivor knows no leader at all.
    cluster.node(leader).kill9();
    eprintln!(
        "killed the old leader {} with SIGKILL: 1 of 5 voters remains",
        cluster.node(leader).name()
    );
    expect_no_quorum(&cluster, followers[3], &acked[0]).await;
    survivors_are_healthy(&cluster, &[followers[3]]).await;

    // Two voters back: three of five, a quorum again; writes succeed and nothing acknowledged was lost.
    let restarted = Instant::now();
    for &back in &followers[..2] {
        cluster.node(back).restart();
    }
    for &back in &followers[..2] {
        cluster.node(back).wait_ready(FORM_TIMEOUT).await;
    }
    let new_leader = cluster.wait_for_leader(&[], FORM_TIMEOUT).await;
    let put = cluster
        .put(followers[3], "quorum/regained", "yes")
        .await
        .expect("a write once quorum is back");
    eprintln!(
        "TIMING quorum regained: {} and {} restarted -> leader {} -> write acknowledged {:?}",
        cluster.node(followers[0]).name(),
        cluster.node(followers[1]).name(),
        cluster.node(new_leader).name(),
        restarted.elapsed()
    );
    for (key, revision) in &acked {
        let got = cluster
            .get(new_leader, key, false)
            .await
            .expect("an acknowledged write");
        assert_eq!(got.setting.expect("a setting").mod_revision, *revision, "{key}");
    }
    let lost = cluster
        .get(new_leader, "quorum/regained", false)
        .await
        .expect("the new write");
    assert_eq!(lost.setting.expect("a setting").mod_revision, put.revision);
}

/// A write and a linearizable read through node `s` fail within [`NO_HANG`]
/// with UNAVAILABLE or DEADLINE_EXCEEDED and a message; a stale read of an
/// acknowledged write still answers.
async fn expect_no_quorum(cluster: &Cluster, s: usize, acked: &(String, u64)) {
    let name = cluster.node(s).name();
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        NO_HANG,
        client::put_once(&cluster.node(s).client_addr(), "quorum/lost", "x"),
    )
    .await
    .unwrap_or_else(|_| panic!("a write through {name} without quorum hung for {NO_HANG:?}"));
    let took = started.elapsed();
    let err = match outcome {
        Ok(r) => panic!("a write through {name} succeeded without quorum: {r:?}"),
        Err(e) => e,
    };
    eprintln!(
        "TIMING no-quorum write through {name} failed after {took:?}: {}",
        client::describe(&err)
    );
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "a write through {name} without quorum should fail UNAVAILABLE or DEADLINE_EXCEEDED, got {}",
        client::describe(&err)
    );
    assert!(!err.message().trim().is_empty(), "the error carries no message");

    let read = tokio::time::timeout(NO_HANG, async {
        let mut c = cluster.node(s).client();
        c.settings
            .get(opsd_tests::api::GetRequest {
                key: acked.0.clone(),
                stale: false,
                ..Default::default()
            })
            .await
    })
    .await
    .unwrap_or_else(|_| panic!("a linearizable read through {name} without quorum hung"));
    let err = read.expect_err("a linearizable read succeeded without quorum");
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "linearizable read through {name} without quorum: {}",
        client::describe(&err)
    );
    let got = client::get(&cluster.node(s).client_addr(), &acked.0, true)
        .await
        .unwrap_or_else(|e| panic!("a stale read through {name} without quorum: {e}"));
    assert_eq!(got.setting.expect("a setting").mod_revision, acked.1);
}

/// The nodes did not crash: still running, still answering Status, no panic in their logs.
async fn survivors_are_healthy(cluster: &Cluster, survivors: &[usize]) {
    for &s in survivors {
        let node = cluster.node(s);
        assert!(node.is_running(), "{} exited:\n{}", node.name(), node.log_tail(40));
        node.status()
            .await
            .unwrap_or_else(|e| panic!("{} status without quorum: {e}", node.name()));
        assert!(
            !node.log().contains("panicked"),
            "{} panicked:\n{}",
            node.name(),
            node.log_tail(60)
        );
    }
}
