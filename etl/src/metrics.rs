//! The ETL's Prometheus metrics, read from the consumer's [`Stats`] at each scrape, in the
//! same shape as the ingest service's (`*_total` counters by stage).

use std::sync::Arc;

use fiberstack_plumbing::metrics::{counter, gauge};
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
            "fiber_etl_entries_received",
            "Stream entries read or reclaimed",
            &s.entries_received,
        )?;
        counter(
            &mut e,
            "fiber_etl_entries_acked",
            "Stream entries acknowledged",
            &s.entries_acked,
        )?;
        counter(
            &mut e,
            "fiber_etl_samples_written",
            "Samples in the database after a committed write",
            &s.samples_written,
        )?;
        counter(
            &mut e,
            "fiber_etl_samples_inserted",
            "Samples new to the database (the rest were redeliveries)",
            &s.samples_inserted,
        )?;
        counter(
            &mut e,
            "fiber_etl_dead_lettered",
            "Entries or samples sent to the dead-letter stream",
            &s.dead_lettered,
        )?;
        counter(
            &mut e,
            "fiber_etl_write_retries",
            "Database writes failed and retried",
            &s.retries,
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
        Ok(())
    }
}

/// A registry exposing a consumer's counters and write latency.
pub fn registry(stats: Arc<Stats>) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "fiber_etl_write_seconds",
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
        let text = encode(&registry(stats));
        assert!(
            text.contains("fiber_etl_samples_written_total 42"),
            "{text}"
        );
        assert!(text.contains("fiber_etl_pending 3"), "{text}");
        assert!(text.contains("fiber_etl_write_seconds_count 1"), "{text}");
    }
}
