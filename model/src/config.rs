//! `ProbeConfig`: the YAML the operator renders into a probe's ConfigMap and `fiber-probe
//! --config` reads. Targets use the same type as the FiberProbe's `spec.targets`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::quantity::ByteSize;
use crate::sample::CheckKind;
use crate::validate::{self, ValidationError};

/// Shortest allowed probing interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Most ICMP echoes in one round.
pub const MAX_ICMP_COUNT: u32 = 100;
/// Largest ICMP payload (an IPv4 datagram of 65535 bytes less the IP and ICMP headers).
pub const MAX_ICMP_PAYLOAD: u32 = 65_507;

/// Configuration of one `fiber-probe` process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeConfig {
    /// The node the probe runs on; `NODE_NAME` overrides.
    #[serde(default)]
    pub node: String,
    /// `namespace/name` of the FiberProbe.
    pub probe: String,
    /// The FiberRegion's name.
    pub region: String,
    /// ISO 3166-1 alpha-2 country code of the region.
    pub country: String,
    /// Time between two rounds of each target.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Longest a single check may take; below `interval`.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    pub ingest: IngestConfig,
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Address of the probe's own `/metrics`; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    pub targets: Vec<Target>,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Where and how samples are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngestConfig {
    /// Ingest endpoints, tried in order (regional first, then fallbacks);
    /// `FIBER_INGEST_URL` (comma-separated) overrides.
    #[serde(default)]
    pub urls: Vec<String>,
    /// File holding the bearer token; `FIBER_TOKEN` / `FIBER_TOKEN_FILE` override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM file of certificate authorities trusted for `https://` ingest URLs besides the
    /// system's roots (a private CA, e.g. `ca.crt` of the ingest's certificate Secret);
    /// re-read when it changes. The server's certificate must name the URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Send a batch once it holds this many samples.
    #[serde(default = "default_batch_max_samples")]
    pub batch_max_samples: usize,
    /// Send a batch at the latest this long after its first sample.
    #[serde(default = "default_batch_max_delay")]
    pub batch_max_delay: Duration,
}

fn default_batch_max_samples() -> usize {
    500
}

fn default_batch_max_delay() -> Duration {
    Duration::from_secs(5)
}

/// The on-disk buffer that holds samples until the ingest service accepted them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BufferConfig {
    /// `FIBER_BUFFER_DIR` overrides.
    #[serde(default = "default_buffer_dir")]
    pub dir: PathBuf,
    /// Oldest samples are dropped (and counted) beyond this size.
    #[serde(default = "default_buffer_max_bytes")]
    pub max_bytes: ByteSize,
}

fn default_buffer_dir() -> PathBuf {
    PathBuf::from("/var/lib/fiberstack/buffer")
}

fn default_buffer_max_bytes() -> ByteSize {
    ByteSize::mebibytes(64)
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            dir: default_buffer_dir(),
            max_bytes: default_buffer_max_bytes(),
        }
    }
}

/// One thing to probe: a name and exactly one check.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", schemars(transform = exactly_one_check))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// Unique within the probe, 1 to 63 characters without leading or trailing spaces or
    /// control characters; becomes the samples' `target`.
    #[cfg_attr(
        feature = "schemars",
        schemars(length(min = 1, max = 63), extend("x-kubernetes-validations" = [{
            "rule": r"self.matches(r'^[^\p{Z}\p{Cc}]([^\p{Cc}]*[^\p{Z}\p{Cc}])?$')",
            "message": "must not begin or end with a space or hold control characters",
        }]))
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceroute: Option<TracerouteCheck>,
    /// Limits of this target that replace the FiberProbe's spec.thresholds field by field;
    /// a field left out keeps the probe's. Judged by the operator; the probe ignores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<TargetThresholds>,
    /// Objectives of this target's rounds alone, besides the FiberProbe's spec.slo over all
    /// its targets: status.targets[].slo reports them, and a burning error budget alerts
    /// with the target's name. Judged by the operator; the probe ignores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
}

/// Objectives for a probe's rounds over a rolling window of whole days. Rounds that were
/// expected but never arrived count as unknown (status.slo.unknownPct), neither good nor bad.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schemars", schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.availabilityPct < 100.0",
        "message": "availabilityPct must be below 100: an objective of 100 % leaves no error budget",
        "fieldPath": ".availabilityPct"
    }
])))]
pub struct Slo {
    /// Share of rounds that must succeed, percent, e.g. 99.9.
    #[cfg_attr(feature = "schemars", schemars(range(min = 0.0, max = 100.0)))]
    pub availability_pct: f64,
    /// Optionally, how fast the successful rounds must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyObjective>,
    /// The rolling window, in days (1-90; the hourly rollups are kept 90 days). Default 30.
    #[serde(default = "default_slo_days")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1, max = MAX_SLO_DAYS)))]
    pub window_days: u32,
}

/// "percent of successful rounds faster than thresholdMs", e.g. 99 % under 150 ms.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schemars", schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.percent < 100.0",
        "message": "percent must be below 100: an objective of 100 % leaves no error budget",
        "fieldPath": ".percent"
    }
])))]
pub struct LatencyObjective {
    /// Latency a round must stay under, milliseconds (above 0, at most 10000).
    #[cfg_attr(feature = "schemars", schemars(range(min = 0.001, max = 10000.0)))]
    pub threshold_ms: f64,
    /// Share of successful rounds that must be under it, percent, e.g. 99.
    #[cfg_attr(feature = "schemars", schemars(range(min = 0.0, max = 100.0)))]
    pub percent: f64,
}

/// Longest SLO window, days: the hourly rollups are kept 90 days.
pub const MAX_SLO_DAYS: u32 = 90;

fn default_slo_days() -> u32 {
    30
}

impl Slo {
    /// The rules the CRD's schema states, for a target's objectives read from elsewhere.
    fn problems(&self) -> Problems {
        let mut p = Problems::default();
        let below_100 = |field: &str, v: f64| {
            (!(v.is_finite() && (0.0..100.0).contains(&v))).then(|| {
                (
                    field.to_owned(),
                    format!("{v} is out of range, expected 0 to below 100 %"),
                )
            })
        };
        if let Some((field, message)) = below_100("availabilityPct", self.availability_pct) {
            p.add(field, message);
        }
        if let Some(l) = &self.latency {
            if !(l.threshold_ms.is_finite() && l.threshold_ms > 0.0 && l.threshold_ms <= 10_000.0) {
                p.add(
                    "latency.thresholdMs",
                    format!(
                        "{} is out of range, expected above 0 to 10000 ms",
                        l.threshold_ms
                    ),
                );
            }
            if let Some((field, message)) = below_100("latency.percent", l.percent) {
                p.add(field, message);
            }
        }
        if !(1..=MAX_SLO_DAYS).contains(&self.window_days) {
            p.add(
                "windowDays",
                format!(
                    "{} is out of range, expected 1 to {MAX_SLO_DAYS} days",
                    self.window_days
                ),
            );
        }
        p
    }
}

