//! The ingest service's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// accepted, invalid, unauthorized, too_large, rate_limited, unavailable, backlog
    pub outcome: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    pub requests: Family<OutcomeLabels, Counter>,
    pub samples_accepted: Counter,
    pub samples_rejected: Counter,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fiber_ingest_requests",
            "Batch requests by outcome",
            self.requests.clone(),
        );
        registry.register(
            "fiber_ingest_samples_accepted",
            "Samples appended to the stream",
            self.samples_accepted.clone(),
        );
        registry.register(
            "fiber_ingest_samples_rejected",
            "Samples refused as invalid",
            self.samples_rejected.clone(),
        );
    }

    pub fn outcome(&self, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}
