//! The operator's Prometheus metrics: reconciles, errors by kind, reconcile duration, whether
//! this replica leads, and fleet health per probe and target ([`crate::measurements`]).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

/// A status write: the resource kind, and `written` or `unchanged` (skipped).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusWriteLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// An owned object's apply: its kind, and `applied` or `unchanged` (skipped).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    pub kind: String,
    pub result: &'static str,
}

/// A read from the API server that a cache could not answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    pub kind: String,
}

/// A notification attempt: the FiberNotifier, its kind, and `sent` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub namespace: String,
    pub notifier: String,
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub kind: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.002, 2.0, 14))
}

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabel, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    pub leader: Gauge,
    /// Objects whose last fresh version or applied render the operator remembers.
    pub remembered: Gauge,
    /// Status writes by kind and whether they were made or skipped (unchanged status).
    pub status_writes: Family<StatusWriteLabels, Counter>,
    /// Applies of owned objects, made or skipped (unchanged render, untouched object).
    pub applies: Family<ApplyLabels, Counter>,
    /// Reads from the API server that a cache could not answer.
    pub api_reads: Family<ReadLabels, Counter>,
    /// Notifications sent or failed, per FiberNotifier.
    pub notifications: Family<NotificationLabels, Counter>,
    /// Fleet health per probe and target, from the statuses written.
    pub measurements: crate::measurements::Measurements,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration =
            Family::<ControllerLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let leader = Gauge::default();
        let remembered = Gauge::default();
        let notifications = Family::<NotificationLabels, Counter>::default();
        let status_writes = Family::<StatusWriteLabels, Counter>::default();
        let applies = Family::<ApplyLabels, Counter>::default();
        let api_reads = Family::<ReadLabels, Counter>::default();
        let mut registry = Registry::default();
        registry.register(
            "fiberstack_operator_applies",
            "Server-side applies of owned objects by kind: applied, or skipped because the render and the object were unchanged",
            applies.clone(),
        );
        registry.register(
            "fiberstack_operator_api_reads",
            "Reads from the API server a reconcile made because its cache could not answer (not synced yet, or the object changed since the operator last saw it), by kind",
            api_reads.clone(),
        );
        registry.register(
            "fiberstack_operator_status_writes",
            "Status writes by resource kind: written, or skipped because the status did not change",
            status_writes.clone(),
        );
        registry.register(
            "fiberstack_notifications",
            "Alert notifications, by FiberNotifier (namespace, notifier, kind) and result (sent or failed)",
            notifications.clone(),
        );
        registry.register(
            "fiberstack_operator_reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        registry.register(
            "fiberstack_operator_reconcile_errors",
            "Reconciles that failed, by controller and error kind",
            errors.clone(),
        );
        registry.register(
            "fiberstack_operator_reconcile_duration_seconds",
            "Duration of reconciles, by controller",
            duration.clone(),
        );
        registry.register(
            "fiberstack_operator_remembered_objects",
            "Objects whose last seen version or last applied render the operator keeps in memory (dropped for deleted objects at each prune)",
            remembered.clone(),
        );
        registry.register(
            "fiberstack_operator_leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let measurements = crate::measurements::Measurements::default();
        registry.register_collector(Box::new(measurements.clone()));
        Self {
            reconciles,
            errors,
            duration,
            leader,
            remembered,
            status_writes,
            applies,
            api_reads,
            notifications,
            measurements,
            registry,
        }
    }
}

impl Metrics {
    pub fn applied(&self, kind: &str, made: bool) {
        self.applies
            .get_or_create(&ApplyLabels {
                kind: kind.to_owned(),
                result: if made { "applied" } else { "unchanged" },
            })
            .inc();
    }

    pub fn api_reads(&self, kind: impl Into<String>) {
        self.api_reads
            .get_or_create(&ReadLabels { kind: kind.into() })
            .inc();
    }

    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, controller: &'static str, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { controller, kind })
            .inc();
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        fiberstack_plumbing::metrics::encode(&self.registry)
    }

    /// What `GET /metrics` answers for a request's `Accept` header: content type and body
    /// (OpenMetrics when asked for, else the classic text format; see
    /// [`fiberstack_plumbing::metrics::exposition`]).
    pub fn exposition(&self, accept: Option<&str>) -> (&'static str, String) {
        fiberstack_plumbing::metrics::exposition(&self.registry, accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_and_errors_by_kind() {
        let m = Metrics::default();
        m.reconciled("probe", Duration::from_millis(5));
        m.failed("probe", "conflict");
        let text = m.render();
        assert!(
            text.contains("fiberstack_operator_reconciles_total{controller=\"probe\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fiberstack_operator_reconcile_errors_total{controller=\"probe\",kind=\"conflict\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "fiberstack_operator_reconcile_duration_seconds_count{controller=\"probe\"} 1"
        ));
    }
}