/// Most days ahead a certificate expiry threshold may look (ten years).
pub const MAX_CERT_EXPIRY_DAYS: u32 = 3_650;

/// A target's own limits of healthy, over the last 15 minutes; each unset field falls back to
/// the FiberProbe's spec.thresholds.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetThresholds {
    /// Highest acceptable 95th-percentile latency, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 0.0)))]
    pub latency_p95_ms: Option<f64>,
    /// Highest acceptable packet loss, percent (0-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 0.0, max = 100.0)))]
    pub packet_loss_pct: Option<f64>,
    /// Lowest acceptable share of successful checks, percent (0-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 0.0, max = 100.0)))]
    pub uptime_pct: Option<f64>,
    /// HTTPS: Breaching when the server's certificate expires within this many days; 0
    /// never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(range(max = MAX_CERT_EXPIRY_DAYS)))]
    pub cert_expiry_days: Option<u32>,
}

impl TargetThresholds {
    fn problems(&self) -> Problems {
        let mut p = Problems::default();
        if let Some(p95) = self
            .latency_p95_ms
            .filter(|v| !(v.is_finite() && *v >= 0.0))
        {
            p.add(
                "latencyP95Ms",
                format!("{p95} is out of range, expected 0 ms or more"),
            );
        }
        if let Some(loss) = self.packet_loss_pct {
            p.check(validate::percent("packetLossPct", loss));
        }
        if let Some(up) = self.uptime_pct {
            p.check(validate::percent("uptimePct", up));
        }
        if let Some(days) = self.cert_expiry_days.filter(|d| *d > MAX_CERT_EXPIRY_DAYS) {
            p.add(
                "certExpiryDays",
                format!("{days} is out of range, expected 0 to {MAX_CERT_EXPIRY_DAYS} days"),
            );
        }
        p
    }
}

/// The API server's rule for a target: exactly one check field set, for every kind of
/// [`CheckKind::ALL`].
#[cfg(feature = "schemars")]
fn exactly_one_check(schema: &mut schemars::Schema) {
    let has: Vec<String> = CheckKind::ALL
        .iter()
        .map(|k| format!("has(self.{k})"))
        .collect();
    schema.insert(
        "x-kubernetes-validations".to_owned(),
        serde_json::json!([{
            "rule": format!("[{}].filter(x, x).size() == 1", has.join(", ")),
            "message": format!("a target sets exactly one check: one of {}", CheckKind::names()),
        }]),
    );
}

/// The one check a [`Target`] holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check<'a> {
    Icmp(&'a IcmpCheck),
    Tcp(&'a TcpCheck),
    Http(&'a HttpCheck),
    Dns(&'a DnsCheck),
    Traceroute(&'a TracerouteCheck),
}

impl Check<'_> {
    pub fn kind(&self) -> CheckKind {
        match self {
            Check::Icmp(_) => CheckKind::Icmp,
            Check::Tcp(_) => CheckKind::Tcp,
            Check::Http(_) => CheckKind::Http,
            Check::Dns(_) => CheckKind::Dns,
            Check::Traceroute(_) => CheckKind::Traceroute,
        }
    }
}

impl Target {
    /// The check of `kind`, when set. (The field of each kind; the field is named as the
    /// kind.)
    fn check_of(&self, kind: CheckKind) -> Option<Check<'_>> {
        match kind {
            CheckKind::Icmp => self.icmp.as_ref().map(Check::Icmp),
            CheckKind::Tcp => self.tcp.as_ref().map(Check::Tcp),
            CheckKind::Http => self.http.as_ref().map(Check::Http),
            CheckKind::Dns => self.dns.as_ref().map(Check::Dns),
            CheckKind::Traceroute => self.traceroute.as_ref().map(Check::Traceroute),
        }
    }

    /// The target's check; an error unless exactly one check field is set.
    pub fn check(&self) -> Result<Check<'_>, ValidationError> {
        let set: Vec<Check<'_>> = CheckKind::ALL
            .into_iter()
            .filter_map(|k| self.check_of(k))
            .collect();
        match set.as_slice() {
            [one] => Ok(*one),
            [] => Err(ValidationError::new(
                "",
                format!("sets no check; set exactly one of {}", CheckKind::names()),
            )),
            many => Err(ValidationError::new(
                "",
                format!(
                    "sets {} checks ({}); set exactly one of {}",
                    many.len(),
                    many.iter()
                        .map(|c| c.kind().as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    CheckKind::names()
                ),
            )),
        }
    }

    /// Checks the target against the probe's `interval` and `timeout`: the first rule it
    /// breaks.
    pub fn validate(&self, interval: Duration, timeout: Duration) -> Result<(), ValidationError> {
        self.problems(interval, timeout).first()
    }

    fn problems(&self, interval: Duration, timeout: Duration) -> Problems {
        let mut p = Problems::default();
        p.check(validate::name(
            "name",
            &self.name,
            validate::MAX_TARGET_NAME_LEN,
        ));
        match self.check() {
            Err(e) => p.0.push(e),
            Ok(check) => p.within(
                check.kind().as_str(),
                match check {
                    Check::Icmp(c) => c.problems(interval, timeout),
                    Check::Tcp(c) => c.problems(),
                    Check::Http(c) => c.problems(),
                    Check::Dns(c) => c.problems(),
                    Check::Traceroute(c) => c.problems(interval),
                },
            ),
        }
        if let Some(t) = &self.thresholds {
            p.within("thresholds", t.problems());
        }
        if let Some(s) = &self.slo {
            p.within("slo", s.problems());
        }
        p
    }
}

/// ICMP echo: `count` echoes per round, `spacing` apart.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpCheck {
    /// IPv4 or IPv6 address or host name to ping, e.g. 8.8.8.8 or 2001:4860:4860::8888.
    #[cfg_attr(
        feature = "schemars",
        schemars(length(min = 1, max = MAX_HOST_LEN), extend("x-kubernetes-validations" = host_rules()))
    )]
    pub host: String,
    /// Echo requests per round, 1 to 100. Default 5.
    #[serde(default = "default_icmp_count")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1, max = MAX_ICMP_COUNT)))]
    pub count: u32,
    /// Time between two echo requests of a round, Go duration syntax. Default 200ms.
    #[serde(default = "default_icmp_spacing")]
    pub spacing: Duration,
    /// ICMP payload size in bytes, at most 65507. Default 56.
    #[serde(default = "default_icmp_payload")]
    #[cfg_attr(feature = "schemars", schemars(range(max = MAX_ICMP_PAYLOAD)))]
    pub payload_bytes: u32,
}

fn default_icmp_count() -> u32 {
    5
}

fn default_icmp_spacing() -> Duration {
    Duration::from_millis(200)
}

fn default_icmp_payload() -> u32 {
    56
}

