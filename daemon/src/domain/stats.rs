//! Analytics over finished runs: per kind and transition, how many runs
//! succeeded, failed or were cancelled, and how long successful and failed
//! runs took ("how long does a deploy take on average, how long until a
//! failing one fails").
//!
//! Answering must stay well under a second over a million runs, so apply
//! keeps the answer ready: one aggregate per kind, transition and hour of
//! finish (counts, sums, max, and a log-scale histogram of durations for the
//! percentiles). A query adds up the hours; with `--since`, the hours wholly
//! inside the window come from the aggregates and the partial hour at its
//! start from a small per-run index, so counts are exact. Percentiles come
//! from the histogram and are within about 3% of the exact value.

use std::collections::BTreeMap;

use opsd_cluster::{ReadView, Txn, TxnError};
use serde::{Deserialize, Serialize};

use super::resources::{RunOutcome, RunRecord};
use super::{decode, encode};

/// Finished runs by time: `finished_at_ms (BE) ‖ index (BE)` → [`FinishedRun`].
pub const FINISHED: &str = "runs_finished";
/// Hourly aggregates: `kind \0 from \0 to \0 hour (BE)` → [`Bucket`].
pub const BUCKETS: &str = "stats_hourly";

const HOUR_MS: i64 = 3_600_000;

/// What the per-run index keeps of a finished run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedRun {
    /// The resource's kind.
    pub kind: String,
    /// The state left.
    pub from: String,
    /// The state entered.
    pub to: String,
    /// How it ended.
    pub outcome: RunOutcome,
    /// How long it took.
    pub duration_ms: u64,
}

/// Aggregated runs of one transition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Finished runs.
    pub count: u64,
    /// Of which succeeded.
    pub succeeded: u64,
    /// Of which failed.
    pub failed: u64,
    /// Of which were cancelled.
    pub cancelled: u64,
    /// Of which were interrupted.
    pub interrupted: u64,
    /// Sum of durations of successful runs.
    pub ok_sum_ms: u64,
    /// Longest successful run.
    pub ok_max_ms: u64,
    /// Sum of durations of failed runs.
    pub fail_sum_ms: u64,
    /// Histogram of successful durations: slot → count.
    pub hist: BTreeMap<u16, u64>,
}

impl Bucket {
    /// Counts a run. Apply calls it with proposer-chosen durations, so the
    /// sums saturate rather than overflow (a panic in a debug build).
    fn add_run(&mut self, outcome: RunOutcome, duration_ms: u64) {
        let add = |field: &mut u64, n: u64| *field = field.saturating_add(n);
        match outcome {
            RunOutcome::Succeeded => {
                add(&mut self.succeeded, 1);
                add(&mut self.ok_sum_ms, duration_ms);
                self.ok_max_ms = self.ok_max_ms.max(duration_ms);
                add(self.hist.entry(slot(duration_ms)).or_default(), 1);
            }
            RunOutcome::Failed => {
                add(&mut self.failed, 1);
                add(&mut self.fail_sum_ms, duration_ms);
            }
            RunOutcome::Cancelled => add(&mut self.cancelled, 1),
            RunOutcome::Interrupted => add(&mut self.interrupted, 1),
            RunOutcome::Running => return,
        }
        add(&mut self.count, 1);
    }

    fn merge(&mut self, other: &Bucket) {
        let add = |field: &mut u64, n: u64| *field = field.saturating_add(n);
        add(&mut self.count, other.count);
        add(&mut self.succeeded, other.succeeded);
        add(&mut self.failed, other.failed);
        add(&mut self.cancelled, other.cancelled);
        add(&mut self.interrupted, other.interrupted);
        add(&mut self.ok_sum_ms, other.ok_sum_ms);
        self.ok_max_ms = self.ok_max_ms.max(other.ok_max_ms);
        add(&mut self.fail_sum_ms, other.fail_sum_ms);
        for (s, c) in &other.hist {
            add(self.hist.entry(*s).or_default(), *c);
        }
    }

