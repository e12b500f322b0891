//! Fleet health as Prometheus series, for alerting: what the FiberProbe status already says,
//! per probe and per target — healthy, p50/p95 latency, packet loss, uptime, samples over
//! the status window (15 minutes), certificate expiry — in base units (seconds, ratios 0–1,
//! Unix time), and per probe how many nodes should report and how many do.
//!
//! Labels: `namespace`, `probe`, `region`, and for targets `target` and `kind`. Cardinality is
//! bounded by the specs: three series per probe (`healthy`, `desired_nodes`,
//! `reporting_nodes`), at most seven per target with data — six, plus
//! `certificate_expiry_timestamp_seconds` for an HTTPS target whose certificate was seen (a
//! probe holds at most 200 targets, so at most 1,403 series per probe). A target without
//! samples in the window has no series (absent, not zero), and a deleted probe's series go
//! with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::crd::{FiberProbe, FiberProbeStatus, Health, TargetState};

#[derive(Debug, Clone, PartialEq)]
struct TargetSeries {
    target: String,
    kind: &'static str,
    healthy: bool,
    samples: i64,
    latency_p50_seconds: Option<f64>,
    latency_p95_seconds: Option<f64>,
    packet_loss_ratio: Option<f64>,
    uptime_ratio: Option<f64>,
    /// The certificate's notAfter, Unix seconds.
    certificate_expiry: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
struct ProbeSeries {
    region: String,
    /// None when the probe's health is neither Healthy nor Degraded.
    healthy: Option<bool>,
    /// Nodes that should run a probe pod (status.desiredProbes).
    desired_nodes: i32,
    /// Nodes whose samples arrived within 3 intervals (status.reportingProbes).
    reporting_nodes: i32,
    targets: Vec<TargetSeries>,
}

/// The last status written of every probe, read at each scrape.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    probes: Arc<Mutex<BTreeMap<(String, String), ProbeSeries>>>,
}

impl Measurements {
    /// Records what a status write said of `probe`.
    pub fn record(&self, probe: &FiberProbe, status: &FiberProbeStatus) {
        let key = (
            probe.metadata.namespace.clone().unwrap_or_default(),
            probe.metadata.name.clone().unwrap_or_default(),
        );
        let kind_of = |name: &str| {
            probe
                .spec
                .targets
                .iter()
                .find(|t| t.name == name)
                .and_then(|t| t.check().ok())
                .map_or("unknown", |c| c.kind().as_str())
        };
        let ms = |v: Option<f64>| v.map(|ms| ms / 1000.0);
        let pct = |v: Option<f64>| v.map(|p| p / 100.0);
        let series = ProbeSeries {
            region: probe.spec.region.clone(),
            healthy: match status.health {
                Health::Healthy => Some(true),
                Health::Degraded => Some(false),
                _ => None,
            },
            desired_nodes: status.desired_probes,
            reporting_nodes: status.reporting_probes,
            targets: status
                .targets
                .iter()
                .filter(|t| t.state != TargetState::NoData)
                .map(|t| TargetSeries {
                    target: t.name.clone(),
                    kind: kind_of(&t.name),
                    healthy: t.state == TargetState::Healthy,
                    samples: t.summary.samples,
                    latency_p50_seconds: ms(t.summary.latency_p50_ms),
                    latency_p95_seconds: ms(t.summary.latency_p95_ms),
                    packet_loss_ratio: pct(t.summary.packet_loss_pct),
                    uptime_ratio: pct(t.summary.uptime_pct),
                    certificate_expiry: t
                        .certificate_expires_at
                        .as_deref()
                        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                        .map(|at| at.timestamp() as f64),
                })
                .collect(),
        };
        self.probes.lock().expect("lock").insert(key, series);
    }

    /// Keeps only the series of the probes `keep` says still exist.
    pub fn retain(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.probes
            .lock()
            .expect("lock")
            .retain(|(ns, name), _| keep(ns, name));
    }

    /// Drops a deleted probe's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.probes
            .lock()
            .expect("lock")
            .remove(&(namespace.to_owned(), name.to_owned()));
    }
}

type Labels = Vec<(&'static str, String)>;

fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
    family.encode(e.encode_descriptor(name, help, None, family.metric_type())?)
}

