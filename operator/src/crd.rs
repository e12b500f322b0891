//! The custom resources `FiberRegion` and `FiberProbe` (`fiberstack.io/v1alpha1`).
//!
//! Doc comments on fields become `kubectl explain` text. The API server refuses bad specs
//! itself: OpenAPI patterns and bounds, list-map keys for unique target names, and CEL rules
//! (`x-kubernetes-validations`) for what a schema alone cannot say.

use std::collections::BTreeMap;

use fiberstack_model::{CheckKind, Duration, Target, TargetThresholds};
// The objectives live in the model: a target (the model's type, shared with the probe's
// configuration) may carry its own.
pub use fiberstack_model::{LatencyObjective, Slo};
use kube::CustomResource;
use kube::core::{Message, Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::{ConditionType, Reason, Status};
use crate::validate::{MAX_PROBE_NAME_LEN, MAX_REGION_NAME_LEN};
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
    doc = "A region of the network and its data path: the ingest service its probes send samples to, the ETL workers that move them into the database, and the token probes use. The name (a DNS label of at most 45 characters) names the region in every sample and its objects (fiberstack-ingest-<name>).",
    validation = region_name_rule(),
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
    /// The dashboard read API (GET /api/metrics and /api/nodes): which browser origins may
    /// read it, and how often each client address may ask.
    #[serde(default, skip_serializing_if = "ReadApi::is_default")]
    pub read_api: ReadApi,
    /// HTTPS for the ingest service inside the cluster. Unset (default): plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngestTls>,
    /// When ingest stops taking batches (503 with Retry-After; the probes keep them in their
    /// disk buffers and retry) rather than let the region's stream grow past what its ETL
    /// drains.
    #[serde(default, skip_serializing_if = "Admission::is_default")]
    pub admission: Admission,
}

/// Ingest's admission limits on the region's stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.maxBacklogAge) <= duration('300s')",
        "message": "maxBacklogAge must be at most 300s: a sample older than that in Redis is a stalled ETL, not a backlog",
        "fieldPath": ".maxBacklogAge"
    }
]))]
pub struct Admission {
    /// Entries the stream may hold (batches not yet trimmed). Default 10000.
    #[serde(default = "default_max_backlog")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_backlog: u64,
    /// How long a batch may wait in Redis for the ETL, e.g. "10s" (default): new batches are
    /// refused while the oldest one not yet read has waited that long, or while a new one
    /// would at the rate the ETL reads a backlog; "0s" turns the limit off (only maxBacklog
    /// applies).
    #[serde(default = "default_max_backlog_age")]
    pub max_backlog_age: Duration,
}

fn default_max_backlog() -> u64 {
    10_000
}

fn default_max_backlog_age() -> Duration {
    Duration::from_secs(10)
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            max_backlog: default_max_backlog(),
            max_backlog_age: default_max_backlog_age(),
        }
    }
}

impl Admission {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for IngestSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            resources: None,
            rate_limit: RateLimit::default(),
            read_api: ReadApi::default(),
            tls: None,
            admission: Admission::default(),
        }
    }
}

/// The ingest service's certificate, and the authority the region's probes verify it with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestTls {
    /// A kubernetes.io/tls Secret in the region's namespace (`tls.crt`, `tls.key`, and
    /// usually `ca.crt`), e.g. the one a cert-manager Certificate writes. Its certificate must
    /// name the Service: fiberstack-ingest-<region>.<namespace>.svc (the name probes use).
    /// Ingest serves it over HTTPS and takes a renewed one without a restart.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// A Secret key holding the PEM authority (or bundle) probes of this region verify
    /// ingest with, added to their system roots. Default: `ca.crt` of secretName. Probes
    /// fall back only to regions that also serve HTTPS, and must trust their certificates
    /// too: one issuer for all regions, or a bundle here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

impl IngestTls {
    /// The key of `ca.crt` in a kubernetes.io/tls Secret.
    pub const CA_KEY: &'static str = "ca.crt";