impl IcmpCheck {
    fn problems(&self, interval: Duration, timeout: Duration) -> Problems {
        let mut p = Problems::default();
        p.check(host("host", &self.host));
        if !(1..=MAX_ICMP_COUNT).contains(&self.count) {
            p.add(
                "count",
                format!(
                    "{} is out of range, expected 1 to {MAX_ICMP_COUNT}",
                    self.count
                ),
            );
        }
        if self.payload_bytes > MAX_ICMP_PAYLOAD {
            p.add(
                "payloadBytes",
                format!("{} is larger than {MAX_ICMP_PAYLOAD}", self.payload_bytes),
            );
        }
        // The last echo leaves after (count-1) spacings and may take the whole timeout.
        let round = self
            .spacing
            .0
            .checked_mul(self.count.saturating_sub(1))
            .and_then(|echoes| echoes.checked_add(timeout.0));
        let took = match round {
            Some(round) if round < interval.0 => None,
            Some(round) => Some(Duration(round).to_string()),
            None => Some("longer than can be counted".to_owned()),
        };
        if let Some(took) = took {
            p.add(
                "spacing",
                format!(
                    "{} echoes {} apart plus the {} timeout take {took}, which does not fit in the {} interval",
                    self.count, self.spacing, timeout, interval
                ),
            );
        }
        p
    }
}

/// TCP connect: the time to complete the handshake.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpCheck {
    /// IPv4 or IPv6 address or host name to connect to, e.g. 10.0.0.5 or db.example.com.
    #[cfg_attr(
        feature = "schemars",
        schemars(length(min = 1, max = MAX_HOST_LEN), extend("x-kubernetes-validations" = host_rules()))
    )]
    pub host: String,
    /// TCP port, 1 to 65535.
    #[cfg_attr(feature = "schemars", schemars(range(min = 1)))]
    pub port: u16,
}

impl TcpCheck {
    fn problems(&self) -> Problems {
        let mut p = Problems::default();
        p.check(host("host", &self.host));
        if self.port == 0 {
            p.add("port", "0 is not a TCP port (1 to 65535)");
        }
        p
    }
}

/// HTTP(S) request.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCheck {
    /// `http://` or `https://` URL with a host, at most 2048 characters, e.g.
    /// https://api.example.com/health.
    #[cfg_attr(
        feature = "schemars",
        schemars(length(max = validate::MAX_ADDRESS_LEN), extend("x-kubernetes-validations" = [{
            "rule": "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != '' && url(self).getPort().size() <= 5 && (url(self).getPort() == '' || int(url(self).getPort()) <= 65535)",
            "message": "must be an http:// or https:// URL with a host, such as https://api.example.com/health",
            "messageExpression": "'\"' + self + '\" is not an http:// or https:// URL with a host, such as https://api.example.com/health'",
        }]))
    )]
    pub url: String,
    /// Statuses that count as up, each 100 to 599; empty means any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schemars", schemars(inner(range(min = 100, max = 599))))]
    pub expect_status: Vec<u16>,
    /// Text the response body must contain to count as up; not empty. Unset: the body is
    /// not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(length(min = 1)))]
    pub body_contains: Option<String>,
    /// Follow redirects (off: a redirect is measured as the response it is). Default false.
    #[serde(default)]
    pub follow_redirects: bool,
}

impl HttpCheck {
    fn problems(&self) -> Problems {
        let mut p = Problems::default();
        p.check(validate::text("url", &self.url, validate::MAX_ADDRESS_LEN));
        match url::Url::parse(&self.url) {
            Err(e) => p.add("url", format!("{:?} is not a URL: {e}", self.url)),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => p.add(
                "url",
                format!(
                    "{:?} has scheme {:?}, expected http or https",
                    self.url,
                    url.scheme()
                ),
            ),
            Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                p.add("url", format!("{:?} has no host", self.url));
            }
            Ok(_) => {}
        }
        for (i, code) in self.expect_status.iter().enumerate() {
            if !(100..=599).contains(code) {
                p.add(
                    format!("expectStatus[{i}]"),
                    format!("{code} is not an HTTP status code (100 to 599)"),
                );
            }
        }
        if self.body_contains.as_deref() == Some("") {
            p.add("bodyContains", "is empty; omit it to not check the body");
        }
        p
    }
}

/// DNS query: the time to an answer from the resolver.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsCheck {
    /// The name to resolve, e.g. example.com: dot-separated labels of 1 to 63 characters,
    /// at most 253 characters besides an optional final dot.
    #[cfg_attr(
        feature = "schemars",
        schemars(length(min = 1, max = 254), extend("x-kubernetes-validations" = [{
            "rule": r"self.matches(r'^([^.]{1,63}\.)*[^.]{1,63}\.?$') && self.size() - (self.endsWith('.') ? 1 : 0) <= 253",
            "message": "must be a DNS name: dot-separated labels of 1 to 63 characters, at most 253 characters besides a final dot",
            "messageExpression": r#"'"' + self + '" is not a DNS name: dot-separated labels of 1 to 63 characters, at most 253 characters besides a final dot'"#,
        }]))
    )]
    pub query: String,
    /// Record type to ask for: A (default), AAAA, CNAME, MX, NS, TXT, SOA, SRV, PTR or CAA.
    #[serde(rename = "type", default)]
    pub record_type: DnsRecordType,
    /// Resolver to ask, `ip` or `ip:port` (IPv6 with a port in brackets, e.g.
    /// [2606:4700::1111]:53; port 53 when left out). Unset: the node's resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schemars",
        schemars(length(min = 1, max = 64), extend("x-kubernetes-validations" = [{
            "rule": r"isIP(self) || (self.matches(r'^[0-9.]+:[0-9]{1,5}$') && isIP(self.substring(0, self.indexOf(':'))) && int(self.substring(self.indexOf(':') + 1)) <= 65535) || (self.matches(r'^\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]:[0-9]{1,5}$') && isIP(self.substring(1, self.indexOf(']'))) && int(self.substring(self.indexOf(']') + 2)) <= 65535)",
            "message": "must be an IP address or ip:port such as 1.1.1.1 or [2606:4700::1111]:53",
            "messageExpression": r#"'"' + self + '" is not an IP address or ip:port such as 1.1.1.1 or [2606:4700::1111]:53'"#,
        }]))
    )]
    pub server: Option<String>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DnsRecordType {
    #[default]
    A,
    Aaaa,
    Cname,
    Mx,
    Ns,
    Txt,
    Soa,
    Srv,
    Ptr,
    Caa,
}

impl DnsCheck {
    fn problems(&self) -> Problems {
        let mut p = Problems::default();
        let q = self.query.strip_suffix('.').unwrap_or(&self.query);
        if q.is_empty() || q.len() > 253 {
            p.add(
                "query",
                format!("{:?} is not a DNS name (1 to 253 characters)", self.query),
            );
        } else if let Some(label) = q.split('.').find(|l| l.is_empty() || l.len() > 63) {
            p.add(
                "query",
                format!(
                    "{:?} has a label {label:?} that is empty or longer than 63 characters",
                    self.query
                ),
            );
        }
        if let Some(server) = &self.server {
            let ok =
                server.parse::<std::net::IpAddr>().is_ok() || server.parse::<SocketAddr>().is_ok();
            if !ok {
                p.add(
                    "server",
                    format!(
                        "{server:?} is not an IP address or ip:port such as 1.1.1.1 or [2606:4700::1111]:53"
                    ),
                );
            }
        }
        p
    }
}

