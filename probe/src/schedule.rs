//! When each target's rounds run: once per interval, each target at its own offset in the
//! interval so that a thousand targets do not fire together. Target `i` of `n` starts in the
//! `i`-th slice of length `interval / n`, at a random point of that slice (jitter), and keeps
//! that phase: rounds are `interval` apart. A round that overruns (it cannot: the model
//! requires a round to fit in its interval) skips to the next tick instead of piling up.

use std::sync::Arc;
use std::time::Duration;

use fiberstack_model::{Sample, Target};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::checks::{self, CheckContext};

/// The first-round offsets of `n` targets over `interval`.
pub fn offsets(n: usize, interval: Duration) -> Vec<Duration> {
    if n == 0 {
        return Vec::new();
    }
    let slice = interval / n as u32;
    (0..n)
        .map(|i| slice * i as u32 + slice.mul_f64(fastrand::f64()))
        .collect()
}

/// Where samples go once measured.
pub trait Sink: Send + Sync + 'static {
    fn record(&self, sample: Sample);
}

/// Starts one task per target in `set`; they run until the set is dropped or aborted.
pub fn start(
    set: &mut JoinSet<()>,
    targets: &[Target],
    interval: Duration,
    ctx: CheckContext,
    sink: Arc<dyn Sink>,
) {
    let start = Instant::now();
    for (target, offset) in targets.iter().zip(offsets(targets.len(), interval)) {
        let target = target.clone();
        let ctx = ctx.clone();
        let sink = sink.clone();
        set.spawn(async move {
            let mut next = start + offset;
            loop {
                tokio::time::sleep_until(next).await;
                let sample = checks::run(&target, &ctx).await;
                sink.record(sample);
                next += interval;
                let now = Instant::now();
                while next < now {
                    next += interval;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_spread_over_the_interval_one_per_slice() {
        let interval = Duration::from_secs(10);
        let o = offsets(1000, interval);
        assert_eq!(o.len(), 1000);
        let slice = interval / 1000;
        for (i, d) in o.iter().enumerate() {
            assert!(
                *d >= slice * i as u32 && *d < slice * (i as u32 + 1),
                "{i}: {d:?}"
            );
        }
        let o2 = offsets(1000, interval);
        assert_ne!(o, o2, "the point within each slice is random");
    }
}
