//! `opsctl cluster members` on a three-node cluster, asked of a follower:
//! it shows the leader's view (one leader, the others followers, every one
//! reachable, lag known); after a follower is killed, the leader reports it
//! unreachable and falling behind while the cluster takes writes; once it is
//! removed, so is the follower asked, which then answers that it was removed
//! instead of listing itself.

use std::time::Duration;

use opsd_tests::{wait_until, Cluster, Opsctl, Options, FORM_TIMEOUT};
use serde_json::Value;

/// The member with `id` in a `cluster members` JSON array.
fn member(members: &Value, id: u64) -> &Value {
    members
        .as_array()
        .expect("members is an array")
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no member {id} in {members}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_show_who_leads_and_who_is_down() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers().await;
    let (asked, victim) = (followers[0], followers[1]);
    let ask = Opsctl {
        addr: cluster.node(asked).client_addr(),
    };

    // Asked of a follower: the leader's view, with roles, contact and lag.
    let (members, _) = wait_until(
        "every member reachable",
        FORM_TIMEOUT,
        Duration::from_millis(100),
        || async {
            let members = ask.json(&["cluster", "members"]).await;
            let all = members.as_array().expect("an array");
            if all.len() == 3 && all.iter().all(|m| m["reachability"] == "reachable") {
                Ok(members)
            } else {
                Err(members.to_string())
            }
        },
    )
    .await;
    assert_eq!(
        member(&members, cluster.node(leader).id())["role"],
        "leader",
        "{members}"
    );
    for &i in &followers {
        let m = member(&members, cluster.node(i).id());
        assert_eq!(m["role"], "follower", "{members}");
        assert!(m["lag"].is_u64() && m["matched_index"].is_u64(), "{members}");
    }

    // A follower is killed: the leader reports it unreachable, and behind
    // once the others have taken a write it has not.
    cluster.node(victim).kill9();
    cluster
        .put(asked, "members/after-kill", "1")
        .await
        .expect("a write with two of three");
    let victim_id = cluster.node(victim).id();
    let (members, _) = wait_until(
        "the killed follower shown down",
        FORM_TIMEOUT,
        Duration::from_millis(100),
        || async {
            let members = ask.json(&["cluster", "members"]).await;
            let m = member(&members, victim_id);
            if m["reachability"] == "unreachable" && m["lag"].as_u64().is_some_and(|l| l > 0) {
                Ok(members)
            } else {
                Err(members.to_string())
            }
        },
    )
    .await;
    assert!(member(&members, victim_id)["since_contact_ms"].is_u64(), "{members}");
    let table = ask.run(&["cluster", "members"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&victim_id.to_string()) && l.contains("unreachable for ")),
        "{table}"
    );

    // The dead follower is removed, then the one that was asked: that one
    // says so instead of listing itself.
    let leader_opsctl = Opsctl {
        addr: cluster.node(leader).client_addr(),
    };
    leader_opsctl.json(&["cluster", "remove", &victim_id.to_string()]).await;
    let asked_id = cluster.node(asked).id().to_string();
    leader_opsctl.json(&["cluster", "remove", &asked_id]).await;
    let (refusal, _) = wait_until(
        "the removed node to refuse",
        FORM_TIMEOUT,
        Duration::from_millis(100),
        || async {
            let out = ask.run(&["cluster", "members"]).await;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if !out.status.success() {
                Ok(stderr)
            } else {
                Err(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        },
    )
    .await;
    assert!(
        refusal.contains(&format!("node {asked_id} was removed from the cluster")),
        "{refusal}"
    );
}

/// With no leader to ask (two of three nodes down), a follower answers with
/// its own view and says so: roles as it knows them, nothing it cannot know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_leader_a_follower_gives_its_own_view_and_says_so() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers().await;
    let (left, other) = (followers[0], followers[1]);
    cluster.node(leader).kill9();
    cluster.node(other).kill9();
    let ask = Opsctl {
        addr: cluster.node(left).client_addr(),
    };
    let (out, _) = wait_until(
        "the follower's own view",
        FORM_TIMEOUT,
        Duration::from_millis(200),
        || async {
            let out = ask.run(&["--output", "json", "cluster", "members"]).await;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() && stderr.contains("own view") {
                Ok(out)
            } else {
                Err(format!("{stderr}{}", String::from_utf8_lossy(&out.stdout)))
            }
        },
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left_id = cluster.node(left).id();
    assert!(stderr.contains(&format!("note: node {left_id}'s own view")), "{stderr}");
    let members: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(members.as_array().map(Vec::len), Some(3), "{members}");
    for m in members.as_array().unwrap() {
        assert_eq!(m["reachability"], "unknown", "{members}");
        assert_eq!(m["lag"], Value::Null, "{members}");
    }
    assert_eq!(member(&members, left_id)["role"], "follower", "{members}");
}

/// A leader killed and restarted after the others elected a new one comes
/// back as leader of its old term, in Raft's eyes, until it hears of the new
/// one: it logs that as what it restored, and `status --wait` on it waits
/// until it knows the real leader rather than naming itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_claims_no_leadership_it_has_lost() {
    let cluster = Cluster::start(3, Options::default()).await;
    let old = cluster.leader().await;
    let old_term = cluster.node(old).status().await.expect("leader status").term;
    cluster.node(old).kill9();
    let new = cluster.wait_for_leader(&[old], FORM_TIMEOUT).await;
    cluster.node(old).restart();
    let ask = Opsctl {
        addr: cluster.node(old).client_addr(),
    };
    let status = ask.json(&["status", "--wait", "60s"]).await;
    assert_eq!(status["leader_id"], cluster.node(new).id(), "{status}");
    assert_ne!(status["role"], "leader", "{status}");
    let log = std::fs::read_to_string(cluster.node(old).log_path()).expect("the node's log");
    let restart = &log[log.rfind("==== harness: restart").expect("the restart is in the log")..];
    assert!(
        restart.contains(&format!("restored state: term {old_term}, was leader")),
        "{restart}"
    );
}
