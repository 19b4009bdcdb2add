//! Fuzzing on stable Rust: property harnesses on `proptest` that feed the
//! daemon's decoders, parser, apply function and request validation
//! arbitrary and mutated inputs (docs/fuzzing.md).
//!
//! Each harness is a `#[test]`: `cargo test` runs a short pass of every one
//! (a share of [`DEFAULT_TOTAL`] inputs), and `make fuzz` a long one
//! (`FUZZ_CASES`, the total over all harnesses, at least a million). A
//! harness's share of the total is its weight; [`fuzz`] counts the inputs
//! it really fed and, when `FUZZ_COUNTS` names a directory, writes the count
//! there for `make fuzz` to add up.
//!
//! A failure prints the minimal input proptest shrank it to and the seed of
//! the run (`FUZZ_SEED=N` replays it), and proptest records the failing
//! case's seed in `daemon/tests/fuzz/HARNESS.txt`, which every later run
//! (short or long) tries first: commit that file with the fix.

mod api;
mod apply;
mod command;
mod kind;
pub(crate) mod strategies;

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// The total number of inputs of a run without `FUZZ_CASES` (`cargo test`):
/// tens of thousands, well under two minutes on two cores.
pub const DEFAULT_TOTAL: u64 = 20_000;

/// The total number of inputs over every harness, daemon and cluster.
pub fn total() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_TOTAL)
}

/// The seed of this run: `FUZZ_SEED`, or one from the clock.
pub fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Counts the inputs a harness fed.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// One more input.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A harness: its name (the regression file's too), its share of the total
/// in thousandths, and how many inputs one case feeds on average (1 for a
/// decoder, the mean sequence length for apply).
pub struct Harness {
    /// The name, e.g. `command_decoder`.
    pub name: &'static str,
    /// The share of the total, in thousandths. The shares of all harnesses
    /// (with the cluster crate's peer decoder) add up to 1000.
    pub per_mille: u64,
    /// The mean number of inputs one case feeds.
    pub inputs_per_case: u64,
    /// Where proptest keeps the seeds of failing cases.
    pub regressions: &'static str,
}

/// The regression file of a harness, under `daemon/tests/fuzz/`.
macro_rules! regressions {
    ($name:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/", $name, ".txt")
    };
}
pub(crate) use regressions;

/// Runs `test` on values of `strategy` until the harness has fed its share
/// of the total; panics with the minimal failing input and the seed.
pub fn fuzz<S: Strategy>(h: &Harness, strategy: S, test: impl Fn(S::Value, &Counter) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let budget = (total() * h.per_mille).div_ceil(1000).max(1);
    // Each harness its own seed, printed with a failure: FUZZ_SEED=N
    // replays every harness of the run.
    let base = seed();
    let seed = base
        ^ h.name
            .bytes()
            .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    eprintln!("fuzz {}: FUZZ_SEED={base}, {budget} inputs", h.name);
    let counter = Counter::default();
    let mut round = 0u64;
    while counter.get() < budget {
        let left = budget - counter.get();
        let cases = left.div_ceil(h.inputs_per_case.max(1)).clamp(1, u32::MAX as u64) as u32;
        let config = Config {
            cases,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(h.regressions))),
            max_shrink_iters: 4096,
            max_global_rejects: u32::MAX,
            ..Config::default()
        };
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..].copy_from_slice(&round.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::XorShift, &bytes);
        let mut runner = TestRunner::new_with_rng(config, rng);
        if let Err(e) = runner.run(&strategy, |v| test(v, &counter)) {
            panic!(
                "fuzz harness {} failed (FUZZ_SEED={}; its seed is saved in {}): {e}",
                h.name, base, h.regressions
            );
        }
        round += 1;
    }
    report(h.name, counter.get());
}

/// Prints a harness's count and, for `make fuzz`, writes it to `FUZZ_COUNTS`.
pub fn report(name: &str, count: u64) {
    eprintln!("fuzz {name}: {count} inputs");
    if let Ok(dir) = std::env::var("FUZZ_COUNTS") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(std::path::Path::new(&dir).join(name), format!("{count}\n"));
    }
}
