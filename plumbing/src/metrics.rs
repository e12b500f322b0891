//! The `/metrics` exposition every binary serves: its content type, the registry's text, and
//! counters and gauges read from atomics at each scrape (a part's statistics stay plain
//! atomics, updated without knowing about Prometheus).
//!
//! **One shape for the data path's components** (probe, ingest, ETL), as Vector gives its
//! components, so one dashboard or alert rule reads any of them:
//!
//! | series | what |
//! |---|---|
//! | `fiber_<component>_received_<unit>_total` | what came in (probe: samples measured) |
//! | `fiber_<component>_sent_<unit>_total` | what the next hop acknowledged (ingest, Redis, the database) |
//! | `fiber_<component>_discarded_<unit>_total{reason}` | what will never be sent on |
//! | `fiber_<component>_errors_total{stage, error_type}` | failed attempts (`stage`: receive or send); retried unless also discarded |
//! | `fiber_<component>_send_duration_seconds` | histogram of hand-offs to the next hop |
//!
//! `<unit>` is `samples` (or `entries`, the ETL's stream entries). Everything else a
//! component exports (buffer size, stream length, requests by outcome) is its own, named
//! `fiber_<component>_<what>`.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `content-type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // The encoder fails only when its writer does, and a String's never does (our collectors
    // add no errors of their own).
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// A counter (`<name>_total`) whose value is `value` now; for a collector's `encode`.
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: &AtomicU64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value.load(Ordering::Relaxed));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter family: one `<name>_total` series per label set, each with its value now.
pub fn labelled_counter<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let family = prometheus_client::metrics::family::Family::<
        Vec<(&'a str, &'a str)>,
        prometheus_client::metrics::counter::Counter,
    >::default();
    for (labels, value) in values {
        family.get_or_create(&labels).inc_by(value);
    }
    family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)
}

/// The buckets of every `send_duration_seconds`: 1 ms to 10 s.
pub fn send_duration() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.5, 11),
    )
}

/// A gauge whose value is `value` now; for a collector's `encode`.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: &AtomicU64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value.load(Ordering::Relaxed) as i64);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_client::collector::Collector;

    use super::*;

    #[derive(Debug)]
    struct Two(Arc<[AtomicU64; 2]>);

    impl Collector for Two {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            counter(&mut e, "demo_sent", "Things sent", &self.0[0])?;
            gauge(&mut e, "demo_queued", "Things waiting", &self.0[1])
        }
    }

    #[test]
    fn reads_the_atomics_at_each_encoding() {
        let values = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Two(values.clone())));
        values[0].store(42, Ordering::Relaxed);
        values[1].store(7, Ordering::Relaxed);
        let text = encode(&registry);
        assert!(text.contains("# TYPE demo_sent counter"), "{text}");
        assert!(text.contains("demo_sent_total 42"), "{text}");
        assert!(text.contains("# TYPE demo_queued gauge"), "{text}");
        assert!(text.contains("demo_queued 7"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        values[0].store(43, Ordering::Relaxed);
        assert!(encode(&registry).contains("demo_sent_total 43"));
    }
}
