//! How long to wait before retrying: exponential backoff with "full jitter".
//!
//! The wait after `n` consecutive failures is drawn uniformly between zero and
//! `min(cap, base · 2ⁿ)` (AWS's "full jitter", from "Exponential Backoff And Jitter", 2015):
//! a fleet that failed together — every probe during an ingest outage, every ETL worker
//! during a database restart — spreads its retries over the whole window instead of
//! returning in waves.
//!
//! Why our own ~20 lines and not the `backon` crate (already in the dependency graph through
//! `redis` and `kube-runtime`, so it would cost nothing to build): measured against
//! backon 1.6's `ExponentialBuilder` with jitter, base and cap set alike
//! (`cargo test -p fiberstack-plumbing backon -- --nocapture` prints the figures),
//! - its jitter is added on top of the step: waits lie in `[step, 2·step)`, so past the cap
//!   they run to twice the cap (the probe's 60 s cap gives waits up to 120 s) and are never
//!   shorter than the step. With 1,000 clients retrying through a 120 s outage, the median
//!   client got through 64 s after the service returned (probe settings; ETL settings: 19 s)
//!   against 17 s (9 s) with full jitter — at the price of about 20 % (40 %) more attempts
//!   against the dead service, which full jitter spreads evenly;
//! - it is a stateful iterator advanced once per wait, while our callers derive the wait from
//!   a failure count they already keep (the probe asks once per ingest URL in a round
//!   without advancing it).
//!
//! Keeping each caller's effective settings (caps, and waits that start near zero) would take
//! rebuilding full jitter around backon's iterator, at which point it is this file again.

use std::time::Duration;

/// The shortest wait [`Backoff::delay`] returns (unless the ceiling itself is shorter): a
/// loop that retries at once after a zero wait would spin.
pub const MIN_DELAY: Duration = Duration::from_millis(1);

/// How the wait is drawn below the ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the ceiling: deterministic, for callers alone in waiting.
    None,
    /// Uniform between zero and the ceiling.
    Full,
}

