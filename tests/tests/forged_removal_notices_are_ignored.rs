//! `Peer.Removed` is a hint, not an order: anyone who can reach a node's peer
//! port may send it. A 3-node cluster gets forged notices naming each node,
//! "from" a stranger and "from" each of its members, several times: every
//! node checks with its own leader, logs that it ignored them, and keeps
//! serving; writes commit through every node and the membership is
//! unchanged. A message claiming to come from the receiving node itself is
//! refused, and so is a removal forwarded to the leader by a node that is not
//! a member. Last, the same forwarded removal sent under a member's id does
//! remove a node (mutual TLS authenticates a member of the cluster, not
//! which member: the messages here are sent with node 1's certificate): the
//! removed node learns it from the leader's notice, checks it, and refuses
//! writes.
//!
//! The messages are built by hand the way the cluster crate encodes them
//! (bincode: a u64 as 8 little-endian bytes, an enum variant as a u32 index).

use std::time::Duration;

use opsd_proto::peer::peer_client::PeerClient;
use opsd_proto::peer::PeerMessage;
use opsd_tests::{client, Cluster, Options, FORM_TIMEOUT};
use tonic::Code;

/// A node id no member has.
const STRANGER: u64 = 4_242_424_242;

/// The index of `RemoveNode` in the cluster crate's `LeaderRequest`.
const REMOVE_NODE: u32 = 3;

/// The certificate the forged messages are sent with: a member's (the peer
/// port takes no other).
static IDENTITY: std::sync::OnceLock<opsd_proto::transport::Tls> = std::sync::OnceLock::new();

async fn peer_call(peer_addr: &str, method: &str, msg: PeerMessage) -> Result<PeerMessage, tonic::Status> {
    let tls = IDENTITY.get().map(|t| t.client_config());
    let channel = opsd_proto::transport::endpoint(peer_addr, Duration::from_secs(2), tls)
        .expect("an endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to the peer port {peer_addr}: {e}"));
    let mut c = PeerClient::new(channel);
    let answer = match method {
        "removed" => c.removed(msg).await,
        "leader" => c.leader(msg).await,
        other => panic!("no peer method {other}"),
    };
    answer.map(|r| r.into_inner())
}

fn removal_notice(cluster_id: &str, from: u64, target: u64) -> PeerMessage {
    PeerMessage {
        cluster_id: cluster_id.to_string(),
        from,
        data: target.to_le_bytes().to_vec(),
    }
}

fn forwarded_removal(cluster_id: &str, from: u64, target: u64) -> PeerMessage {
    let mut data = REMOVE_NODE.to_le_bytes().to_vec();
    data.extend(target.to_le_bytes());
    PeerMessage {
        cluster_id: cluster_id.to_string(),
        from,
        data,
    }
}

/// How many times node `i` logged that it ignored removal notices.
fn ignored_notices(cluster: &Cluster, i: usize) -> usize {
    cluster
        .node(i)
        .log()
        .matches("removal notice(s), the last from node")
        .count()
}

