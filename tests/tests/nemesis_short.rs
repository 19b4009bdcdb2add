//! The fault suite, short enough for every `cargo test`: a 3-node and then a
//! 5-node cluster each take some five faults while clients write and drive
//! runs: a full disk and failing writes first (every run), then others dealt
//! from a shuffled deck of every kind (kill -9, SIGSTOP, isolating the
//! leader, a minority/majority split, membership churn, two at once, a
//! wiped database), so that every run covers a different mix; afterwards
//! nothing acknowledged is lost, no history breaks linearizability, every run
//! ended once, and the nodes converge. `make nemesis` is the long version.
//!
//! Partitions and full disks need root (network namespaces, tmpfs mounts),
//! failing writes a C compiler. Without them the other faults still run and
//! the skip is printed, or, with `OPSD_TEST_STRICT` set (CI), the test fails.
//! `NEMESIS_SEED=N` replays a run.

use std::io::Write;

use opsd_tests::nemesis::{self, faults::Fault, net::Network, rng, Config};

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
    let mut config = Config::new(
        seed,
        SECONDS,
        vec![3, 5],
        out_dir.clone(),
        "cargo test -p opsd-tests --test nemesis_short -- --nocapture",
    );
    let must = [Fault::DiskFull, Fault::IoError];
    config.first = must.to_vec();
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
    for fault in must {
        match summary.skipped.iter().find(|(f, _)| *f == fault.name()) {
            Some((_, why)) => opsd_tests::skip(&format!("nemesis_short: {}", fault.name()), why),
            None => {
                for c in &summary.clusters {
                    assert!(
                        c.faults.get(fault.name()).is_some_and(|n| *n > 0),
                        "the {}-node cluster was not dealt {} (faults {:?})",
                        c.size,
                        fault.name(),
                        c.faults
                    );
                }
            }
        }
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