/// Highest TTL (IPv4) or hop limit (IPv6) a probe can carry.
pub const MAX_TTL: u32 = 255;
/// Most probes sent with one TTL in a round.
pub const MAX_PROBES_PER_HOP: u32 = 10;

/// Traceroute: the routers on the way to `host`, hop by hop, by UDP datagrams (or ICMP echo
/// requests, see protocol) of increasing TTL (hop limit). Each router answers the probe whose
/// TTL runs out with ICMP "time exceeded", the host with "port unreachable" (an echo reply).
/// Every probe of a round carries the same addresses and ports (echo identifier) and
/// checksum (Paris-traceroute style), so routers that balance load by flow send them all
/// along one path and a balanced network does not look like a changing one. Unprivileged:
/// no raw socket, no NET_RAW capability.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schemars", schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.firstHop <= self.maxHops",
    "message": "firstHop must not be above maxHops",
}])))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracerouteCheck {
    /// IPv4 or IPv6 address or host name to trace the path to, e.g. 8.8.8.8 or
    /// 2001:4860:4860::8888.
    #[cfg_attr(
        feature = "schemars",
        schemars(length(min = 1, max = MAX_HOST_LEN), extend("x-kubernetes-validations" = host_rules()))
    )]
    pub host: String,
    /// What the probes are: `udp` (datagrams to a port nothing listens on, as `tracepath`
    /// sends) or `icmp` (echo requests, as `traceroute -I` and `mtr` send; for paths whose
    /// firewalls drop UDP). Default udp.
    #[serde(default)]
    pub protocol: TracerouteProtocol,
    /// UDP destination port of every probe, 1 to 65535; a port nothing listens on, so that
    /// the host answers "port unreachable". Ignored by ICMP probes. Default 33434
    /// (traceroute's).
    #[serde(default = "default_traceroute_port")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1)))]
    pub port: u16,
    /// UDP source port of every probe (ICMP probes: their echo identifier), 1 to 65535.
    /// Unset: a number from 61000 to 65535 (above Linux's ephemeral range) derived from the
    /// target's name, the same every round, so that load balancers hash every round onto the
    /// same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1)))]
    pub source_port: Option<u16>,
    /// TTL of the first probe, 1 to 255: hops before it are not probed. Default 1.
    #[serde(default = "default_first_hop")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1, max = MAX_TTL)))]
    pub first_hop: u32,
    /// Highest TTL probed, 1 to 255; the round ends earlier when the host answers.
    /// Default 30.
    #[serde(default = "default_max_hops")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1, max = MAX_TTL)))]
    pub max_hops: u32,
    /// Probes sent with each TTL, 1 to 10: a hop's loss and RTT min/avg/max come from them.
    /// Default 3.
    #[serde(default = "default_probes_per_hop")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1, max = MAX_PROBES_PER_HOP)))]
    pub probes_per_hop: u32,
    /// How long to wait for a hop's answers, Go duration syntax; a hop silent that long is
    /// `*`. Every hop from firstHop to maxHops may take it, and all of them must fit in the
    /// probe's interval. Default 1s.
    #[serde(default = "default_hop_timeout")]
    pub hop_timeout: Duration,
    /// Rounds in a row, from one node, that a new path must hold before the operator takes
    /// it as that node's path and announces a change (Event PathChanged, alert
    /// FiberPathChanged), 2 to 100: a path seen in fewer rounds is a flap and never counts.
    /// Judged by the operator; the probe ignores it. Default 3.
    #[serde(default = "default_change_after_rounds")]
    #[cfg_attr(
        feature = "schemars",
        schemars(range(min = MIN_CHANGE_ROUNDS, max = MAX_CHANGE_ROUNDS))
    )]
    pub change_after_rounds: u32,
    /// How long the FiberPathChanged alert of a node fires after its path changed (a change
    /// is an event, not a state: the alert then resolves by itself; another change meanwhile
    /// starts the time again), Go duration syntax, at most 7 days; 0s: no alert, only the
    /// Event. Default 1h.
    #[serde(default = "default_change_alert_for")]
    #[cfg_attr(feature = "schemars", schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) <= duration('168h')",
        "message": "must be at most 168h (7 days)",
    }])))]
    pub change_alert_for: Duration,
}

/// What a traceroute's probes are.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TracerouteProtocol {
    /// UDP datagrams to a port nothing listens on; the host answers "port unreachable".
    #[default]
    Udp,
    /// ICMP echo requests on an unprivileged ICMP socket (net.ipv4.ping_group_range must
    /// admit the probe's group); the host answers with an echo reply.
    Icmp,
}

/// Fewest rounds a new path must hold to count as a change: one round is a flap.
pub const MIN_CHANGE_ROUNDS: u32 = 2;
/// Most rounds a new path may be asked to hold.
pub const MAX_CHANGE_ROUNDS: u32 = 100;
/// Longest a path change's alert may fire.
pub const MAX_CHANGE_ALERT_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

fn default_change_after_rounds() -> u32 {
    3
}

fn default_change_alert_for() -> Duration {
    Duration::from_secs(3600)
}

fn default_traceroute_port() -> u16 {
    33434
}

fn default_first_hop() -> u32 {
    1
}

fn default_max_hops() -> u32 {
    30
}

fn default_probes_per_hop() -> u32 {
    3
}

fn default_hop_timeout() -> Duration {
    Duration::from_secs(1)
}

impl TracerouteCheck {
    fn problems(&self, interval: Duration) -> Problems {
        let mut p = Problems::default();
        p.check(host("host", &self.host));
        if self.port == 0 {
            p.add("port", "0 is out of range, expected 1 to 65535");
        }
        if self.source_port == Some(0) {
            p.add("sourcePort", "0 is out of range, expected 1 to 65535");
        }
        for (field, value) in [("firstHop", self.first_hop), ("maxHops", self.max_hops)] {
            if !(1..=MAX_TTL).contains(&value) {
                p.add(
                    field,
                    format!("{value} is out of range, expected 1 to {MAX_TTL}"),
                );
            }
        }
        if self.first_hop > self.max_hops {
            p.add(
                "firstHop",
                format!("{} is above maxHops {}", self.first_hop, self.max_hops),
            );
        }
        if !(1..=MAX_PROBES_PER_HOP).contains(&self.probes_per_hop) {
            p.add(
                "probesPerHop",
                format!(
                    "{} is out of range, expected 1 to {MAX_PROBES_PER_HOP}",
                    self.probes_per_hop
                ),
            );
        }
        if !(MIN_CHANGE_ROUNDS..=MAX_CHANGE_ROUNDS).contains(&self.change_after_rounds) {
            p.add(
                "changeAfterRounds",
                format!(
                    "{} is out of range, expected {MIN_CHANGE_ROUNDS} to {MAX_CHANGE_ROUNDS} (one round is a flap)",
                    self.change_after_rounds
                ),
            );
        }
        if self.change_alert_for.0 > MAX_CHANGE_ALERT_FOR {
            p.add(
                "changeAlertFor",
                format!(
                    "{} is out of range, expected 0s to {}",
                    self.change_alert_for,
                    Duration(MAX_CHANGE_ALERT_FOR)
                ),
            );
        }
        if self.hop_timeout.0.is_zero() {
            p.add("hopTimeout", "must be above 0");
        } else {
            let hops = self.max_hops.saturating_sub(self.first_hop) + 1;
            let round = self.hop_timeout.0.checked_mul(hops);
            if round.is_none_or(|r| r >= interval.0) {
                let took = round.map_or("longer than can be counted".to_owned(), |r| {
                    Duration(r).to_string()
                });
                p.add(
                    "hopTimeout",
                    format!(
                        "{hops} hops of {} each take up to {took}, which does not fit in the {interval} interval",
                        self.hop_timeout
                    ),
                );
            }
        }
        p
    }

