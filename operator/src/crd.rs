//! The custom resources `FiberRegion` and `FiberProbe` (`fiberstack.io/v1alpha1`).
//!
//! Doc comments on fields become `kubectl explain` text. The API server refuses bad specs
//! itself: OpenAPI patterns and bounds, list-map keys for unique target names, and CEL rules
//! (`x-kubernetes-validations`) for what a schema alone cannot say.

use std::collections::BTreeMap;

use fiberstack_model::{CheckKind, Duration, Target};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::{ConditionType, Reason, Status};
use crate::words::string_enum;

/// The API group of both resources.
pub const GROUP: &str = "fiberstack.io";

/// A region of the network and its data path: the ingest service that probes of the region
/// send to, the ETL workers that move samples into the database, and the token probes use.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fiberstack.io",
    version = "v1alpha1",
    kind = "FiberRegion",
    namespaced,
    status = "FiberRegionStatus",
    shortname = "fr",
    category = "fiberstack",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Country","type":"string","jsonPath":".spec.country"}"#,
    printcolumn = r#"{"name":"Ingest","type":"string","jsonPath":".status.ingest","description":"Ready/desired ingest replicas"}"#,
    printcolumn = r#"{"name":"ETL","type":"string","jsonPath":".status.etl","description":"Ready/desired ETL replicas"}"#,
    printcolumn = r#"{"name":"Backlog","type":"integer","jsonPath":".status.backlog","description":"Entries in the region's Redis stream"}"#,
    printcolumn = r#"{"name":"Probes","type":"integer","jsonPath":".status.probes","description":"FiberProbes of this region"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FiberRegionSpec {
    /// ISO 3166-1 alpha-2 country code of the region: two capital letters such as GH, NG, KE.
    /// Stored with every sample of the region.
    #[schemars(regex(pattern = r"^[A-Z]{2}$"))]
    pub country: String,
    /// Human-readable name for dashboards, e.g. "Ghana". Defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Labels of the cluster nodes that belong to this region, e.g.
    /// `topology.kubernetes.io/region: gh`. Probes of the region run only on nodes that match
    /// all of them (and their own nodeSelector). Empty: every node.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// The region's ingest service (`fiber-ingest`), which probes send their samples to.
    #[serde(default)]
    pub ingest: IngestSpec,
    /// The region's ETL workers (`fiber-etl run`), which move samples from Redis into the
    /// database.
    #[serde(default)]
    pub etl: EtlSpec,
    /// Redis holding the region's stream `fiber:samples:<region>`.
    pub redis: UrlSource,
    /// PostgreSQL/TimescaleDB the ETL writes to (a writer role), and where the operator
    /// reads the region's fleet health.
    pub database: DatabaseSource,
}

/// The region's ingest Deployment and Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestSpec {
    /// Ingest pods. Default 2.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// CPU and memory of each ingest pod. Default: requests cpu 50m, memory 64Mi; limit
    /// memory 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Per-node token bucket of the ingest service.
    #[serde(default)]
    pub rate_limit: RateLimit,
}

impl Default for IngestSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            resources: None,
            rate_limit: RateLimit::default(),
        }
    }
}

/// Token bucket applied per probe node by the ingest service; beyond it, 429 with Retry-After.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained batches per second one probe node may send. Default 5.
    #[serde(default = "default_rate")]
    #[schemars(range(min = 0.001))]
    pub per_probe_per_second: f64,
    /// Batches a node may send at once after being quiet. Default 50.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_probe_per_second: default_rate(),
            burst: default_burst(),
        }
    }
}

/// The region's ETL Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtlSpec {
    /// ETL pods; they share the stream as one consumer group. Default 2.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Stream entries (probe batches) written per database transaction, 1 to 1000. Default 50.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: u16,
    /// CPU and memory of each ETL pod. Default: requests cpu 50m, memory 64Mi; limit memory
    /// 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

impl Default for EtlSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            batch_size: default_batch_size(),
            resources: None,
        }
    }
}

fn default_replicas() -> i32 {
    2
}
fn default_rate() -> f64 {
    5.0
}
fn default_burst() -> u32 {
    50
}
fn default_batch_size() -> u16 {
    50
}

