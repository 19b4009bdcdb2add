//! kill -9 of the leader while clients write: the others elect a new leader,
//! writes resume, and no acknowledged write is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opsd_tests::{client, Cluster, Options, FORM_TIMEOUT};

/// Concurrent writers, each sending its own stream of unique keys.
const WRITERS: usize = 4;

/// A write the cluster acknowledged.
#[derive(Clone, Debug)]
struct Ack {
    key: String,
    value: String,
    revision: u64,
    sent: Instant,
    acked: Instant,
}

#[derive(Default)]
struct Record {
    acks: Vec<Ack>,
    failures: Vec<String>,
}

#[tokio::test]
async fn leader_killed_under_writes() {
    let cluster = Cluster::start(3, Options::default()).await;
    let addrs = cluster.client_addrs();
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));

    // Each writer sends unique keys round-robin to every node (followers
    // forward to the leader), one write at a time, never retrying a key: a
    // failed write's outcome is unknown and only acknowledged ones must survive.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (addrs, record, stop) = (addrs.clone(), record.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut seq = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("stream/w{w}/{seq:06}");
                let value = format!("writer {w} write {seq}");
                let addr = &addrs[(w + seq) % addrs.len()];
                let sent = Instant::now();
                match client::put_once(addr, &key, &value).await {
                    Ok(r) => record.lock().unwrap().acks.push(Ack {
                        key,
                        value,
                        revision: r.revision,
                        sent,
                        acked: Instant::now(),
                    }),
                    Err(e) => {
                        record
                            .lock()
                            .unwrap()
                            .failures
                            .push(format!("{key} via {addr}: {}", client::describe(&e)));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                seq += 1;
            }
        }));
    }

    let acks = |r: &Arc<Mutex<Record>>| r.lock().unwrap().acks.len();
    let wait_acks = |n: usize, what: &'static str| {
        let record = record.clone();
        async move {
            opsd_tests::wait_until(what, Duration::from_secs(60), Duration::from_millis(20), || {
                let record = record.clone();
                async move {
                    let have = record.lock().unwrap().acks.len();
                    if have >= n {
                        Ok(())
                    } else {
                        Err(format!("{have} of {n} acknowledged"))
                    }
                }
            })
            .await
        }
    };

    wait_acks(150, "writes before the kill").await;
    let old_leader = cluster.leader().await;
    let old_term = cluster.node(old_leader).status().await.expect("leader status").term;
    let acked_before = acks(&record);
    let killed_at = Instant::now();
    cluster.node(old_leader).kill9();
    eprintln!(
        "killed leader {} (term {old_term}) with SIGKILL after {acked_before} acknowledged writes",
        cluster.node(old_leader).name()
    );

    let new_leader = cluster.wait_for_leader(&[old_leader], FORM_TIMEOUT).await;
    let elected_after = killed_at.elapsed();
    let new_term = cluster.node(new_leader).status().await.expect("new leader status").term;
    assert_ne!(new_leader, old_leader);
    assert!(
        new_term > old_term,
        "new leader's term {new_term} is not above {old_term}"
    );

    wait_acks(acked_before + 150, "writes after the kill").await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("a writer did not stop within 60 s")
            .expect("a writer panicked");
    }

    let record = Arc::try_unwrap(record)
        .ok()
        .expect("writers finished")
        .into_inner()
        .unwrap();
    let first_after = record
        .acks
        .iter()
        .filter(|a| a.sent > killed_at)
        .map(|a| a.acked)
        .min()
        .expect("a write sent after the kill was acknowledged");
    let failover = first_after - killed_at;
    eprintln!(
        "TIMING failover: leader killed -> new leader agreed by all live nodes {elected_after:?}; \
         -> first acknowledged write sent after the kill {failover:?} (new leader {}, term {new_term})",
        cluster.node(new_leader).name()
    );
    eprintln!(
        "{} writes acknowledged, {} failed (outcome unknown); first failures: {:#?}",
        record.acks.len(),
        record.failures.len(),
        record.failures.iter().take(5).collect::<Vec<_>>()
    );

    // Revisions are log indexes: unique per acknowledged write.
    let mut revisions: Vec<u64> = record.acks.iter().map(|a| a.revision).collect();
    revisions.sort();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        record.acks.len(),
        "two acknowledged writes share a revision"
    );
    // Every acknowledged write is there, on every live node.
    let acked: Vec<(String, String, u64)> = record
        .acks
        .iter()
        .map(|a| (a.key.clone(), a.value.clone(), a.revision))
        .collect();
    cluster
        .assert_writes_present(&cluster.serving(), "stream/", &acked)
        .await;
}