    /// The UDP source port of the probes of the target named `target`: `sourcePort`, or
    /// one derived from the name (61000 to 65535, above Linux's ephemeral ports).
    pub fn source_port_for(&self, target: &str) -> u16 {
        self.source_port.unwrap_or_else(|| {
            let span = u64::from(u16::MAX - 61000) + 1;
            61000 + (crate::sample::fnv1a(target.as_bytes()) % span) as u16
        })
    }
}

/// Longest host name: a DNS name is at most 253 characters.
const MAX_HOST_LEN: usize = 253;

/// A host to probe: an IP address, or a DNS name of dot-separated labels of 1 to 63 letters,
/// digits, '-' and '_' (not starting or ending with '-') with an optional final dot. A name of
/// digits and dots only must be an IPv4 address: resolvers read "1.2.3" as 1.2.0.3.
fn host(field: &str, value: &str) -> Result<(), ValidationError> {
    validate::name(field, value, MAX_HOST_LEN)?;
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if numeric || !name.split('.').all(label) {
        return Err(ValidationError::new(
            field,
            format!("{value:?} is not an IP address or a host name ({HOST_SYNTAX})"),
        ));
    }
    Ok(())
}

const HOST_SYNTAX: &str =
    "letters, digits, '-' and '_' in dot-separated labels of at most 63 characters";

/// The API server's rule for a host: what [`host`] accepts, but for IPv4-mapped IPv6
/// addresses such as ::ffff:1.2.3.4, which CEL's `isIP` refuses.
#[cfg(feature = "schemars")]
fn host_rules() -> serde_json::Value {
    let label = "[A-Za-z0-9_]([-A-Za-z0-9_]{0,61}[A-Za-z0-9_])?";
    serde_json::json!([{
        "rule": format!(
            r"isIP(self) || (self.matches(r'^({label}\.)*{label}\.?$') && !self.matches(r'^[0-9.]+$'))"
        ),
        "message": format!("must be an IP address or a host name ({HOST_SYNTAX})"),
        "messageExpression": format!(
            r#"'"' + self + '" is not an IP address or a host name ({})'"#,
            HOST_SYNTAX.replace('\'', "\\'")
        ),
    }])
}

/// Why a probe configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("probe configuration is not valid YAML for this version: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("probe configuration is invalid: {0}")]
    Invalid(#[from] ValidationError),
}

impl ProbeConfig {
    /// Parses and validates a configuration file's text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: ProbeConfig = serde_yaml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a ProbeConfig always serializes")
    }

    /// The first rule the configuration breaks.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.collect().first()
    }

    /// Every rule the configuration breaks, in the order of its fields, so that one reading
    /// tells all that is to be fixed.
    pub fn problems(&self) -> Vec<ValidationError> {
        self.collect().0
    }

    fn collect(&self) -> Problems {
        let mut p = Problems::default();
        p.check(
            validate::name("node", &self.node, validate::MAX_NAME_LEN).map_err(|e| {
                ValidationError::new(
                    e.field,
                    format!("{} (set it in the file or with NODE_NAME)", e.message),
                )
            }),
        );
        if let Err(e) = validate::name("probe", &self.probe, validate::MAX_NAME_LEN) {
            p.0.push(e);
        } else if self.probe.split('/').filter(|p| !p.is_empty()).count() != 2
            || self.probe.matches('/').count() != 1
        {
            p.add(
                "probe",
                format!("{:?} is not namespace/name of a FiberProbe", self.probe),
            );
        }
        p.check(validate::name(
            "region",
            &self.region,
            validate::MAX_NAME_LEN,
        ));
        p.check(validate::country("country", &self.country));
        if self.interval < MIN_INTERVAL {
            p.add(
                "interval",
                format!(
                    "{} is shorter than the minimum of {MIN_INTERVAL}",
                    self.interval
                ),
            );
        }
        if self.timeout.0.is_zero() || self.timeout >= self.interval {
            p.add(
                "timeout",
                format!(
                    "{} must be above 0 and below the interval {}",
                    self.timeout, self.interval
                ),
            );
        }
        p.within("ingest", self.ingest.problems());
        if self.buffer.max_bytes.0 < 1 << 20 {
            p.add(
                "buffer.maxBytes",
                format!("{} is below the minimum of 1Mi", self.buffer.max_bytes),
            );
        }
        if self.buffer.dir.as_os_str().is_empty() {
            p.add("buffer.dir", "must not be empty");
        }
        if self.targets.is_empty() {
            p.add("targets", "is empty; a probe needs at least one target");
        }
        let mut seen = HashMap::new();
        for (i, target) in self.targets.iter().enumerate() {
            let path = format!("targets[{i}]");
            p.within(&path, target.problems(self.interval, self.timeout));
            if let Some(first) = seen.insert(target.name.as_str(), i) {
                p.add(
                    format!("{path}.name"),
                    format!(
                        "{:?} is already the name of targets[{first}]; target names must be unique",
                        target.name
                    ),
                );
            }
        }
        p
    }
}

impl IngestConfig {
    fn problems(&self) -> Problems {
        let mut p = Problems::default();
        if self.urls.is_empty() {
            p.add(
                "urls",
                "is empty; give at least one ingest URL (or set FIBER_INGEST_URL)",
            );
        }
        for (i, u) in self.urls.iter().enumerate() {
            match url::Url::parse(u) {
                Err(e) => p.add(format!("urls[{i}]"), format!("{u:?} is not a URL: {e}")),
                Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => p.add(
                    format!("urls[{i}]"),
                    format!(
                        "{u:?} has scheme {:?}, expected http or https",
                        parsed.scheme()
                    ),
                ),
                Ok(_) => {}
            }
        }
        if !(1..=validate::MAX_SAMPLES_PER_BATCH).contains(&self.batch_max_samples) {
            p.add(
                "batchMaxSamples",
                format!(
                    "{} is out of range, expected 1 to {}",
                    self.batch_max_samples,
                    validate::MAX_SAMPLES_PER_BATCH
                ),
            );
        }
        if self.batch_max_delay.0.is_zero() {
            p.add("batchMaxDelay", "must be above 0");
        }
        p
    }
}

/// The rules a value breaks, each naming its field.
#[derive(Debug, Default)]
struct Problems(Vec<ValidationError>);