    /// The duration below which `q` (0..=1) of successful runs finished:
    /// the middle of the histogram slot it falls in, never above the max.
    fn quantile(&self, q: f64) -> f64 {
        if self.succeeded == 0 {
            return 0.0;
        }
        let rank = ((q * self.succeeded as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (s, c) in &self.hist {
            seen += c;
            if seen >= rank {
                let (lo, hi) = slot_range(*s);
                return ((lo as f64 + hi as f64) / 2.0).min(self.ok_max_ms as f64);
            }
        }
        self.ok_max_ms as f64
    }
}

/// The histogram slot of a duration: exact below 32 ms, then 16 slots per
/// power of two (about 6% wide).
fn slot(ms: u64) -> u16 {
    if ms < 32 {
        return ms as u16;
    }
    let e = 63 - ms.leading_zeros() as u64; // >= 5
    let m = (ms >> (e - 4)) & 0xF;
    (32 + (e - 5) * 16 + m) as u16
}

/// The durations a slot covers, `[lo, hi)`.
fn slot_range(s: u16) -> (u64, u64) {
    let s = s as u64;
    if s < 32 {
        return (s, s + 1);
    }
    let e = (s - 32) / 16 + 5;
    let m = (s - 32) % 16;
    let lo = (16 + m) << (e - 4);
    (lo, lo.saturating_add(1 << (e - 4)))
}

fn bucket_key(kind: &str, from: &str, to: &str, hour: i64) -> Vec<u8> {
    [
        kind.as_bytes(),
        b"\0",
        from.as_bytes(),
        b"\0",
        to.as_bytes(),
        b"\0",
        &(hour.max(0) as u64).to_be_bytes(),
    ]
    .concat()
}

/// Splits a bucket key into kind, from, to and hour.
fn split_bucket_key(key: &[u8]) -> Option<(String, String, String, i64)> {
    let (names, hour) = key.split_at(key.len().checked_sub(8)?);
    let hour = u64::from_be_bytes(hour.try_into().ok()?) as i64;
    let names = names.strip_suffix(b"\0")?;
    let mut parts = names.split(|b| *b == 0);
    let mut next = || parts.next().map(|p| String::from_utf8_lossy(p).into_owned());
    Some((next()?, next()?, next()?, hour))
}

/// Records a finished run in the aggregates and the per-run index. Called by
/// apply, with the run's own (proposer-chosen) finish time.
pub fn record(txn: &mut Txn<'_>, run: &RunRecord) -> Result<(), TxnError> {
    let (Some(finished), Some(duration_ms)) = (run.finished_at_ms, run.duration_ms()) else {
        return Ok(());
    };
    let key = bucket_key(&run.kind, &run.from, &run.to, finished.div_euclid(HOUR_MS));
    let mut bucket: Bucket = match txn.get(BUCKETS, &key)? {
        Some(b) => decode(&b, "stats bucket")?,
        None => Bucket::default(),
    };
    bucket.add_run(run.outcome, duration_ms);
    txn.put(BUCKETS, &key, &encode(&bucket)?)?;
    let row = FinishedRun {
        kind: run.kind.clone(),
        from: run.from.clone(),
        to: run.to.clone(),
        outcome: run.outcome,
        duration_ms,
    };
    let finished_key = [(finished.max(0) as u64).to_be_bytes(), run.index.to_be_bytes()].concat();
    txn.put(FINISHED, &finished_key, &encode(&row)?)
}

/// The statistics of one kind and transition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransitionStats {
    /// The kind.
    pub kind: String,
    /// The state left.
    pub from: String,
    /// The state entered.
    pub to: String,
    /// Finished runs.
    pub count: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Interrupted.
    pub interrupted: u64,
    /// Mean duration of successful runs.
    pub mean_ms: f64,
    /// Median duration of successful runs.
    pub p50_ms: f64,
    /// 95th percentile duration of successful runs.
    pub p95_ms: f64,
    /// Longest successful run.
    pub max_ms: f64,
    /// Mean duration of failed runs.
    pub fail_mean_ms: f64,
}

/// Aggregates the runs of `kind` (every kind if empty) that finished at or
/// after `since_ms` (all if `None`), per kind and transition, sorted.
pub fn query(view: &ReadView<'_>, kind: &str, since_ms: Option<i64>) -> Result<Vec<TransitionStats>, TxnError> {
    let mut totals: BTreeMap<(String, String, String), Bucket> = BTreeMap::new();
    // Hours wholly inside the window come from the aggregates.
    let first_hour = since_ms.map(|s| (s + HOUR_MS - 1).div_euclid(HOUR_MS)).unwrap_or(0);
    let prefix = if kind.is_empty() {
        Vec::new()
    } else {
        [kind.as_bytes(), b"\0"].concat()
    };
    for (k, v) in view.scan_prefix(BUCKETS, &prefix)? {
        let Some((kind, from, to, hour)) = split_bucket_key(&k) else {
            continue;
        };
        if hour < first_hour {
            continue;
        }
        let bucket: Bucket = decode(&v, "stats bucket")?;
        totals.entry((kind, from, to)).or_default().merge(&bucket);
    }
    // The partial hour at the window's start comes run by run.
    if let Some(since) = since_ms {
        let from = (since.max(0) as u64).to_be_bytes();
        let until = ((first_hour * HOUR_MS).max(0) as u64).to_be_bytes();
        for (_, v) in view.scan_range(FINISHED, &from, &until, false, usize::MAX)? {
            let row: FinishedRun = decode(&v, "finished run")?;
            if !kind.is_empty() && row.kind != kind {
                continue;
            }
            totals
                .entry((row.kind, row.from, row.to))
                .or_default()
                .add_run(row.outcome, row.duration_ms);
        }
    }
    Ok(totals
        .into_iter()
        .filter(|(_, b)| b.count > 0)
        .map(|((kind, from, to), b)| TransitionStats {
            mean_ms: mean(b.ok_sum_ms, b.succeeded),
            p50_ms: b.quantile(0.5),
            p95_ms: b.quantile(0.95),
            max_ms: b.ok_max_ms as f64,
            fail_mean_ms: mean(b.fail_sum_ms, b.failed),
            kind,
            from,
            to,
            count: b.count,
            succeeded: b.succeeded,
            failed: b.failed,
            cancelled: b.cancelled,
            interrupted: b.interrupted,
        })
        .collect())
}

fn mean(sum: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        sum as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_every_duration_in_order_within_seven_percent() {
        let mut last = 0;
        for ms in (0..5000).chain([65_535, 1_000_000, 86_400_000, u32::MAX as u64]) {
            let s = slot(ms);
            assert!(s >= last, "slots grow with the duration");
            last = s;
            let (lo, hi) = slot_range(s);
            assert!(lo <= ms && ms < hi, "{ms} in [{lo}, {hi})");
            assert!(
                (hi - lo) as f64 <= (lo as f64 * 0.07).max(1.0),
                "slot of {ms} is narrow"
            );
        }
    }

    #[test]
    fn absurd_durations_saturate_instead_of_panicking() {
        // Durations come from the proposer's clock, through apply.
        let mut b = Bucket::default();
        for outcome in [
            RunOutcome::Succeeded,
            RunOutcome::Succeeded,
            RunOutcome::Failed,
            RunOutcome::Failed,
        ] {
            b.add_run(outcome, u64::MAX);
        }
        b.add_run(RunOutcome::Running, 5);
        assert_eq!((b.count, b.ok_sum_ms, b.fail_sum_ms), (4, u64::MAX, u64::MAX));
        let mut total = b.clone();
        total.merge(&b);
        assert_eq!((total.count, total.ok_sum_ms), (8, u64::MAX));
        assert!(total.quantile(0.5) > 0.0);
    }

    #[test]
    fn quantiles_are_close_to_exact_ones() {
        let mut b = Bucket::default();
        for ms in 1..=1000 {
            b.add_run(RunOutcome::Succeeded, ms);
        }
        b.add_run(RunOutcome::Failed, 10);
        b.add_run(RunOutcome::Failed, 30);
        assert_eq!((b.count, b.succeeded, b.failed), (1002, 1000, 2));
        assert!(
            (b.quantile(0.5) - 500.0).abs() <= 500.0 * 0.04,
            "p50 {}",
            b.quantile(0.5)
        );
        assert!(
            (b.quantile(0.95) - 950.0).abs() <= 950.0 * 0.04,
            "p95 {}",
            b.quantile(0.95)
        );
        assert_eq!(b.quantile(1.0), 1000.0);
        assert_eq!(mean(b.fail_sum_ms, b.failed), 20.0);
    }

    #[test]
    fn bucket_keys_round_trip() {
        let k = bucket_key("app", "ready", "deploying", 493_000);
        assert_eq!(
            split_bucket_key(&k),
            Some(("app".into(), "ready".into(), "deploying".into(), 493_000))
        );
    }
}

/// The stats query over a million runs. A measurement, not a check of speed:
/// `cargo test -p opsd --release --lib stats_over_a_million_runs -- --ignored --nocapture`.
#[cfg(test)]
mod scale {
    use std::time::Instant;

