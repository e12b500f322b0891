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

/// The `content-type` of what [`encode_text`] writes: the classic Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // The encoder fails only when its writer does, and a String's never does (our collectors
    // add no errors of their own).
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// The registry in the classic Prometheus text format (0.0.4).
pub fn encode_text(registry: &Registry) -> String {
    classic_text(&encode(registry))
}

/// What `GET /metrics` answers — its content type and body — for a request's `Accept`
/// header, as Prometheus' own client libraries negotiate: OpenMetrics when the scraper lists
/// it (Prometheus does by default), the classic text format otherwise (`curl`, a scraper
/// configured for text only). The classic format is also the one `promtool check metrics`
/// reads: to its parser an OpenMetrics counter (`# TYPE x counter` over samples `x_total`)
/// is an untyped `x_total` without help.
pub fn exposition(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    if accepts_openmetrics(accept.unwrap_or("")) {
        (CONTENT_TYPE, encode(registry))
    } else {
        (TEXT_CONTENT_TYPE, encode_text(registry))
    }
}

/// Whether an `Accept` header lists `application/openmetrics-text` with a non-zero quality.
fn accepts_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// The classic text format of what prometheus-client encoded as OpenMetrics: a counter's
/// HELP and TYPE name its samples (`x_total`) and its `x_created` samples go, an info
/// metric becomes the gauge `x_info`, `unknown` is `untyped`, and the `# UNIT` and `# EOF`
/// lines and exemplars go (the classic format has none of them).
fn classic_text(openmetrics: &str) -> String {
    // Family name -> (suffix of its samples, type in the classic format).
    let mut renamed = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        {
            let classic = match kind {
                "counter" => Some(("_total", "counter")),
                "info" => Some(("_info", "gauge")),
                _ => None,
            };
            if let Some(classic) = classic {
                renamed.insert(name, classic);
            }
        }
    }
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let name_of = |name: &str| match renamed.get(name) {
            Some((suffix, _)) => format!("{name}{suffix}"),
            None => name.to_owned(),
        };
        if let Some((name, help)) = line
            .strip_prefix("# HELP ")
            .and_then(|rest| rest.split_once(' '))
        {
            text.push_str(&format!("# HELP {} {help}\n", name_of(name)));
            continue;
        }
        if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        {
            let kind = match (renamed.get(name), kind) {
                (Some((_, classic)), _) => classic,
                (None, "unknown") => "untyped",
                (None, kind) => kind,
            };
            text.push_str(&format!("# TYPE {} {kind}\n", name_of(name)));
            continue;
        }
        let series = line.split(['{', ' ']).next().unwrap_or("");
        let created = series.strip_suffix("_created").is_some_and(|family| {
            renamed
                .get(family)
                .is_some_and(|(suffix, _)| *suffix == "_total")
        });
        if created {
            continue;
        }
        text.push_str(without_exemplar(line));
        text.push('\n');
    }
    text
}

/// A sample line without its exemplar, which follows the value after ` # `.
fn without_exemplar(line: &str) -> &str {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    // The value starts after the label set, whose quoted values may hold anything.
    let mut value_from = name_end;
    if line[name_end..].starts_with('{') {
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in line[name_end..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    value_from = name_end + i;
                    break;
                }
                _ => {}
            }
        }
    }
    match line[value_from..].find(" # ") {
        Some(at) => &line[..value_from + at],
        None => line,
    }
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

    #[test]
    fn the_classic_text_names_counters_by_their_samples_and_drops_what_it_lacks() {
        let openmetrics = concat!(
            "# HELP demo_sent Things sent.\n",
            "# TYPE demo_sent counter\n",
            "# UNIT demo_sent bytes\n",
            "demo_sent_total{to=\"a # b\\\"}\"} 3 # {trace_id=\"7\"} 1.0\n",
            "demo_sent_created{to=\"a # b\\\"}\"} 1700000000.0\n",
            "# HELP demo_build Build.\n",
            "# TYPE demo_build info\n",
            "demo_build_info{version=\"1\"} 1\n",
            "# HELP demo_odd Odd.\n",
            "# TYPE demo_odd unknown\n",
            "demo_odd 2\n",
            "# HELP demo_queued Things waiting.\n",
            "# TYPE demo_queued gauge\n",
            "demo_queued 7\n",
            "# EOF\n",
        );
        let classic = concat!(
            "# HELP demo_sent_total Things sent.\n",
            "# TYPE demo_sent_total counter\n",
            "demo_sent_total{to=\"a # b\\\"}\"} 3\n",
            "# HELP demo_build_info Build.\n",
            "# TYPE demo_build_info gauge\n",
            "demo_build_info{version=\"1\"} 1\n",
            "# HELP demo_odd Odd.\n",
            "# TYPE demo_odd untyped\n",
            "demo_odd 2\n",
            "# HELP demo_queued Things waiting.\n",
            "# TYPE demo_queued gauge\n",
            "demo_queued 7\n",
        );
        assert_eq!(classic_text(openmetrics), classic);
    }

    #[derive(Debug)]
    struct Labelled;

    impl Collector for Labelled {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            labelled_counter(
                &mut e,
                "demo_discarded",
                "Things dropped, by reason",
                [(vec![("reason", "too_old")], 2)],
            )
        }
    }

    #[test]
    fn promtool_finds_the_classic_text_clean_and_misreads_openmetrics() {
        let values = Arc::new([AtomicU64::new(1), AtomicU64::new(2)]);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Two(values)));
        registry.register_collector(Box::new(Labelled));
        let histogram = send_duration();
        histogram.observe(0.02);
        registry.register("demo_send_duration_seconds", "Hand-offs", histogram);
        fiberstack_e2e::promtool::check_metrics(&encode_text(&registry)).unwrap();
        // Why scrapes that do not ask for OpenMetrics get the classic text.
        let e = fiberstack_e2e::promtool::check_metrics(&encode(&registry)).unwrap_err();
        assert!(format!("{e:#}").contains("demo_sent_total"), "{e:#}");
    }

    #[test]
    fn openmetrics_goes_to_scrapers_that_ask_for_it() {
        let registry = Registry::default();
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, expected) in [
            (Some(prometheus), CONTENT_TYPE),
            (Some("Application/OpenMetrics-Text"), CONTENT_TYPE),
            (None, TEXT_CONTENT_TYPE),
            (Some("*/*"), TEXT_CONTENT_TYPE),
            (Some("text/plain;version=0.0.4"), TEXT_CONTENT_TYPE),
            (Some("application/openmetrics-text;q=0"), TEXT_CONTENT_TYPE),
        ] {
            let (content_type, body) = exposition(&registry, accept);
            assert_eq!(content_type, expected, "Accept: {accept:?}");
            assert_eq!(
                body.ends_with("# EOF\n"),
                expected == CONTENT_TYPE,
                "{body}"
            );
        }
    }
}