/// Compute resources of a container, as Kubernetes quantities (cpu: 100m, memory: 64Mi).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Guaranteed amounts, e.g. {cpu: 50m, memory: 64Mi}.
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// Upper bounds, e.g. {memory: 256Mi}.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// Where a connection URL is kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource {
    /// A key of a Secret in the region's namespace holding the URL, e.g.
    /// redis://redis:6379 or postgres://user:pass@db:5432/fiberstack.
    pub url_secret_ref: SecretKeyRef,
}

/// The region's database: the ETL's writer URL, and the reader URL the operator uses for the
/// status of the region and its probes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSource {
    /// A key of a Secret in the region's namespace holding the writer role's URL, e.g.
    /// postgres://fiberstack_writer:pass@db:5432/fiberstack.
    pub url_secret_ref: SecretKeyRef,
    /// A key of a Secret holding a reader role's URL of the same database, for the operator.
    /// Unset: the operator's own --database-url, which must then be this same database (a
    /// region on another database — the way to spread regions over several — sets this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_url_secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What the operator last saw of a FiberRegion.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FiberRegionStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, IngestAvailable, EtlAvailable, Degraded (the ETL's figures of the stream are
    /// missing or stale, or the stream holds dead letters).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Ready/desired ingest replicas, e.g. "2/2".
    #[serde(default)]
    pub ingest: String,
    /// Ready/desired ETL replicas, e.g. "2/2".
    #[serde(default)]
    pub etl: String,
    /// Entries in the region's stream fiber:samples:<region>: not yet written to the
    /// database, or written and not yet trimmed (the ETL trims acknowledged entries every
    /// maintenance round). As the region's ETL last recorded it (table stream_stats); absent
    /// before its first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i64>,
    /// Stream entries delivered to an ETL worker and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    /// Entries in fiber:dlq:<region>: batches that can never be stored, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<i64>,
    /// FiberProbes in the namespace that name this region.
    #[serde(default)]
    pub probes: i32,
    /// URL probes of the region send samples to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_url: Option<String>,
    /// Secret (key `token`) holding the bearer token of the region's probes; generated once
    /// and never rotated by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
}

/// What to probe, from which nodes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fiberstack.io",
    version = "v1alpha1",
    kind = "FiberProbe",
    namespaced,
    status = "FiberProbeStatus",
    shortname = "fp",
    category = "fiberstack",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.ready","description":"Probe pods ready/desired"}"#,
    printcolumn = r#"{"name":"Reporting","type":"integer","jsonPath":".status.reportingProbes","description":"Nodes whose samples arrived within 3 intervals"}"#,
    printcolumn = r#"{"name":"P95","type":"number","jsonPath":".status.summary.latencyP95Ms","description":"15-minute p95 latency, ms"}"#,
    printcolumn = r#"{"name":"Loss","type":"number","jsonPath":".status.summary.packetLossPct","description":"15-minute packet loss, %"}"#,
    printcolumn = r#"{"name":"Uptime","type":"number","jsonPath":".status.summary.uptimePct","description":"15-minute uptime, %"}"#,
    printcolumn = r#"{"name":"Health","type":"string","jsonPath":".status.health","description":"Healthy, Degraded, NoData, Paused or why not placed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = describe_targets)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.interval) >= duration('1s')",
        "message": "interval must be at least 1s",
        "fieldPath": ".interval"
    },
    {
        "rule": "duration(self.timeout) < duration(self.interval)",
        "message": "timeout must be shorter than interval",
        "fieldPath": ".timeout"
    }
]))]
pub struct FiberProbeSpec {
    /// Name of a FiberRegion in the same namespace; the probe uses its nodes, ingest service
    /// and token.
    #[schemars(length(min = 1, max = 253))]
    pub region: String,
    /// Labels a node must also carry to run this probe, ANDed with the region's
    /// nodeSelector, e.g. `fiberstack.io/edge: "true"`. Empty: all of the region's nodes.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Time between two rounds of each target, Go duration syntax (30s, 1m30s); at least 1s.
    /// Default 60s.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Longest a single check may take, Go duration syntax; shorter than interval. Default 5s.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    // Described by `describe_targets`, which names every check kind.
    #[schemars(length(min = 1, max = 200))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub targets: Vec<Target>,
    /// Limits above which the probe reports Healthy=False (over the last 15 minutes).
    #[serde(default)]
    pub thresholds: Thresholds,
    /// true: remove the probe pods (the configuration stays); status says Paused.
    #[serde(default)]
    pub paused: bool,
}

