//! The disk buffer through its public interface, on real files.

mod support;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use fiber_probe::buffer::Buffer;
use fiber_probe::metrics::{DropReason, Stats};
use fiberstack_model::{CheckKind, Sample};
use support::Scratch;

fn sample(i: i64) -> Sample {
    let mut s = Sample::new(
        Utc.timestamp_opt(1_800_000_000 + i, 0).unwrap(),
        "t",
        CheckKind::Icmp,
        true,
    );
    s.latency_ms = Some(1.5);
    s.sent = Some(5);
    s.received = Some(5);
    s.packet_loss = Some(0.0);
    s
}

#[test]
fn full_buffer_drops_the_oldest_counts_them_and_keeps_the_newest_across_a_restart() {
    let scratch = Scratch::new("buffer-full");
    let dir = scratch.path("buf");
    let stats = Arc::new(Stats::default());
    let max = 1 << 20;
    let total = 12_000;
    {
        let mut b = Buffer::open(&dir, max, stats.clone()).unwrap();
        for i in 0..total {
            b.append(&sample(i)).unwrap();
        }
        b.sync().unwrap();
        // Half a batch delivered before the outage went on.
        let head = b.peek(10).unwrap();
        b.ack(head.end).unwrap();
    }
    let dropped = stats.dropped_total(DropReason::BufferFull);
    assert!(dropped > 0);
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        on_disk <= max + 64,
        "{on_disk} bytes on disk for a {max} byte buffer"
    );

    let b = Buffer::open(&dir, max, Arc::new(Stats::default())).unwrap();
    let kept = b.peek(usize::MAX).unwrap().samples;
    assert_eq!(
        dropped + 10 + kept.len() as u64,
        total as u64,
        "every sample is delivered, kept or counted as dropped"
    );
    let first = kept[0].time.timestamp() - 1_800_000_000;
    assert_eq!(
        first as u64,
        dropped + 10,
        "the oldest went first, in order"
    );
    assert!(kept.windows(2).all(|w| w[0].time < w[1].time));
    assert_eq!(kept.last().unwrap().time, sample(total - 1).time);
}