    use super::*;
    use crate::domain::testing::TestState;
    use crate::domain::Trigger;

    #[test]
    #[ignore = "a measurement: run it by name"]
    fn stats_over_a_million_runs() {
        let s = TestState::new();
        let started = Instant::now();
        let runs = 1_000_000u64;
        // Spread over 60 days, 3 transitions of 2 kinds.
        for chunk in 0..100 {
            s.state
                .with_txn(|txn| {
                    for i in chunk * runs / 100..(chunk + 1) * runs / 100 {
                        let at = (i * 60 * 86_400_000 / runs) as i64;
                        let run = RunRecord {
                            index: i + 1,
                            kind: ["app", "db"][(i % 2) as usize].into(),
                            name: format!("r{}", i % 1000),
                            event: "deploy".into(),
                            from: "ready".into(),
                            to: ["deploying", "building", "testing"][(i % 3) as usize].into(),
                            outcome: if i % 10 == 0 {
                                RunOutcome::Failed
                            } else {
                                RunOutcome::Succeeded
                            },
                            attempt: 1,
                            node_id: 1,
                            term: 1,
                            since: i + 1,
                            args: Default::default(),
                            trigger: Trigger {
                                principal: "p".into(),
                                reason: String::new(),
                                source: "api".into(),
                                at_ms: at,
                            },
                            finished_at_ms: Some(at + (i % 5000) as i64),
                            error: String::new(),
                            outputs_json: String::new(),
                            cancel_requested: false,
                        };
                        record(txn, &run)?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        println!("recorded {runs} runs in {:?}", started.elapsed());
        let view = s.state.view();
        for (kind, since) in [("", None), ("app", None), ("", Some(30 * 86_400_000i64 + 1234))] {
            let t = Instant::now();
            let rows = query(&view, kind, since).unwrap();
            let count: u64 = rows.iter().map(|r| r.count).sum();
            println!(
                "STATS kind={kind:?} since={since:?}: {} transitions, {count} runs, in {:?}",
                rows.len(),
                t.elapsed()
            );
        }
    }
}
