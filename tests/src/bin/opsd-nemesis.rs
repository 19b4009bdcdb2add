//! `opsd-nemesis`: the fault suite for minutes, as `make nemesis` runs it
//! (see docs/nemesis.md). Real 3- and 5-node clusters take kill -9, SIGSTOP,
//! network partitions and membership churn while clients write and drive
//! runs; afterwards nothing acknowledged may be lost and no rule broken.
//!
//! Knobs, from the environment: `NEMESIS_SECONDS` (default 300, shared by
//! the cluster sizes), `NEMESIS_SEED` (replays a run), `NEMESIS_NODES`
//! (default `3,5`), `OPSD_TEST_STRICT` (fail rather than skip partitions the
//! machine cannot make). Writes `target/nemesis/summary.json` and exits
//! non-zero if anything was lost or broken.

use std::process::ExitCode;

use opsd_tests::nemesis::{self, net::Network, Config};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let out_dir = nemesis::target_dir().join("nemesis");
    let config = match Config::from_env(300, out_dir.clone(), "make nemesis") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("opsd-nemesis: {e}");
            return ExitCode::from(2);
        }
    };
    // Fail fast: in strict mode a machine that cannot partition is a failure, not a skip.
    if let (true, Err(why)) = (nemesis::strict(), Network::probe()) {
        eprintln!("opsd-nemesis: OPSD_TEST_STRICT is set and network partitions cannot run here: {why}");
        return ExitCode::FAILURE;
    }
    let summary = nemesis::run(&config).await;
    summary.print();
    let path = out_dir.join("summary.json");
    match summary.write(&path) {
        Ok(()) => eprintln!("summary written to {}", path.display()),
        Err(e) => {
            eprintln!("opsd-nemesis: {e}");
            return ExitCode::FAILURE;
        }
    }
    if summary.passed() {
        ExitCode::SUCCESS
    } else {
        eprintln!("opsd-nemesis: FAILED; replay with: {}", config.replay());
        ExitCode::FAILURE
    }
}