#[tokio::test]
async fn forged_removal_notices_are_ignored() {
    let cluster = Cluster::start(3, Options::default()).await;
    let dir = cluster.node(0).data_dir();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let _ = IDENTITY.set(opsd_proto::transport::Tls::new(
        read("ca.pem"),
        read("node.pem"),
        read("node.key"),
    ));
    let leader = cluster.leader().await;
    let status = cluster.node(leader).status().await.expect("leader status");
    let cluster_id = status.cluster_id.clone();
    let ids: Vec<u64> = (0..3).map(|i| cluster.node(i).id()).collect();
    let members_before: Vec<u64> = status.members.iter().map(|m| m.id).collect();
    cluster.put(leader, "forged/before", "1").await.expect("a write before");

    // Notices naming each node, from a stranger and from each other member, three times over.
    for (i, &target) in ids.iter().enumerate() {
        let senders: Vec<u64> = std::iter::once(STRANGER)
            .chain(ids.iter().copied().filter(|&id| id != target))
            .collect();
        for _ in 0..3 {
            for &from in &senders {
                peer_call(
                    &cluster.node(i).peer_addr(),
                    "removed",
                    removal_notice(&cluster_id, from, target),
                )
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: Removed from {from}: {}",
                        cluster.node(i).name(),
                        client::describe(&e)
                    )
                });
            }
        }
    }
    // Each node says, once its check with the leader is done, that it ignored them.
    for i in 0..3 {
        let (_, took) = opsd_tests::wait_until(
            &format!("{} to log that it ignored the notices", cluster.node(i).name()),
            FORM_TIMEOUT,
            Duration::from_millis(100),
            || async {
                let n = ignored_notices(&cluster, i);
                if n > 0 {
                    Ok(n)
                } else {
                    Err(cluster.node(i).log_tail(5))
                }
            },
        )
        .await;
        eprintln!(
            "{} checked the forged notices with its leader in {took:?}",
            cluster.node(i).name()
        );
    }
    let warned = cluster.node(0).log();
    let line = warned
        .lines()
        .find(|l| l.contains("removal notice(s), the last from node"))
        .expect("a warning");
    assert!(line.contains("WARN"), "not a warning: {line}");
    assert!(line.contains("the leader counts this node as a member"), "{line}");
    eprintln!("n1 logged: {line}");

    // A notice "from" the node itself, and a notice for another node, change nothing either.
    let err = peer_call(
        &cluster.node(0).peer_addr(),
        "removed",
        removal_notice(&cluster_id, ids[0], ids[0]),
    )
    .await
    .expect_err("a message claiming to come from the node itself was accepted");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", client::describe(&err));
    assert!(err.message().contains("from"), "{}", client::describe(&err));
    peer_call(
        &cluster.node(0).peer_addr(),
        "removed",
        removal_notice(&cluster_id, STRANGER, ids[1]),
    )
    .await
    .expect("a notice for another node is answered");

    // A removal forwarded to the leader by a stranger is refused.
    let answer = peer_call(
        &cluster.node(leader).peer_addr(),
        "leader",
        forwarded_removal(&cluster_id, STRANGER, ids[(leader + 1) % 3]),
    )
    .await
    .expect("the leader answers a forwarded request (with its refusal inside)");
    // bincode of Result::Err is variant 1.
    assert_eq!(
        answer.data.get(..4),
        Some(&1u32.to_le_bytes()[..]),
        "the leader did not refuse a removal forwarded by a stranger"
    );

    // Every node still serves: its role, a write through it, and the same members everywhere.
    for i in 0..3 {
        let s = cluster.node(i).status().await.expect("status");
        assert_ne!(s.role, "removed", "{} took a forged notice", cluster.node(i).name());
        let mut members: Vec<u64> = s.members.iter().map(|m| m.id).collect();
        members.sort();
        let mut want = members_before.clone();
        want.sort();
        assert_eq!(members, want, "{} lists other members", cluster.node(i).name());
        let put = cluster
            .put(i, &format!("forged/after/{i}"), "1")
            .await
            .unwrap_or_else(|e| panic!("a write through {}: {}", cluster.node(i).name(), client::describe(&e)));
        eprintln!(
            "a write through {} committed at revision {}",
            cluster.node(i).name(),
            put.revision
        );
    }
    cluster.wait_membership(&[], 3, 0, FORM_TIMEOUT).await;

    // The same forwarded removal under a member's id removes the node, and the
    // removed node, told by the leader, checks it and stops serving.
    let follower = (leader + 1) % 3;
    let victim = (leader + 2) % 3;
    let answer = peer_call(
        &cluster.node(leader).peer_addr(),
        "leader",
        forwarded_removal(&cluster_id, ids[follower], ids[victim]),
    )
    .await
    .expect("the leader answers a forwarded removal");
    assert_eq!(
        answer.data.get(..4),
        Some(&0u32.to_le_bytes()[..]),
        "a removal forwarded by a member was refused"
    );
    cluster.wait_membership(&[victim], 2, 0, FORM_TIMEOUT).await;
    // Its status is its own view (never forwarded): "removed" there comes from the notice.
    let (_, took) = opsd_tests::wait_until(
        "the removed node to take the leader's notice",
        FORM_TIMEOUT,
        Duration::from_millis(100),
        || async {
            match cluster.node(victim).status().await {
                Ok(s) if s.role == "removed" => Ok(()),
                Ok(s) => Err(format!("role {}", s.role)),
                Err(e) => Err(client::describe(&e)),
            }
        },
    )
    .await;
    eprintln!("{} took the leader's notice in {took:?}", cluster.node(victim).name());
    let err = client::put_once(&cluster.node(victim).client_addr(), "forged/from-removed", "x")
        .await
        .expect_err("the removed node accepted a write");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", client::describe(&err));
    assert!(err.message().contains("removed"), "{}", client::describe(&err));
}
