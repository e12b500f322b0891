//! The ingest service's metrics, in the data path's one shape (see
//! `fiberstack_plumbing::metrics`): samples received in valid batches, sent (appended to the
//! stream), discarded as invalid, send errors by type and the append's duration; and the
//! HTTP requests by outcome.

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

pub struct Metrics {
    pub requests: Family<OutcomeLabels, Counter>,
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
