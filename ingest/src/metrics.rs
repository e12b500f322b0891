//! The ingest service's metrics, in the data path's one shape (see
//! `fiberstack_plumbing::metrics`): samples received in valid batches, sent (appended to the
//! stream), discarded as invalid, send errors by type and the append's duration; and the
//! HTTP requests by outcome, and every request's duration by route and status code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// accepted, invalid, unauthorized, forbidden (another region's batch), too_large,
    /// rate_limited, unavailable, backlog
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// invalid: the sample broke a rule of the model.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// send: appending to the stream.
    pub stage: &'static str,
    /// unavailable (Redis down or slow) or backlog (the stream is over its limit).
    pub error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's path pattern (`/api/v1/samples`, `/metrics`, …); `unmatched` for a path
    /// no route serves (never the path itself: the series stay few whatever clients ask).
    pub route: String,
    /// The HTTP status code answered.
    pub code: u16,
}

/// Upper bounds (seconds) of [`Metrics::request_duration`]'s buckets: 0.25 ms to 10 s in
/// 1–2.5–5 steps, fine enough to read a p99 of a few milliseconds and wide enough for the
/// 2 s Redis deadline and a slow read query.
pub const REQUEST_DURATION_BUCKETS: [f64; 15] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

fn request_duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}

pub struct Metrics {
    pub requests: Family<OutcomeLabels, Counter>,
    /// Every HTTP request, from its head read to its response's head written.
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub samples_received: Counter,
    pub samples_sent: Counter,
    pub samples_discarded: Family<ReasonLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub send_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_duration_histogram),
            samples_received: Counter::default(),
            samples_sent: Counter::default(),
            samples_discarded: Family::default(),
            errors: Family::default(),
            send_duration: fiberstack_plumbing::metrics::send_duration(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fiber_ingest_requests",
            "Batch requests by outcome",
            self.requests.clone(),
        );
        registry.register(
            "fiber_ingest_request_duration_seconds",
            "HTTP requests by route and status code, from the request read to the response's head",
            self.request_duration.clone(),
        );
        registry.register(
            "fiber_ingest_received_samples",
            "Samples in batches that passed authentication and parsing",
            self.samples_received.clone(),
        );
        registry.register(
            "fiber_ingest_sent_samples",
            "Samples appended to the region's stream",
            self.samples_sent.clone(),
        );
        registry.register(
            "fiber_ingest_discarded_samples",
            "Samples refused, by reason (the rest of their batch is kept)",
            self.samples_discarded.clone(),
        );
        registry.register(
            "fiber_ingest_errors",
            "Failed appends to the stream (the batch is refused with 503 and retried by the probe), by type",
            self.errors.clone(),
        );
        registry.register(
            "fiber_ingest_send_duration_seconds",
            "Appends to the region's stream, however they ended",
            self.send_duration.clone(),
        );
    }

    pub fn outcome(&self, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a request answered `code` after `seconds`.
    pub fn request(&self, route: &str, code: u16, seconds: f64) {
        self.request_duration
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                code,
            })
            .observe(seconds);
    }

    pub fn send_error(&self, error_type: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                stage: "send",
                error_type,
            })
            .inc();
    }

    pub fn discarded(&self, reason: &'static str, n: u64) {
        self.samples_discarded
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }
}