impl Problems {
    /// Notes the rule `result` says is broken, if any.
    fn check(&mut self, result: Result<(), ValidationError>) {
        if let Err(e) = result {
            self.0.push(e);
        }
    }

    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError::new(field, message));
    }

    /// Notes the rules broken inside the field `parent`.
    fn within(&mut self, parent: &str, inner: Problems) {
        self.0.extend(inner.0.into_iter().map(|e| e.within(parent)));
    }

    fn first(self) -> Result<(), ValidationError> {
        match self.0.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of DESIGN.md §3, verbatim.
    const DESIGN_EXAMPLE: &str = r#"
node: gh-accra-1                 # NODE_NAME overrides
probe: fiberstack/accra-edge     # namespace/name of the FiberProbe
region: ghana
country: GH
interval: 60s
timeout: 5s
ingest:
  urls: ["http://fiberstack-ingest-ghana.fiberstack.svc:8080"]   # FIBER_INGEST_URL overrides
  tokenFile: /var/run/fiberstack/token                            # FIBER_TOKEN(_FILE) overrides
  batchMaxSamples: 500
  batchMaxDelay: 5s
buffer: { dir: /var/lib/fiberstack/buffer, maxBytes: 64Mi }        # FIBER_BUFFER_DIR overrides
metricsListen: 0.0.0.0:9090      # optional
targets:
  - { name: google-dns, icmp: { host: 8.8.8.8, count: 5, spacing: 200ms, payloadBytes: 56 } }
  - { name: api,  http: { url: "https://api.example.com/health", expectStatus: [200], bodyContains: ok, followRedirects: false } }
  - { name: db,   tcp:  { host: 10.0.0.5, port: 5432 } }
  - { name: resolver, dns: { query: example.com, type: A, server: 1.1.1.1 } }
"#;

    fn example() -> ProbeConfig {
        ProbeConfig::from_yaml(DESIGN_EXAMPLE).unwrap()
    }

    #[test]
    fn design_example_parses() {
        let c = example();
        assert_eq!(c.node, "gh-accra-1");
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.buffer.max_bytes, ByteSize::mebibytes(64));
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9090".parse().unwrap()));
        let kinds: Vec<CheckKind> = c
            .targets
            .iter()
            .map(|t| t.check().unwrap().kind())
            .collect();
        assert_eq!(
            kinds,
            [
                CheckKind::Icmp,
                CheckKind::Http,
                CheckKind::Tcp,
                CheckKind::Dns
            ]
        );
        let Check::Icmp(icmp) = c.targets[0].check().unwrap() else {
            panic!()
        };
        assert_eq!(icmp.spacing, Duration::from_millis(200));
        let Check::Dns(dns) = c.targets[3].check().unwrap() else {
            panic!()
        };
        assert_eq!(dns.record_type, DnsRecordType::A);
    }

    #[test]
    fn yaml_round_trip() {
        let c = example();
        let text = c.to_yaml();
        assert!(text.contains("interval: 1m"), "{text}");
        assert!(text.contains("maxBytes: 64Mi"), "{text}");
        assert!(text.contains("batchMaxSamples: 500"), "{text}");
        assert_eq!(ProbeConfig::from_yaml(&text).unwrap(), c);
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let c = ProbeConfig::from_yaml(
            "node: n1\nprobe: ns/p\nregion: ghana\ncountry: GH\ningest: { urls: [\"http://i:8080\"] }\ntargets: [{ name: t, icmp: { host: 127.0.0.1 } }]\n",
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.ingest.batch_max_samples, 500);
        assert_eq!(c.ingest.batch_max_delay, Duration::from_secs(5));
        assert_eq!(c.buffer, BufferConfig::default());
        assert_eq!(c.metrics_listen, None);
        let Check::Icmp(icmp) = c.targets[0].check().unwrap() else {
            panic!()
        };
        assert_eq!(
            (icmp.count, icmp.spacing, icmp.payload_bytes),
            (5, Duration::from_millis(200), 56)
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_parse_errors_that_say_where() {
        let typo = DESIGN_EXAMPLE.replace("batchMaxDelay", "batchMaxDelai");
        let e = ProbeConfig::from_yaml(&typo).unwrap_err().to_string();
        assert!(e.contains("batchMaxDelai"), "{e}");
        let bad_duration = DESIGN_EXAMPLE.replace("interval: 60s", "interval: 60");
        let e = ProbeConfig::from_yaml(&bad_duration)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"60\" is not a duration"), "{e}");
        let bad_type = DESIGN_EXAMPLE.replace("type: A", "type: AXFR");
        assert!(
            ProbeConfig::from_yaml(&bad_type)
                .unwrap_err()
                .to_string()
                .contains("AXFR")
        );
    }

    fn icmp(c: &mut ProbeConfig) -> &mut IcmpCheck {
        c.targets[0].icmp.as_mut().unwrap()
    }

    fn traceroute_config(check: &str) -> Result<ProbeConfig, ConfigError> {
        let text = DESIGN_EXAMPLE.replace(
            "targets:\n",
            &format!("targets:\n  - {{ name: path, traceroute: {check} }}\n"),
        );
        ProbeConfig::from_yaml(&text)
    }

    #[test]
    fn a_traceroute_target_has_defaults_and_its_rules_name_their_field() {
        let c = traceroute_config("{ host: 8.8.8.8 }").unwrap();
        let Check::Traceroute(t) = c.targets[0].check().unwrap() else {
            panic!("{:?}", c.targets[0]);
        };
        assert_eq!(
            (t.port, t.first_hop, t.max_hops, t.probes_per_hop),
            (33434, 1, 30, 3)
        );
        assert_eq!(t.hop_timeout, Duration::from_secs(1));
        assert_eq!(
            (t.change_after_rounds, t.change_alert_for),
            (3, Duration::from_secs(3600))
        );
        // The source port is the same every round and outside Linux's ephemeral range.
        let port = t.source_port_for("path");
        assert_eq!(port, t.source_port_for("path"));
        assert!(port >= 61000, "{port}");
        let pinned = traceroute_config("{ host: 8.8.8.8, sourcePort: 40000 }").unwrap();
        let Check::Traceroute(t) = pinned.targets[0].check().unwrap() else {
            panic!()
        };
        assert_eq!(t.source_port_for("path"), 40000);

        let refused = |check: &str| match traceroute_config(check) {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("{check}: {other:?}"),
        };
        let e = refused("{ host: 8.8.8.8, firstHop: 5, maxHops: 4 }");
        assert_eq!(e.field, "targets[0].traceroute.firstHop");
        assert!(e.message.contains("5 is above maxHops 4"), "{e}");
        let e = refused("{ host: 8.8.8.8, maxHops: 256 }");
        assert_eq!(e.field, "targets[0].traceroute.maxHops");
        assert!(
            e.message.contains("256 is out of range, expected 1 to 255"),
            "{e}"
        );
        let e = refused("{ host: 8.8.8.8, probesPerHop: 11 }");
        assert_eq!(e.field, "targets[0].traceroute.probesPerHop");
        let e = refused("{ host: 8.8.8.8, changeAfterRounds: 1 }");
        assert_eq!(e.field, "targets[0].traceroute.changeAfterRounds");
        assert!(e.message.contains("one round is a flap"), "{e}");
        let e = refused("{ host: 8.8.8.8, changeAlertFor: 200h }");
        assert_eq!(e.field, "targets[0].traceroute.changeAlertFor");
        let e = refused("{ host: 8.8.8.8, port: 0 }");
        assert_eq!(e.field, "targets[0].traceroute.port");
        let e = refused("{ host: 'not a host' }");
        assert_eq!(e.field, "targets[0].traceroute.host");
        // 30 hops of 3s each may take 90s: more than the 60s interval.
        let e = refused("{ host: 8.8.8.8, hopTimeout: 3s }");
        assert_eq!(e.field, "targets[0].traceroute.hopTimeout");
        assert!(
            e.message.contains("30 hops of 3s each take up to 1m30s"),
            "{e}"
        );
        assert!(matches!(
            traceroute_config("{ host: 8.8.8.8, protocol: tcp }"),
            Err(ConfigError::Parse(_))
        ));
        // UDP unless asked for ICMP; the CRD's rule on changeAlertFor says 168h.
        assert_eq!(t.protocol, TracerouteProtocol::Udp);
        let c = traceroute_config("{ host: 8.8.8.8, protocol: icmp }").unwrap();
        let Check::Traceroute(t) = c.targets[0].check().unwrap() else {
            panic!()
        };
        assert_eq!(t.protocol, TracerouteProtocol::Icmp);
        assert_eq!(Duration(MAX_CHANGE_ALERT_FOR), "168h".parse().unwrap());
        assert!(traceroute_config("{ host: 8.8.8.8, changeAlertFor: 168h }").is_ok());
    }

    fn invalid(edit: impl FnOnce(&mut ProbeConfig)) -> ValidationError {
        let mut c = example();
        edit(&mut c);
        c.validate().unwrap_err()
    }

    #[test]
    fn each_config_rule_names_its_field() {
        let cases: Vec<(ValidationError, &str)> = vec![
            (invalid(|c| c.node.clear()), "node"),
            (invalid(|c| c.probe = "accra-edge".into()), "probe"),
            (invalid(|c| c.probe = "a/b/c".into()), "probe"),
            (invalid(|c| c.region.clear()), "region"),
            (invalid(|c| c.country = "GHA".into()), "country"),
            (
                invalid(|c| c.interval = Duration::from_millis(500)),
                "interval",
            ),
            (invalid(|c| c.timeout = Duration::from_secs(60)), "timeout"),
            (invalid(|c| c.timeout = Duration::default()), "timeout"),
            (invalid(|c| c.ingest.urls.clear()), "ingest.urls"),
            (
                invalid(|c| c.ingest.urls.push("ftp://x".into())),
                "ingest.urls[1]",
            ),
            (
                invalid(|c| c.ingest.urls[0] = "not a url".into()),
                "ingest.urls[0]",
            ),
            (
                invalid(|c| c.ingest.batch_max_samples = 0),
                "ingest.batchMaxSamples",
            ),
            (
                invalid(|c| c.ingest.batch_max_samples = 5001),
                "ingest.batchMaxSamples",
            ),
            (
                invalid(|c| c.ingest.batch_max_delay = Duration::default()),
                "ingest.batchMaxDelay",
            ),
            (
                invalid(|c| c.buffer.max_bytes = ByteSize(1000)),
                "buffer.maxBytes",
            ),
            (invalid(|c| c.buffer.dir = PathBuf::new()), "buffer.dir"),
            (invalid(|c| c.targets.clear()), "targets"),
            (
                invalid(|c| c.targets[2].name = "api".into()),
                "targets[2].name",
            ),
            (invalid(|c| c.targets[1].name.clear()), "targets[1].name"),
            (invalid(|c| c.targets[0].icmp = None), "targets[0]"),
            (
                invalid(|c| c.targets[0].tcp = c.targets[2].tcp.clone()),
                "targets[0]",
            ),
            (invalid(|c| icmp(c).count = 0), "targets[0].icmp.count"),
            (invalid(|c| icmp(c).count = 101), "targets[0].icmp.count"),
            (
                invalid(|c| icmp(c).payload_bytes = 70_000),
                "targets[0].icmp.payloadBytes",
            ),
            (
                invalid(|c| icmp(c).spacing = Duration::from_secs(20)),
                "targets[0].icmp.spacing",
            ),
            (
                invalid(|c| icmp(c).host = "a b".into()),
                "targets[0].icmp.host",
            ),
            (
                invalid(|c| c.targets[1].http.as_mut().unwrap().url = "ftp://x/".into()),
                "targets[1].http.url",
            ),
            (
                invalid(|c| c.targets[1].http.as_mut().unwrap().url = "https//x".into()),
                "targets[1].http.url",
            ),
            (
                invalid(|c| c.targets[1].http.as_mut().unwrap().expect_status = vec![200, 700]),
                "targets[1].http.expectStatus[1]",
            ),
            (
                invalid(|c| {
                    c.targets[1].http.as_mut().unwrap().body_contains = Some(String::new())
                }),
                "targets[1].http.bodyContains",
            ),
            (
                invalid(|c| c.targets[2].tcp.as_mut().unwrap().port = 0),
                "targets[2].tcp.port",
            ),
            (
                invalid(|c| c.targets[2].tcp.as_mut().unwrap().host.clear()),
                "targets[2].tcp.host",
            ),
            (
                invalid(|c| c.targets[3].dns.as_mut().unwrap().query = "a..b".into()),
                "targets[3].dns.query",
            ),
            (
                invalid(|c| c.targets[3].dns.as_mut().unwrap().query = String::new()),
                "targets[3].dns.query",
            ),
            (
                invalid(|c| c.targets[3].dns.as_mut().unwrap().server = Some("one.one".into())),
                "targets[3].dns.server",
            ),
            (
                invalid(|c| c.targets[1].thresholds = Some(limits(|t| t.uptime_pct = Some(101.0)))),
                "targets[1].thresholds.uptimePct",
            ),
            (
                invalid(|c| {
                    c.targets[1].thresholds = Some(limits(|t| t.packet_loss_pct = Some(-1.0)))
                }),
                "targets[1].thresholds.packetLossPct",
            ),
            (
                invalid(|c| {
                    c.targets[1].thresholds = Some(limits(|t| t.latency_p95_ms = Some(f64::NAN)))
                }),
                "targets[1].thresholds.latencyP95Ms",
            ),
            (
                invalid(|c| {
                    c.targets[1].thresholds = Some(limits(|t| t.cert_expiry_days = Some(3651)))
                }),
                "targets[1].thresholds.certExpiryDays",
            ),
        ];
        for (e, field) in cases {
            assert_eq!(e.field, field, "{e}");
        }
    }

    fn limits(edit: impl FnOnce(&mut TargetThresholds)) -> TargetThresholds {
        let mut t = TargetThresholds::default();
        edit(&mut t);
        t
    }

    #[test]
    fn a_target_may_set_some_thresholds_of_its_own() {
        let c = ProbeConfig::from_yaml(&DESIGN_EXAMPLE.replace(
            "expectStatus: [200], bodyContains: ok, followRedirects: false }",
            "expectStatus: [200] }, thresholds: { latencyP95Ms: 400, certExpiryDays: 30 }",
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.targets[1].thresholds,
            Some(TargetThresholds {
                latency_p95_ms: Some(400.0),
                cert_expiry_days: Some(30),
                ..Default::default()
            })
        );
        assert_eq!(c.targets[0].thresholds, None);
        let typo = DESIGN_EXAMPLE.replace(
            "expectStatus: [200], bodyContains: ok, followRedirects: false }",
            "expectStatus: [200] }, thresholds: { latencyP95: 400 }",
        );
        let e = ProbeConfig::from_yaml(&typo).unwrap_err().to_string();
        assert!(e.contains("latencyP95"), "{e}");
    }

    #[test]
    fn a_target_may_have_objectives_of_its_own_within_the_crds_bounds() {
        let c = ProbeConfig::from_yaml(&DESIGN_EXAMPLE.replace(
            "expectStatus: [200], bodyContains: ok, followRedirects: false }",
            "expectStatus: [200] }, slo: { availabilityPct: 99.5, latency: { thresholdMs: 80, percent: 99 } }",
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.targets[1].slo,
            Some(Slo {
                availability_pct: 99.5,
                latency: Some(LatencyObjective {
                    threshold_ms: 80.0,
                    percent: 99.0
                }),
                window_days: 30,
            })
        );
        let slo = |edit: fn(&mut Slo)| {
            move |c: &mut ProbeConfig| {
                let mut s = Slo {
                    availability_pct: 99.0,
                    latency: Some(LatencyObjective {
                        threshold_ms: 150.0,
                        percent: 99.0,
                    }),
                    window_days: 30,
                };
                edit(&mut s);
                c.targets[1].slo = Some(s);
            }
        };
        for (edit, field) in [
            (
                slo(|s| s.availability_pct = 100.0),
                "targets[1].slo.availabilityPct",
            ),
            (slo(|s| s.window_days = 91), "targets[1].slo.windowDays"),
            (slo(|s| s.window_days = 0), "targets[1].slo.windowDays"),
            (
                slo(|s| s.latency.as_mut().unwrap().threshold_ms = 0.0),
                "targets[1].slo.latency.thresholdMs",
            ),
            (
                slo(|s| s.latency.as_mut().unwrap().percent = f64::NAN),
                "targets[1].slo.latency.percent",
            ),
        ] {
            assert_eq!(invalid(edit).field, field);
        }
    }

    #[test]
    fn check_count_errors_say_what_is_set() {
        let e = invalid(|c| c.targets[0].tcp = c.targets[2].tcp.clone());
        assert!(e.message.contains("sets 2 checks (icmp, tcp)"), "{e}");
        let e = invalid(|c| c.targets[0].icmp = None);
        assert!(e.message.contains("sets no check"), "{e}");
        let e = invalid(|c| c.targets[2].name = "api".into());
        assert!(e.message.contains("targets[1]"), "{e}");
        let e = invalid(|c| c.node.clear());
        assert!(e.message.contains("NODE_NAME"), "{e}");
    }

    #[test]
    fn every_broken_rule_is_reported_in_field_order() {
        let mut c = example();
        c.timeout = Duration::default();
        icmp(&mut c).host = "a b".into();
        icmp(&mut c).count = 0;
        let http = c.targets[1].http.as_mut().unwrap();
        http.url = "ftp://x/".into();
        http.expect_status = vec![999, 200, 0];
        c.targets[2].tcp.as_mut().unwrap().port = 0;
        c.targets[3].name = "api".into();
        let fields: Vec<String> = c.problems().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "timeout",
                "targets[0].icmp.host",
                "targets[0].icmp.count",
                "targets[1].http.url",
                "targets[1].http.expectStatus[0]",
                "targets[1].http.expectStatus[2]",
                "targets[2].tcp.port",
                "targets[3].name",
            ]
        );
        assert_eq!(c.validate().unwrap_err().field, "timeout");
        assert_eq!(example().problems(), []);
    }

    #[test]
    fn hosts_are_ip_addresses_or_host_names() {
        let with_host = |h: &str| {
            let mut c = example();
            icmp(&mut c).host = h.into();
            c.targets[2].tcp.as_mut().unwrap().host = h.into();
            c.problems()
        };
        let long_label = "a".repeat(64);
        for ok in [
            "8.8.8.8",
            "::1",
            "2001:4860:4860::8888",
            "localhost",
            "mail.example.com",
            "mail.example.com.",
            "db_1.internal",
            "host.fiberstack.svc.cluster.local",
            "1e100.net",
        ] {
            assert_eq!(with_host(ok), [], "{ok}");
        }
        for bad in [
            "a b",
            "1.2.3",
            "1.2.3.4.",
            "999.1.1.1",
            "-a.example.com",
            "a-.example.com",
            "a..b",
            ".",
            "example.com/x",
            "[::1]",
            "http://example.com",
            long_label.as_str(),
        ] {
            let fields: Vec<String> = with_host(bad).into_iter().map(|e| e.field).collect();
            assert_eq!(
                fields,
                ["targets[0].icmp.host", "targets[2].tcp.host"],
                "{bad}"
            );
        }
        let e = invalid(|c| icmp(c).host = "1.2.3".into());
        assert!(
            e.message
                .contains("\"1.2.3\" is not an IP address or a host name"),
            "{e}"
        );
    }

    #[test]
    fn a_dns_query_may_end_in_one_dot() {
        let query = |q: &str| {
            let mut c = example();
            c.targets[3].dns.as_mut().unwrap().query = q.into();
            c.validate()
        };
        assert!(query("example.com.").is_ok());
        assert!(query("_dmarc.example.com").is_ok());
        assert_eq!(
            query("example.com..").unwrap_err().field,
            "targets[3].dns.query"
        );
        assert_eq!(query(".").unwrap_err().field, "targets[3].dns.query");
    }

    #[test]
    fn an_http_url_fits_a_samples_address() {
        let long = format!("https://example.com/{}", "a".repeat(2_048));
        let e = invalid(|c| c.targets[1].http.as_mut().unwrap().url = long);
        assert_eq!(e.field, "targets[1].http.url");
        assert!(e.message.contains("at most 2048"), "{e}");
    }

    #[test]
    fn an_icmp_round_too_long_to_count_is_refused_not_a_panic() {
        let e = invalid(|c| icmp(c).spacing = Duration(std::time::Duration::MAX));
        assert_eq!(e.field, "targets[0].icmp.spacing");
        assert!(e.message.contains("longer than can be counted"), "{e}");
    }

    #[test]
    fn dns_server_forms() {
        for ok in ["1.1.1.1", "127.0.0.1:5353", "::1", "[::1]:53"] {
            let mut c = example();
            c.targets[3].dns.as_mut().unwrap().server = Some(ok.into());
            assert!(c.validate().is_ok(), "{ok}");
        }
    }
}