    /// Where the probes' authority is: [`Self::ca_secret_ref`], else `ca.crt` of the
    /// certificate's Secret.
    pub fn ca(&self) -> SecretKeyRef {
        self.ca_secret_ref.clone().unwrap_or_else(|| SecretKeyRef {
            name: self.secret_name.clone(),
            key: Self::CA_KEY.to_owned(),
        })
    }
}

/// CORS and the read rate limit of the ingest service's dashboard read API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadApi {
    /// Origins whose browsers may read the API, e.g. https://dashboard.example.org (scheme
    /// http or https, host, optional port; no path, no wildcard). Empty (default): no CORS
    /// header is sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(extend("items" = {
        "type": "string",
        "maxLength": 253,
        "pattern": "^https?://[^/?#*@\\s]+$"
    }))]
    pub cors_origins: Vec<String>,
    /// Requests a minute each client address may make; beyond, 429 with Retry-After.
    /// Default 1000.
    #[serde(default = "default_read_rate")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_minute: u32,
}

fn default_read_rate() -> u32 {
    1000
}

impl Default for ReadApi {
    fn default() -> Self {
        Self {
            cors_origins: vec![],
            requests_per_minute: default_read_rate(),
        }
    }
}

impl ReadApi {
    fn is_default(&self) -> bool {
        self == &Self::default()
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
    /// Milliseconds a worker waits, after a read that found fewer entries than `batchSize`,
    /// for more to write in the same transaction: fewer, larger transactions under moderate
    /// load, at most this much added to freshness. 0 to 1000; 0 writes each read at once.
    /// Default 10.
    #[serde(default = "default_linger_ms")]
    #[schemars(range(min = 0, max = 1000))]
    pub linger_ms: u16,
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
            linger_ms: default_linger_ms(),
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
fn default_linger_ms() -> u16 {
    10
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
    doc = "What to probe, from which nodes: targets checked every interval by a probe pod on each node of the region that matches the nodeSelector; status holds the fleet's health over the last 15 minutes. The name is at most 63 characters (it is a label value).",
    validation = probe_name_rule(),
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
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".status.scope","description":"Where breaches are seen from: Everywhere, Partial (some vantage points) or Single"}"#,
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
    },
    {
        "rule": "duration(self.timeout) > duration('0s')",
        "message": "timeout must be above 0",
        "fieldPath": ".timeout"
    },
    icmp_round_rule()
]))]
pub struct FiberProbeSpec {
    /// Name of a FiberRegion in the same namespace; the probe uses its nodes, ingest service
    /// and token. A region's name is a DNS label of at most 45 characters.
    #[schemars(length(min = 1, max = MAX_REGION_NAME_LEN), regex(pattern = REGION_NAME))]
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
    /// Limits above which the probe reports Healthy=False (over the last 15 minutes). A
    /// target may replace any of them with its own thresholds.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// true: remove the probe pods (the configuration stays); status says Paused.
    #[serde(default)]
    pub paused: bool,
    /// Who is told when a target starts or stops breaching its thresholds.
    #[serde(default, skip_serializing_if = "Alerting::is_empty")]
    pub alerting: Alerting,
    /// Service level objectives over all the probe's targets: status.slo reports the SLI over
    /// the window, the error budget left and how fast it burns. A target may have its own
    /// (targets[].slo), reported in status.targets[].slo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
}

/// Notifications of a FiberProbe's targets. A target fires an alert when it has breached its
/// thresholds for as many evaluations in a row as Healthy needs (the operator's hysteresis),
/// and resolves it after the same hold within them; each start and end is sent once to each
/// notifier (status.alerts records what was sent).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alerting {
    /// Names of FiberNotifiers in the same namespace to notify, besides those whose
    /// probeSelector selects this probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub notifiers: Vec<String>,
    /// Until this time (RFC 3339, e.g. 2026-12-01T06:00:00Z) nothing is sent: a
    /// maintenance window. Alerts still open and close in status; what is still firing
    /// when the mute ends is sent then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub muted_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Fire a target's alert only when this many vantage points agree it breaches. Unset:
    /// one is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<Quorum>,
}

/// How many vantage points must see a breach before it is notified.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quorum {
    /// Vantage points (nodes) that must see the breach. Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub nodes: u32,
    /// Distinct regions they must be in. Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub regions: u32,
}

