//! A node joins a cluster whose log has been purged past the first writes: it
//! cannot replay the log from the start, so it must receive a snapshot, and it
//! still ends up with every key and becomes a voter.

use std::time::{Duration, Instant};

use opsd_tests::{Cluster, Options, FORM_TIMEOUT};

const KEYS: usize = 300;

#[tokio::test]
async fn join_after_purge_uses_snapshot() {
    let options = Options {
        snapshot_threshold: Some(50),
        ..Options::default()
    };
    let mut cluster = Cluster::start(3, options).await;
    let leader = cluster.leader().await;

    let mut first_revision = 0;
    for i in 0..KEYS {
        let put = cluster
            .put(i % 3, &format!("bulk/{i:04}"), &format!("value {i}"))
            .await
            .expect("bulk write");
        if i == 0 {
            first_revision = put.revision;
        }
    }

    // Every member has snapshotted and purged its log past the first write,
    // so no member can send a newcomer the log from the start.
    let (purged, took) = opsd_tests::wait_until(
        "every member to purge its log past the first write",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let mut purged = Vec::new();
            for (i, s) in cluster.statuses(&[]).await {
                let s = s.map_err(|e| format!("{}: {e}", cluster.node(i).name()))?;
                if s.purged_index < first_revision {
                    return Err(format!(
                        "{} purged_index {} snapshot_index {} (first write at {first_revision})",
                        cluster.node(i).name(),
                        s.purged_index,
                        s.snapshot_index
                    ));
                }
                purged.push((cluster.node(i).name().to_string(), s.snapshot_index, s.purged_index));
            }
            Ok(purged)
        },
    )
    .await;
    eprintln!("members (name, snapshot_index, purged_index) after {KEYS} writes: {purged:?} (waited {took:?})");
    let target = cluster
        .node(leader)
        .status()
        .await
        .expect("leader status")
        .applied_index;

    let joined_at = Instant::now();
    let newcomer = cluster.add_node().await; // returns once the leader lists it as a voter
    let as_voter = joined_at.elapsed();
    let caught_up = joined_at.elapsed() + cluster.node(newcomer).wait_applied(target, FORM_TIMEOUT).await;

    let status = cluster.node(newcomer).status().await.expect("newcomer status");
    eprintln!(
        "TIMING snapshot catch-up: {} started with an empty data dir -> promoted to voter {as_voter:?}; \
         -> applied index {target} {caught_up:?}; its snapshot_index {} purged_index {} applied_index {}",
        cluster.node(newcomer).name(),
        status.snapshot_index,
        status.purged_index,
        status.applied_index
    );
    assert!(
        status.snapshot_index > 0,
        "the newcomer reports no snapshot although the log it needed was purged: {status:?}"
    );
    assert!(
        status.snapshot_index >= first_revision,
        "the newcomer's snapshot does not cover the first write: {status:?}"
    );

    // Every key, from the newcomer's own state.
    let listed = cluster
        .list(newcomer, "bulk/", true)
        .await
        .expect("stale list on the newcomer");
    assert_eq!(listed.settings.len(), KEYS, "the newcomer's local state lacks keys");
    for (i, s) in listed.settings.iter().enumerate() {
        assert_eq!(s.key, format!("bulk/{i:04}"));
        assert_eq!(s.value, format!("value {i}"));
    }
    let first = cluster.get(newcomer, "bulk/0000", true).await.expect("the first key");
    assert_eq!(first.setting.expect("a setting").mod_revision, first_revision);

    // A full member: four voters everywhere, and it serves writes and reads.
    cluster.wait_membership(&[], 4, 0, FORM_TIMEOUT).await;
    let put = cluster
        .put(newcomer, "bulk/after-join", "ok")
        .await
        .expect("write through the newcomer");
    for i in 0..cluster.len() {
        let got = cluster
            .get(i, "bulk/after-join", false)
            .await
            .expect("linearizable read");
        assert_eq!(got.setting.expect("a setting").mod_revision, put.revision);
    }
}
