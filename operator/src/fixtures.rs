//! Test fixtures of the operator's objects, in one place: the design example's region and
//! probe, and chainable builders for what a test changes (status, generation, paused,
//! targets), so a test says only what matters to it.

use crate::crd::{FiberProbe, FiberProbeStatus, FiberRegion, FiberRegionStatus};

pub fn region() -> FiberRegion {
    let mut r: FiberRegion = serde_yaml::from_str(
        r#"
apiVersion: fiberstack.io/v1alpha1
kind: FiberRegion
metadata: { name: ghana, namespace: fiberstack, uid: 11111111-1111-1111-1111-111111111111 }
spec:
  country: GH
  displayName: Ghana
  nodeSelector: { topology.kubernetes.io/region: gh }
  redis: { urlSecretRef: { name: fiberstack-redis, key: url } }
  database: { urlSecretRef: { name: fiberstack-db, key: url } }
"#,
    )
    .unwrap();
    r.spec.ingest.rate_limit.burst = 50;
    r
}

pub fn probe() -> FiberProbe {
    serde_yaml::from_str(
        r#"
apiVersion: fiberstack.io/v1alpha1
kind: FiberProbe
metadata: { name: accra-edge, namespace: fiberstack, uid: 22222222-2222-2222-2222-222222222222 }
spec:
  region: ghana
  nodeSelector: { fiberstack.io/edge: "true" }
  interval: 60s
  timeout: 5s
  targets:
    - { name: google-dns, icmp: { host: 8.8.8.8, count: 5 } }
    - { name: api, http: { url: "https://api.example.com/health", expectStatus: [200] } }
    - { name: db, tcp: { host: 10.0.0.5, port: 5432 } }
    - { name: resolver, dns: { query: example.com, server: 1.1.1.1 } }
  thresholds: { latencyP95Ms: 150, packetLossPct: 2, uptimePct: 99 }
"#,
    )
    .unwrap()
}

pub fn images() -> crate::render::Images {
    crate::render::Images {
        ingest: "ghcr.io/fiberstack/fiber-ingest:0.1.0".to_owned(),
        etl: "ghcr.io/fiberstack/fiber-etl:0.1.0".to_owned(),
        probe: "ghcr.io/fiberstack/fiber-probe:0.1.0".to_owned(),
        pull_policy: "IfNotPresent".to_owned(),
        otlp_endpoint: None,
        ingest_service_account: Some("fiberstack-ingest".to_owned()),
    }
}

/// Changes to a fixture, chained: `probe().generation(3).with_status(s)`.
pub trait Fixture: Sized {
    type Status;
    fn with_status(self, status: Self::Status) -> Self;
    fn generation(self, generation: i64) -> Self;
}

impl Fixture for FiberProbe {
    type Status = FiberProbeStatus;
    fn with_status(mut self, status: FiberProbeStatus) -> Self {
        self.status = Some(status);
        self
    }
    fn generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }
}

impl Fixture for FiberRegion {
    type Status = FiberRegionStatus;
    fn with_status(mut self, status: FiberRegionStatus) -> Self {
        self.status = Some(status);
        self
    }
    fn generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }
}

/// FiberProbe-only changes.
pub trait ProbeFixture: Sized {
    fn paused(self) -> Self;
    /// Keeps only the targets named, in that order.
    fn only_targets(self, names: &[&str]) -> Self;
}

impl ProbeFixture for FiberProbe {
    fn paused(mut self) -> Self {
        self.spec.paused = true;
        self
    }
    fn only_targets(mut self, names: &[&str]) -> Self {
        let all = std::mem::take(&mut self.spec.targets);
        self.spec.targets = names
            .iter()
            .map(|n| {
                all.iter()
                    .find(|t| t.name == *n)
                    .unwrap_or_else(|| panic!("the fixture has no target {n}"))
                    .clone()
            })
            .collect();
        self
    }
}