fn one() -> u32 {
    1
}

impl Alerting {
    fn is_empty(&self) -> bool {
        self.notifiers.is_empty() && self.muted_until.is_none() && self.quorum.is_none()
    }

    /// Whether notifications are held at `now`.
    pub fn muted_at(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.muted_until.is_some_and(|until| now < until)
    }
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

/// A FiberRegion's name: a DNS label, as [`crate::validate::validate_region`] checks.
pub const REGION_NAME: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// The API server's rule for a FiberRegion's name (a CRD's schema cannot hold one for
/// metadata.name; a rule at the root may read it).
fn region_name_rule() -> Rule {
    Rule::new(format!(
        "self.metadata.name.size() <= {MAX_REGION_NAME_LEN} && self.metadata.name.matches(r'{REGION_NAME}')"
    ))
    .message(Message::Expression(format!(
        r#"'metadata.name "' + self.metadata.name + '" cannot name the ingest Service fiberstack-ingest-' + self.metadata.name + ': use at most {MAX_REGION_NAME_LEN} lower-case letters, digits and \'-\', starting with a letter and ending with a letter or digit'"#
    )))
}

/// The API server's rule for a FiberProbe's name: it is a label value of the probe's pods.
fn probe_name_rule() -> Rule {
    Rule::new(format!(
        "self.metadata.name.size() <= {MAX_PROBE_NAME_LEN}"
    ))
    .message(format!(
        "metadata.name must be at most {MAX_PROBE_NAME_LEN} characters: it is a label value of the probe's pods"
    ).as_str())
}

/// The API server's rule that each ICMP round fits in the interval, as the probe configuration
/// checks it: the last echo leaves after (count - 1) spacings and may take the whole timeout.
///
/// CEL can neither multiply a duration nor read one finer than a millisecond, so the round is
/// counted in whole milliseconds rounded down and the interval rounded up (adding 999999ns
/// before reading its milliseconds): a round refused here never fits, and every round of
/// whole-millisecond durations is judged exactly. One that overruns only by fractions of a
/// millisecond is left to the operator.
///
/// The message names the first such target; its name is picked with map, then filter,
/// because the API server's cost estimate loses the length bound of a name read from a
/// filtered list of targets and then refuses the CRD.
fn icmp_round_rule() -> serde_json::Value {
    let too_long = "duration(t.icmp.spacing).getMilliseconds() * (t.icmp.count - 1) + duration(self.timeout).getMilliseconds() >= (duration(self.interval) + duration('999999ns')).getMilliseconds()";
    serde_json::json!({
        "rule": format!("!self.targets.exists(t, has(t.icmp) && {too_long})"),
        "message": "an ICMP round does not fit in the interval: (icmp.count - 1) × icmp.spacing + timeout must be shorter than interval",
        "messageExpression": format!(
            "'the ICMP round of target ' + self.targets.map(t, has(t.icmp) && {too_long} ? t.name : '').filter(name, name != '')[0] + ' does not fit in the interval ' + self.interval + ': (icmp.count - 1) × icmp.spacing + timeout must be shorter than interval'"
        ),
        "fieldPath": ".targets",
    })
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
    /// HTTPS targets: Breaching when the server's certificate (the newest seen from any node)
    /// expires within this many days; 0 never. Default 14.
    #[serde(default = "default_cert_expiry_days")]
    #[schemars(range(max = fiberstack_model::config::MAX_CERT_EXPIRY_DAYS))]
    pub cert_expiry_days: u32,
}

impl Thresholds {
    /// These limits with a target's own in place of those it sets.
    pub fn with(&self, own: Option<&TargetThresholds>) -> Thresholds {
        let Some(own) = own else {
            return self.clone();
        };
        Thresholds {
            latency_p95_ms: own.latency_p95_ms.unwrap_or(self.latency_p95_ms),
            packet_loss_pct: own.packet_loss_pct.unwrap_or(self.packet_loss_pct),
            uptime_pct: own.uptime_pct.unwrap_or(self.uptime_pct),
            cert_expiry_days: own.cert_expiry_days.unwrap_or(self.cert_expiry_days),
        }
    }
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
fn default_cert_expiry_days() -> u32 {
    14
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            latency_p95_ms: default_p95(),
            packet_loss_pct: default_loss(),
            uptime_pct: default_uptime(),
            cert_expiry_days: default_cert_expiry_days(),
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
    /// Where the breaches are seen from, for `kubectl get`: Everywhere when any breaching
    /// target is seen breaching from every vantage point, else Partial, else Single.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The targets' alerts: firing ones, and resolved ones until every notifier told of
    /// their start has been told of their end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub alerts: Vec<Alert>,
    /// The objectives of spec.slo as measured (absent without spec.slo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloStatus>,
    /// Traceroute targets: the path each node currently takes and the last change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["target"]))]
    pub paths: Vec<crate::paths::TargetPath>,
}

/// How the probe meets its objectives over the window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SloStatus {
    /// The window, whole days ending now.
    pub window_days: u32,
    /// Share of successful rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<ObjectiveStatus>,
    /// Share of successful rounds under the latency threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<ObjectiveStatus>,
    /// Rounds expected in the window (each node's, every interval since the probe exists)
    /// that never arrived, percent: counted as unknown, neither good nor bad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_pct: Option<f64>,
    /// The fastest error-budget burn under way: Fast (the 1 h and 5 min burn rates both above
    /// 14.4: 2 % of a 30-day budget in an hour), Slow (6 h and 30 min both above 6), or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burning: Option<Burn>,
}

/// One objective: its target, the SLI, the budget left and the burn rates (1 = spending the
/// budget exactly over the window).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectiveStatus {
    /// The objective, percent.
    pub objective_pct: f64,
    /// The SLI over the window, percent; absent before any round counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sli_pct: Option<f64>,
    /// Error budget left, percent of the window's budget; negative when overspent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_budget_remaining_pct: Option<f64>,
    /// Burn rate over the last hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate_1h: Option<f64>,
    /// Burn rate over the last 6 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate_6h: Option<f64>,
}