/// `kubectl explain fiberprobe.spec.targets`, naming the kinds of [`CheckKind::ALL`].
fn describe_targets(schema: &mut schemars::Schema) {
    if let Some(targets) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("targets"))
        .and_then(|t| t.as_object_mut())
    {
        targets.insert(
            "description".to_owned(),
            format!(
                "What to probe: each target has a unique name and exactly one of {}.",
                CheckKind::names()
            )
            .into(),
        );
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Limits of healthy, compared with the 15-minute figures of every target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    /// Highest acceptable 95th-percentile latency, milliseconds. Default 150.
    #[serde(default = "default_p95")]
    #[schemars(range(min = 0.0))]
    pub latency_p95_ms: f64,
    /// Highest acceptable packet loss, percent (0-100). Default 2.
    #[serde(default = "default_loss")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub packet_loss_pct: f64,
    /// Lowest acceptable share of successful checks, percent (0-100). Default 99.
    #[serde(default = "default_uptime")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub uptime_pct: f64,
}

fn default_p95() -> f64 {
    150.0
}
fn default_loss() -> f64 {
    2.0
}
fn default_uptime() -> f64 {
    99.0
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            latency_p95_ms: default_p95(),
            packet_loss_pct: default_loss(),
            uptime_pct: default_uptime(),
        }
    }
}

/// Fleet health of a FiberProbe, recomputed on every change and at least every 30 seconds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FiberProbeStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (pods rolled out), Reporting (samples within 3 intervals), Healthy (thresholds
    /// met).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One word for `kubectl get`: Healthy, Degraded, NoData, Paused, RegionNotFound,
    /// InvalidSpec or Unknown.
    // The schema's default stays '' as before the word was typed (the operator always writes
    // it), so the CRD did not change.
    #[serde(default)]
    #[schemars(extend("default" = ""))]
    pub health: Health,
    /// Nodes that should run a probe pod.
    #[serde(default)]
    pub desired_probes: i32,
    /// Probe pods ready.
    #[serde(default)]
    pub ready_probes: i32,
    /// readyProbes/desiredProbes, e.g. "3/3".
    #[serde(default)]
    pub ready: String,
    /// Nodes whose samples arrived within the last 3 intervals.
    #[serde(default)]
    pub reporting_probes: i32,
    /// Time of the newest sample of this probe, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sample_time: Option<String>,
    /// All targets over the last 15 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// Each target over the last 15 minutes.
    #[serde(default)]
    pub targets: Vec<TargetStatus>,
    /// Healthy only changes after the new state held for several evaluations in a row; this
    /// is the state being counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_streak: Option<HealthStreak>,
}

/// Figures over a 15-minute window, computed from the samples of that window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Samples in the window.
    pub samples: i64,
    /// Median latency, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    /// 95th-percentile latency, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// Mean ICMP packet loss, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_loss_pct: Option<f64>,
    /// Share of checks that succeeded, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_pct: Option<f64>,
}

/// One target over the last 15 minutes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// The target's name in spec.targets.
    pub name: String,
    /// Its figures.
    #[serde(flatten)]
    pub summary: Summary,
    /// Healthy, Breaching (a threshold is exceeded) or NoData.
    pub state: TargetState,
    /// Which threshold is exceeded, when Breaching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

string_enum! {
    /// A FiberProbe's health in one word, for `kubectl get`.
    pub enum Health {
        Healthy,
        Degraded,
        NoData,
        Paused,
        RegionNotFound,
        InvalidSpec,
        Unknown,
    }
    else Unknown
}

string_enum! {
    /// A target's state over the window.
    pub enum TargetState {
        /// Every threshold met.
        Healthy,
        /// A threshold is exceeded.
        Breaching,
        /// No samples in the window.
        NoData,
    }
    else NoData
}

/// The Healthy state seen in consecutive evaluations that differs from the condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthStreak {
    /// True or False.
    pub status: Status,
    /// Consecutive evaluations that saw it.
    pub count: u32,
    /// When the last counted evaluation ran, RFC 3339.
    pub last_evaluation_time: String,
}

/// A Kubernetes-style condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, Reporting, Healthy, IngestAvailable or EtlAvailable.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// True, False or Unknown.
    pub status: Status,
    /// One CamelCase word saying why.
    pub reason: Reason,
    /// What a person needs to know, naming the target or node concerned.
    pub message: String,
    /// When status last changed, RFC 3339.
    pub last_transition_time: String,
    /// The spec generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