/// Exponential backoff: the ceiling starts at `base`, doubles per consecutive failure and
/// stops at `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    /// Full jitter between zero and `min(cap, base · 2ⁿ)`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            jitter: Jitter::Full,
        }
    }

    /// `min(cap, base · 2^failures)`: the longest wait after `failures` consecutive failures.
    pub fn ceiling(&self, failures: u32) -> Duration {
        // 2^31 times any base of a millisecond or more is past any sensible cap, and
        // `saturating_mul` keeps larger products at Duration::MAX.
        self.base
            .saturating_mul(1u32 << failures.min(31))
            .min(self.cap)
    }

    /// The wait after `failures` consecutive failures: at least [`MIN_DELAY`], at most
    /// [`Backoff::ceiling`].
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        let drawn = match self.jitter {
            Jitter::None => ceiling,
            // 1 − [0, 1) is (0, 1]: the ceiling itself can be drawn, zero cannot.
            Jitter::Full => ceiling.mul_f64(1.0 - fastrand::f64()),
        };
        drawn.max(MIN_DELAY.min(ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_from_base_to_cap() {
        let b = Backoff::new(100 * MS, Duration::from_secs(30));
        let ceilings: Vec<u128> = (0..12).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(
            ceilings,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        // No overflow, however long the outage.
        for n in [31, 32, 64, 1000, u32::MAX] {
            assert_eq!(b.ceiling(n), Duration::from_secs(30), "{n}");
        }
        let huge = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn without_jitter_the_delay_is_the_ceiling() {
        let b = Backoff {
            jitter: Jitter::None,
            ..Backoff::new(500 * MS, Duration::from_secs(60))
        };
        for n in 0..40 {
            assert_eq!(b.delay(n), b.ceiling(n));
        }
    }

    #[test]
    fn full_jitter_stays_between_the_floor_and_the_ceiling() {
        let b = Backoff::new(100 * MS, Duration::from_secs(30));
        for n in 0..40 {
            for _ in 0..200 {
                let d = b.delay(n);
                assert!(d >= MIN_DELAY && d <= b.ceiling(n), "{n}: {d:?}");
            }
        }
        // A ceiling under the floor is kept.
        let tiny = Backoff::new(Duration::from_micros(10), Duration::from_micros(50));
        assert!(tiny.delay(0) <= Duration::from_micros(10));
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_window() {
        let b = Backoff::new(500 * MS, Duration::from_secs(60));
        let draws: Vec<Duration> = (0..2000).map(|_| b.delay(20)).collect();
        let low = draws
            .iter()
            .filter(|d| **d < Duration::from_secs(15))
            .count();
        let high = draws
            .iter()
            .filter(|d| **d > Duration::from_secs(45))
            .count();
        // A quarter of the window each: about 500 of 2000; far from 0 and from 2000.
        assert!((300..700).contains(&low), "{low} below 15 s");
        assert!((300..700).contains(&high), "{high} above 45 s");
        let distinct: std::collections::HashSet<u128> =
            draws.iter().map(|d| d.as_millis()).collect();
        assert!(distinct.len() > 1000, "{}", distinct.len());
    }

    #[test]
    fn the_average_wait_grows_with_failures() {
        let b = Backoff::new(100 * MS, Duration::from_secs(30));
        let mean = |n: u32| (0..4000).map(|_| b.delay(n).as_secs_f64()).sum::<f64>() / 4000.0;
        let means: Vec<f64> = (0..10).map(mean).collect();
        for pair in means.windows(2) {
            assert!(pair[1] > pair[0], "{means:?}");
        }
        // Half the ceiling on average (within 10 %).
        assert!((means[9] - 15.0).abs() < 1.5, "{means:?}");
    }
}

/// The measurements behind keeping our own backoff (see the module's documentation).
#[cfg(test)]
mod against_backon {
    use std::time::Duration;

    use backon::{BackoffBuilder, ExponentialBuilder};

    use super::Backoff;

    const CLIENTS: usize = 1000;
    const OUTAGE: Duration = Duration::from_secs(120);

    /// Clients that all fail from t = 0 and retry until the service returns at [`OUTAGE`]:
    /// how many attempts hit the dead service, and how long after its return each client
    /// gets through (sorted). `wait(client, n)` is the wait after the n-th failure.
    fn outage(mut wait: impl FnMut(usize, u32) -> Duration) -> (usize, Vec<f64>) {
        let mut attempts = 0;
        let mut lags = Vec::with_capacity(CLIENTS);
        for client in 0..CLIENTS {
            let (mut at, mut failures) = (Duration::ZERO, 0);
            while at < OUTAGE {
                attempts += 1;
                failures += 1;
                at += wait(client, failures);
            }
            lags.push((at - OUTAGE).as_secs_f64());
        }
        lags.sort_by(f64::total_cmp);
        (attempts, lags)
    }

    #[test]
    fn backon_jitter_exceeds_its_cap_and_delays_recovery() {
        for (who, base, cap) in [
            ("probe", Duration::from_millis(500), Duration::from_secs(60)),
            ("etl", Duration::from_millis(100), Duration::from_secs(30)),
        ] {
            let ours = Backoff::new(base, cap);
            let mut theirs: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    ExponentialBuilder::new()
                        .with_min_delay(base)
                        .with_max_delay(cap)
                        .with_jitter()
                        .without_max_times()
                        .build()
                })
                .collect();
            let (our_attempts, our_lags) = outage(|_, n| ours.delay(n));
            let (their_attempts, their_lags) =
                outage(|client, _| theirs[client].next().expect("never ends"));
            let longest = |lags: &[f64]| lags[lags.len() - 1];
            let median = |lags: &[f64]| lags[lags.len() / 2];
            println!(
                "{who} (base {base:?}, cap {cap:?}), {CLIENTS} clients, {OUTAGE:?} outage: \
                 ours {our_attempts} attempts, back after median {:.1} s, last {:.1} s; \
                 backon {their_attempts} attempts, back after median {:.1} s, last {:.1} s",
                median(&our_lags),
                longest(&our_lags),
                median(&their_lags),
                longest(&their_lags),
            );
            // What the module's documentation says, kept true: backon waits past the cap…
            let mut backon_at_cap = ExponentialBuilder::new()
                .with_min_delay(base)
                .with_max_delay(cap)
                .with_jitter()
                .without_max_times()
                .build()
                .skip(20);
            let past_cap = (0..1000)
                .filter(|_| backon_at_cap.next().expect("never ends") > cap)
                .count();
            assert!(past_cap > 900, "{who}: {past_cap} of 1000 past the cap");
            assert!(our_lags.iter().all(|lag| *lag <= cap.as_secs_f64()));
            // …and brings clients back later than full jitter does.
            assert!(
                median(&their_lags) > 1.5 * median(&our_lags),
                "{who}: backon {:.1} s, ours {:.1} s",
                median(&their_lags),
                median(&our_lags)
            );
        }
    }
}