string_enum! {
    /// How fast an objective's error budget burns (the SRE workbook's multi-window pairs).
    pub enum Burn {
        /// The 1 h and 5 min burn rates are both above 14.4.
        Fast,
        /// The 6 h and 30 min burn rates are both above 6.
        Slow,
    }
    else Other(String)
}

/// One episode of a target breaching its thresholds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Stable key of the episode, the same in every notification of it (receivers
    /// deduplicate by it): namespace/probe/target@startsAt in Unix seconds.
    pub id: String,
    /// The target's name in spec.targets.
    pub target: String,
    /// Firing or Resolved.
    pub state: AlertState,
    /// What breached when it started, e.g. "latency p95 412 ms > 150 ms".
    pub reason: String,
    /// When it started firing, RFC 3339.
    pub starts_at: String,
    /// When it resolved, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// What each notifier has acknowledged: the last state it received.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["notifier"]))]
    pub notified: Vec<Notified>,
    /// The state last written to the alert history (table alerts), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<AlertState>,
    /// Where the breach was seen from when it started (see targets[].scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The vantage points (region/node) that saw it when it started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vantage_points: Vec<String>,
    /// Set for the alert of an error budget burning (Fast or Slow): spec.slo's (target is
    /// then "slo") or a target's own slo (target is its name); absent for a breach alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn: Option<Burn>,
    /// Set for the alert of a traceroute target's path change (FiberPathChanged): the node
    /// whose path changed; absent for a target's breach alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A notifier's acknowledgement of an alert.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notified {
    /// The FiberNotifier's name.
    pub notifier: String,
    /// The state it acknowledged.
    pub state: AlertState,
    /// When, RFC 3339.
    pub time: String,
}

