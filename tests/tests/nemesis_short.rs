//! The fault suite, short enough for every `cargo test`: a 3-node and then a
//! 5-node cluster each take some five faults dealt from a shuffled deck of
//! every kind (kill -9, SIGSTOP, isolating the leader, a minority/majority
//! split, membership churn, two at once) while clients write and drive runs,
//! so that every run covers a different mix; afterwards nothing
//! acknowledged is lost, no history breaks linearizability, every run ended
//! once, and the nodes converge. `make nemesis` is the long version.
//!
//! Partitions need root and network namespaces. Without them the other
//! faults still run and the skip is printed, or, with `OPSD_TEST_STRICT` set
//! (CI), the test fails. `NEMESIS_SEED=N` replays a run.

use std::io::Write;

use opsd_tests::nemesis::{self, net::Network, rng, Config};

/// Seconds of faults in all, shared by the two clusters.
const SECONDS: u64 = 26;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_under_kills_pauses_partitions_and_churn() {
    if let Err(why) = Network::probe() {
        opsd_tests::skip(
            "nemesis_short: network partitions",
            &format!("{why}; kills, pauses and churn still run"),
        );
    }
    let seed = match std::env::var("NEMESIS_SEED") {
        Ok(s) if !s.trim().is_empty() => s.trim().parse().expect("NEMESIS_SEED is a whole number"),
        _ => rng::fresh_seed(),
    };
    let out_dir = nemesis::target_dir().join("nemesis").join("short");
    let config = Config::new(
        seed,
        SECONDS,
        vec![3, 5],
        out_dir.clone(),
        "cargo test -p opsd-tests --test nemesis_short -- --nocapture",
    );
    let _ = writeln!(
        std::io::stderr(),
        "nemesis_short: seed {seed}; replay with: {}",
        config.replay()
    );
    let summary = nemesis::run(&config).await;
    summary.print();
    if let Err(e) = summary.write(&out_dir.join("summary.json")) {
        eprintln!("nemesis_short: {e}");
    }
    let details: Vec<String> = summary
        .clusters
        .iter()
        .flat_map(|c| {
            c.lost
                .iter()
                .map(|l| format!("LOST: {l}"))
                .chain(c.anomalies.iter().map(|a| format!("ANOMALY: {a}")))
        })
        .take(10)
        .collect();
    assert!(
        summary.passed(),
        "the fault suite found {} lost and {} anomalies (seed {}); replay with: {}\n{}",
        summary.lost(),
        summary.anomalies(),
        seed,
        config.replay(),
        details.join("\n")
    );
}
