//! How long an actor waits before proposing again after the cluster could
//! not commit a proposal (no quorum, an election in progress).
//!
//! The delay doubles from [`FIRST_RETRY`] up to [`LONGEST_RETRY`] and goes
//! back to the start once a proposal commits. It has no jitter, so the same
//! failures always give the same delays: every actor retries only its own
//! resource's proposal, so there is no crowd to spread out.

use std::time::Duration;

/// The first wait after a proposal the cluster could not commit.
pub const FIRST_RETRY: Duration = Duration::from_millis(200);

/// The longest wait between two attempts: an election settles well within
/// it, and a run's finish is not held back much longer than that.
pub const LONGEST_RETRY: Duration = Duration::from_secs(5);

/// The retry delays of one actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    longest: Duration,
    /// Failures since the last success.
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(FIRST_RETRY, LONGEST_RETRY)
    }
}

impl Backoff {
    /// A backoff from `first`, doubling to at most `longest`.
    pub fn new(first: Duration, longest: Duration) -> Self {
        Backoff {
            first,
            longest: longest.max(first),
            failures: 0,
        }
    }

    /// A proposal failed: how long to wait before the next one.
    pub fn next_delay(&mut self) -> Duration {
        // 2^16 times any sensible first delay is past any sensible cap.
        let doublings = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        self.first.saturating_mul(1 << doublings).min(self.longest)
    }

    /// A proposal committed: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(ms(100), ms(1000));
        let delays: Vec<Duration> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::new(ms(100), ms(1000));
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        assert_eq!(b.next_delay(), ms(200));
    }

    #[test]
    fn is_the_same_every_time() {
        let run = || {
            let mut b = Backoff::default();
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert_eq!(run()[0], FIRST_RETRY);
        assert_eq!(*run().last().unwrap(), LONGEST_RETRY);
    }

    #[test]
    fn never_overflows_after_many_failures() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        for _ in 0..100 {
            assert!(b.next_delay() >= Duration::from_secs(u64::MAX / 4));
        }
        let mut b = Backoff::default();
        for _ in 0..100_000 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), LONGEST_RETRY);
    }

    #[test]
    fn a_cap_below_the_first_delay_is_the_first_delay() {
        let mut b = Backoff::new(ms(300), ms(100));
        assert_eq!(b.next_delay(), ms(300));
        assert_eq!(b.next_delay(), ms(300));
    }
}