string_enum! {
    /// An alert's state.
    pub enum AlertState {
        /// The target breaches its thresholds.
        Firing,
        /// The target is within its thresholds again.
        Resolved,
    }
    else Firing
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
    /// Samples of the window that reached ingest more than 3 intervals after they were
    /// measured: delivered late, from a probe's buffer, after an outage of its link or of
    /// ingest (counted in the figures above too). Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_samples: Option<i64>,
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
    /// HTTPS targets: when the server's certificate expires (its notAfter), RFC 3339; the
    /// earliest of the certificates the nodes saw in their newest samples of the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires_at: Option<String>,
    /// The target's alert changes only after its new state held for several evaluations in
    /// a row; this is the state being counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streak: Option<HealthStreak>,
    /// Where a breach is seen from: Everywhere (every vantage point with data: the target
    /// itself), Partial (only those in vantagePoints: their path) or Single (the only vantage
    /// point with data). Absent when no vantage point sees a breach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The vantage points (region/node) that see the breach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vantage_points: Vec<String>,
    /// Nodes that run the probe but sent no recent sample of this target (within 3
    /// intervals): the probe or its link, not the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silent: Vec<String>,
    /// The objectives of the target's own slo (spec.targets[].slo) as measured over its
    /// window; absent when the target has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloStatus>,
}

string_enum! {
    /// Where a target's breach is seen from.
    pub enum Scope {
        /// Every vantage point with data sees it: the target itself.
        Everywhere,
        /// Only some vantage points see it: their path.
        Partial,
        /// Seen from the only vantage point with data: where cannot be told.
        Single,
    }
    else Single
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

/// Where alerts of FiberProbes are sent: an Alertmanager, a generic JSON webhook or a Slack
/// incoming webhook. The URL is read from a Secret at each send and never written to status,
/// Events or logs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fiberstack.io",
    version = "v1alpha1",
    kind = "FiberNotifier",
    namespaced,
    doc = "Where alerts of FiberProbes are sent: an Alertmanager, a generic JSON webhook or a Slack incoming webhook, set by exactly one of spec.alertmanager, spec.webhook and spec.slack.",
    status = "FiberNotifierStatus",
    shortname = "fn",
    category = "fiberstack",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".status.kind","description":"alertmanager, webhook or slack"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the last delivery succeeded"}"#,
    printcolumn = r#"{"name":"Sent","type":"integer","jsonPath":".status.sent","description":"Notifications delivered"}"#,
    printcolumn = r#"{"name":"Failures","type":"integer","jsonPath":".status.consecutiveFailures","description":"Failed attempts since the last success"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.alertmanager), has(self.webhook), has(self.slack)].filter(x, x).size() == 1",
        "message": "set exactly one of alertmanager, webhook and slack"
    }
]))]
pub struct FiberNotifierSpec {
    /// An Alertmanager: alerts are posted to `<url>/api/v2/alerts` with labels alertname,
    /// severity, namespace, probe, region, target and kind, re-sent while firing (as
    /// Prometheus does) so that Alertmanager's grouping, silences and inhibition apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<Endpoint>,
    /// A generic webhook: one JSON object per alert start and end (fields version, id,
    /// status, namespace, probe, region, target, kind, reason, startsAt, endsAt), with the
    /// header Idempotency-Key: <id>/<status>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Endpoint>,
    /// A Slack incoming webhook (https://hooks.slack.com/services/…): one message per alert
    /// start and end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<Endpoint>,
    /// FiberProbes in this namespace whose labels include all of these are notified here
    /// (besides those naming this notifier in spec.alerting.notifiers). Empty: none by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probe_selector: BTreeMap<String, String>,
}

/// A receiver's address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// A key of a Secret in the notifier's namespace holding the URL (http or https); a
    /// webhook URL often carries its credential.
    pub url_secret_ref: SecretKeyRef,
}

/// What the operator last saw of deliveries to a FiberNotifier.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FiberNotifierStatus {
    /// alertmanager, webhook or slack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Ready: True when the last delivery succeeded (or none was tried yet), False with
    /// reason DeliveryFailed or SecretNotFound and what went wrong (never the URL).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Notifications delivered since the notifier was created.
    #[serde(default)]
    pub sent: i64,
    /// Failed attempts since the last success; retried with backoff.
    #[serde(default)]
    pub consecutive_failures: i64,
    /// When the last notification was delivered, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sent_time: Option<String>,
    /// When the last attempt failed, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
}
