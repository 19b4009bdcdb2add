//! The leader freezes (SIGSTOP: a long GC pause, a VM freeze) past the
//! election timeout. The others elect a new leader and take writes; when the
//! old leader wakes (SIGCONT) it sees the higher term and follows. Every write
//! acknowledged before, during and after the pause is kept, including one that
//! was sent to the old leader while it was frozen, if it was acknowledged.

use std::time::{Duration, Instant};

use opsd_tests::{client, Cluster, Options, FORM_TIMEOUT};

#[tokio::test]
async fn paused_leader_steps_down() {
    let cluster = Cluster::start(3, Options::default()).await;
    let mut acked: Vec<(String, String, u64)> = Vec::new();

    let old = cluster.leader().await;
    let old_status = cluster.node(old).status().await.expect("leader status");
    for i in 0..20 {
        let (k, v) = (format!("pause/before/{i:02}"), format!("b{i}"));
        let put = cluster.put(i % 3, &k, &v).await.expect("write before the pause");
        acked.push((k, v, put.revision));
    }

    let paused_at = Instant::now();
    cluster.node(old).sigstop();
    eprintln!(
        "SIGSTOP leader {} (term {}), election timeout at most {:?}",
        cluster.node(old).name(),
        old_status.term,
        cluster.options().max_election_timeout()
    );
    // A write sent to the frozen leader: it cannot answer until it wakes.
    let frozen_addr = cluster.node(old).client_addr();
    let to_frozen = tokio::spawn(async move { client::put_once(&frozen_addr, "pause/sent-to-frozen", "f").await });

    let new = cluster.wait_for_leader(&[old], FORM_TIMEOUT).await;
    let elected = paused_at.elapsed();
    let new_term = cluster.node(new).status().await.expect("new leader status").term;
    assert_ne!(new, old);
    assert!(new_term > old_status.term, "term did not move on: {new_term}");
    eprintln!(
        "TIMING pause failover: leader paused -> new leader {} agreed {elected:?}",
        cluster.node(new).name()
    );

    let others: Vec<usize> = cluster.serving();
    for i in 0..20 {
        let (k, v) = (format!("pause/during/{i:02}"), format!("d{i}"));
        let put = cluster
            .put(others[i % others.len()], &k, &v)
            .await
            .expect("write while the old leader is frozen");
        acked.push((k, v, put.revision));
    }
    // Keep it frozen well past the election timeout.
    let hold = cluster.options().max_election_timeout() * 3;
    if paused_at.elapsed() < hold {
        tokio::time::sleep(hold - paused_at.elapsed()).await;
    }

    cluster.node(old).sigcont();
    let resumed_at = Instant::now();
    eprintln!(
        "SIGCONT {} after {:?} frozen",
        cluster.node(old).name(),
        paused_at.elapsed()
    );

    // It steps down: a follower in the new term, following the new leader.
    let new_id = cluster.node(new).id();
    let (seen, took) = opsd_tests::wait_until(
        "the old leader to follow the new one",
        FORM_TIMEOUT,
        Duration::from_millis(50),
        || async {
            let s = cluster.node(old).status().await.map_err(|e| client::describe(&e))?;
            if s.role == "follower" && s.leader_id != old_status.node_id && s.term >= new_term && s.leader_id != 0 {
                Ok(s)
            } else {
                Err(format!("role {}, leader {}, term {}", s.role, s.leader_id, s.term))
            }
        },
    )
    .await;
    eprintln!(
        "TIMING step-down: old leader woke -> follower of {} in term {} {took:?}",
        seen.leader_id, seen.term
    );
    let leader_now = cluster.wait_for_leader(&[], FORM_TIMEOUT).await;
    assert_ne!(leader_now, old, "the old leader took over again instead of following");
    if leader_now != new {
        eprintln!("note: leadership moved again, to {}", cluster.node(leader_now).name());
    } else {
        assert_eq!(seen.leader_id, new_id);
    }

    // The write sent to it while frozen has an outcome now; if acknowledged, it must be kept.
    match tokio::time::timeout(Duration::from_secs(60), to_frozen).await {
        Err(_) => panic!("the write sent to the frozen leader still has no outcome 60 s after it woke"),
        Ok(joined) => match joined.expect("the writer task") {
            Ok(put) => {
                eprintln!(
                    "the write sent to the frozen leader was acknowledged at revision {}",
                    put.revision
                );
                acked.push(("pause/sent-to-frozen".into(), "f".into(), put.revision));
            }
            Err(e) => eprintln!("the write sent to the frozen leader failed ({})", client::describe(&e)),
        },
    }
    eprintln!("woke {:?} ago", resumed_at.elapsed());

    for i in 0..20 {
        let (k, v) = (format!("pause/after/{i:02}"), format!("a{i}"));
        // Through every node, the old leader included (it forwards now).
        let put = cluster.put(i % 3, &k, &v).await.expect("write after the pause");
        acked.push((k, v, put.revision));
    }

    let all: Vec<usize> = (0..cluster.len()).collect();
    cluster.assert_writes_present(&all, "pause/", &acked).await;
}