impl Collector for Measurements {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let probes = self.probes.lock().expect("lock").clone();
        let probe_labels = |(ns, name): &(String, String), p: &ProbeSeries| -> Labels {
            vec![
                ("namespace", ns.clone()),
                ("probe", name.clone()),
                ("region", p.region.clone()),
            ]
        };
        family(
            &mut e,
            "fiberstack_probe_healthy",
            "1 when every target of the probe meets its thresholds (Healthy), 0 when Degraded; absent otherwise",
            probes.iter().filter_map(|(k, p)| {
                p.healthy
                    .map(|h| (probe_labels(k, p), if h { 1.0 } else { 0.0 }))
            }),
        )?;
        family(
            &mut e,
            "fiberstack_probe_desired_nodes",
            "Nodes that should run a probe pod of the probe (status.desiredProbes)",
            probes
                .iter()
                .map(|(k, p)| (probe_labels(k, p), f64::from(p.desired_nodes))),
        )?;
        family(
            &mut e,
            "fiberstack_probe_reporting_nodes",
            "Nodes whose samples of the probe arrived within the last 3 intervals (status.reportingProbes)",
            probes
                .iter()
                .map(|(k, p)| (probe_labels(k, p), f64::from(p.reporting_nodes))),
        )?;
        let targets = || {
            probes.iter().flat_map(move |(k, p)| {
                p.targets.iter().map(move |t| {
                    let mut labels = probe_labels(k, p);
                    labels.push(("target", t.target.clone()));
                    labels.push(("kind", t.kind.to_owned()));
                    (labels, t)
                })
            })
        };
        type Pick = fn(&TargetSeries) -> Option<f64>;
        let per_target: [(&str, &str, Pick); 7] = [
            (
                "fiberstack_target_healthy",
                "1 when the target meets every threshold over the window, 0 when it breaches one",
                |t| Some(if t.healthy { 1.0 } else { 0.0 }),
            ),
            (
                "fiberstack_target_samples",
                "Samples of the target in the window",
                |t| Some(t.samples as f64),
            ),
            (
                "fiberstack_target_latency_p50_seconds",
                "Median latency over the window",
                |t| t.latency_p50_seconds,
            ),
            (
                "fiberstack_target_latency_p95_seconds",
                "95th-percentile latency over the window",
                |t| t.latency_p95_seconds,
            ),
            (
                "fiberstack_target_packet_loss_ratio",
                "Mean ICMP packet loss over the window, 0 to 1",
                |t| t.packet_loss_ratio,
            ),
            (
                "fiberstack_target_uptime_ratio",
                "Share of checks that succeeded over the window, 0 to 1",
                |t| t.uptime_ratio,
            ),
            (
                "fiberstack_target_certificate_expiry_timestamp_seconds",
                "HTTPS: when the server's certificate expires (notAfter), Unix time; the earliest the nodes saw",
                |t| t.certificate_expiry,
            ),
        ];
        for (name, help, pick) in per_target {
            family(
                &mut e,
                name,
                help,
                targets().filter_map(|(labels, t)| pick(t).map(|v| (labels, v))),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Summary, TargetStatus};
    use crate::fixtures::probe;

    fn registry(m: &Measurements) -> prometheus_client::registry::Registry {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(m.clone()));
        registry
    }

    fn render(m: &Measurements) -> String {
        fiberstack_plumbing::metrics::encode(&registry(m))
    }

    #[test]
    fn a_status_becomes_series_in_base_units_and_a_deleted_probe_loses_them() {
        let m = Measurements::default();
        let status = FiberProbeStatus {
            health: Health::Degraded,
            targets: vec![
                TargetStatus {
                    name: "google-dns".into(),
                    summary: Summary {
                        samples: 90,
                        latency_p50_ms: Some(20.0),
                        latency_p95_ms: Some(250.0),
                        packet_loss_pct: Some(5.0),
                        uptime_pct: Some(98.0),
                        late_samples: None,
                    },
                    state: TargetState::Breaching,
                    ..Default::default()
                },
                TargetStatus {
                    name: "api".into(),
                    summary: Summary {
                        samples: 15,
                        ..Default::default()
                    },
                    state: TargetState::Healthy,
                    certificate_expires_at: Some("2027-01-15T08:00:00Z".into()),
                    ..Default::default()
                },
                TargetStatus {
                    name: "db".into(),
                    state: TargetState::NoData,
                    ..Default::default()
                },
            ],
            desired_probes: 3,
            reporting_probes: 2,
            ..Default::default()
        };
        m.record(&probe(), &status);
        let text = render(&m);
        let labels = r#"namespace="fiberstack",probe="accra-edge",region="ghana""#;
        let target = format!(r#"{labels},target="google-dns",kind="icmp""#);
        let api = format!(r#"{labels},target="api",kind="http""#);
        for line in [
            format!("fiberstack_probe_healthy{{{labels}}} 0.0"),
            format!("fiberstack_probe_desired_nodes{{{labels}}} 3.0"),
            format!("fiberstack_probe_reporting_nodes{{{labels}}} 2.0"),
            format!("fiberstack_target_certificate_expiry_timestamp_seconds{{{api}}} 1800000000.0"),
            format!("fiberstack_target_healthy{{{target}}} 0.0"),
            format!("fiberstack_target_samples{{{target}}} 90.0"),
            format!("fiberstack_target_latency_p50_seconds{{{target}}} 0.02"),
            format!("fiberstack_target_latency_p95_seconds{{{target}}} 0.25"),
            format!("fiberstack_target_packet_loss_ratio{{{target}}} 0.05"),
            format!("fiberstack_target_uptime_ratio{{{target}}} 0.98"),
        ] {
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"target="db""#),
            "no data, no series:\n{text}"
        );
        assert!(
            !text.contains(&format!(
                "fiberstack_target_certificate_expiry_timestamp_seconds{{{target}}}"
            )),
            "no certificate, no series:\n{text}"
        );
        fiberstack_e2e::promtool::check_metrics(&fiberstack_plumbing::metrics::encode_text(
            &registry(&m),
        ))
        .unwrap();

        m.forget("fiberstack", "accra-edge");
        let text = render(&m);
        assert!(!text.contains("accra-edge"), "{text}");
    }

    #[test]
    fn a_probe_without_a_verdict_has_no_healthy_series() {
        let m = Measurements::default();
        let status = FiberProbeStatus {
            health: Health::NoData,
            ..Default::default()
        };
        m.record(&probe(), &status);
        assert!(!render(&m).contains("fiberstack_probe_healthy{"));
    }
}
