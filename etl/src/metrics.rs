//! The ETL's metrics, read from the consumer's [`Stats`] at each scrape, in the data path's
//! one shape (see `fiberstack_plumbing::metrics`): entries received from the stream, samples
//! sent (committed to the database), entries discarded to the dead-letter stream, send
//! errors, the write's duration; and the stream's own gauges.

use std::sync::Arc;

use std::sync::atomic::Ordering;

use fiberstack_plumbing::metrics::{counter, gauge, labelled_counter};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::consumer::Stats;

#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        counter(
            &mut e,
            "fiber_etl_received_entries",
            "Stream entries read or reclaimed",
            &s.entries_received,
        )?;
        counter(
            &mut e,
            "fiber_etl_acknowledged_entries",
            "Stream entries acknowledged",
            &s.entries_acked,
        )?;
        counter(
            &mut e,
            "fiber_etl_sent_samples",
            "Samples in the database after a committed write",
            &s.samples_written,
        )?;
        counter(
            &mut e,
            "fiber_etl_sent_new_samples",
            "Samples new to the database (the rest were redeliveries)",
            &s.samples_inserted,
        )?;
        labelled_counter(
            &mut e,
            "fiber_etl_discarded_entries",
            "Entries (or single samples of an entry) moved to the dead-letter stream, by reason",
            [(
                vec![("reason", "dead_letter")],
                s.dead_lettered.load(Ordering::Relaxed),
            )],
        )?;
        labelled_counter(
            &mut e,
            "fiber_etl_errors",
            "Database writes that failed (and were retried), by type",
            [(
                vec![("stage", "send"), ("error_type", "database")],
                s.retries.load(Ordering::Relaxed),
            )],
        )?;
        gauge(
            &mut e,
            "fiber_etl_stream_length",
            "Entries in the region's stream (about the backlog)",
            &s.stream_length,
        )?;
        gauge(
            &mut e,
            "fiber_etl_pending",
            "Entries delivered and not acknowledged",
            &s.pending,
        )?;
        gauge(
            &mut e,
            "fiber_etl_dead_letters",
            "Entries in the region's dead-letter stream fiber:dlq:<region>, waiting for a person",
            &s.dead_letters,
        )?;
        Ok(())
    }
}

/// A registry exposing a consumer's counters and write latency.
pub fn registry(stats: Arc<Stats>) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "fiber_etl_send_duration_seconds",
        "Duration of committed database writes",
        stats.write_seconds.clone(),
    );
    registry.register_collector(Box::new(StatsCollector(stats)));
    registry
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use fiberstack_plumbing::metrics::encode;

    use super::*;

    #[test]
    fn renders_counters_from_stats() {
        let stats = Arc::new(Stats::default());
        stats.samples_written.store(42, Ordering::Relaxed);
        stats.pending.store(3, Ordering::Relaxed);
        stats.write_seconds.observe(0.004);
        stats.retries.store(2, Ordering::Relaxed);
        stats.dead_lettered.store(1, Ordering::Relaxed);
        stats.dead_letters.store(4, Ordering::Relaxed);
        let text = encode(&registry(stats));
        assert!(text.contains("fiber_etl_dead_letters 4"), "{text}");
        assert!(text.contains("fiber_etl_sent_samples_total 42"), "{text}");
        assert!(text.contains("fiber_etl_pending 3"), "{text}");
        assert!(
            text.contains("fiber_etl_send_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"fiber_etl_errors_total{stage="send",error_type="database"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"fiber_etl_discarded_entries_total{reason="dead_letter"} 1"#),
            "{text}"
        );
    }
}
