//! `Sample` (one round of one check against one target) and `Batch` (what a probe sends).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::validate::{self, MAX_FUTURE_SKEW_SECS, ValidationError};

/// The kind of check that produced a sample, and the field of a [`crate::Target`] that holds
/// it. The one list of kinds: messages, the CRD's CEL rule and the tests of the OpenAPI
/// document and of the database's constraint all derive from [`CheckKind::ALL`], so a new
/// kind is a variant here, its check in the model and the probe, and one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "utoipa",
    schema(description = "The kind of check that produced a sample.")
)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Icmp,
    Tcp,
    Http,
    Dns,
    Traceroute,
}

impl CheckKind {
    pub const ALL: [CheckKind; 5] = [
        Self::Icmp,
        Self::Tcp,
        Self::Http,
        Self::Dns,
        Self::Traceroute,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Icmp => "icmp",
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Dns => "dns",
            Self::Traceroute => "traceroute",
        }
    }

    /// Every kind's name, for messages: `icmp, tcp, http, dns`.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckKind {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new("kind", format!("{s:?} is not one of {}", Self::names()))
            })
    }
}

/// One round of one check against one target. Latencies are milliseconds; `packet_loss` is a
/// percentage (ICMP only). Optional figures are absent, not zero, when not measured.
///
/// The bounds in the `schema(...)` attributes are those `validate` enforces (utoipa takes
/// only literals there; the ingest's OpenAPI test compares them with `validate`'s constants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Sample {
    /// When the round started (UTC). Not before 2000-01-01, not over 5 minutes ahead of the
    /// server's clock.
    pub time: DateTime<Utc>,
    /// The target's name in the FiberProbe.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 63))]
    pub target: String,
    pub kind: CheckKind,
    /// What was probed: an IP address, `host:port` or URL.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(max_length = 2048))]
    pub address: String,
    /// Whether the check succeeded; `true` requires `latency_ms`.
    pub up: bool,
    /// Mean round-trip or completion time of the round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 10000))]
    pub latency_ms: Option<f64>,
    /// Fastest round trip of the round; not above `latency_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 10000))]
    pub latency_min_ms: Option<f64>,
    /// Slowest round trip of the round; not below `latency_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 10000))]
    pub latency_max_ms: Option<f64>,
    /// Mean absolute difference of consecutive round-trip times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 10000))]
    pub jitter_ms: Option<f64>,
    /// Percent of packets lost (ICMP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 100))]
    pub packet_loss: Option<f64>,
    /// Packets sent (ICMP); at most 2147483647 (the database's `integer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 2147483647))]
    pub sent: Option<u32>,
    /// Replies received (ICMP); not more than `sent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 2147483647))]
    pub received: Option<u32>,
    /// HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 100, maximum = 599))]
    pub status_code: Option<u16>,
    /// Why the check failed. Any text but the NUL character (U+0000), which the database
    /// cannot store (as in every string of a sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(max_length = 1024))]
    pub error: Option<String>,
    /// Kind-specific detail, at most 8 KiB as JSON: HTTP phases (`dns_ms`, `connect_ms`,
    /// `tls_ms`, `ttfb_ms`, `total_ms`), the HTTPS leaf certificate's `cert_not_after` (RFC
    /// 3339) and `cert_days_to_expiry` (whole days, negative once expired), DNS rcode and
    /// answers, …
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub metadata: Map<String, Value>,
    /// Traceroute: the hops of the round in TTL order, from the first probed to the host (or
    /// to the last TTL probed when the host did not answer). Absent for other kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(max_items = 255))]
    pub hops: Vec<Hop>,
    /// Traceroute: [`path_fingerprint`] of `hops` (16 hex digits), equal for rounds that took
    /// the same path; required with `hops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(pattern = "^[0-9a-f]{16}$"))]
    pub path_fingerprint: Option<String>,
}

/// One hop of a traceroute round: the probes sent with one TTL and who answered them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Hop {
    /// The TTL (IPv6: hop limit) of the hop's probes, 1 to 255; increasing along `hops`.
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 255))]
    pub ttl: u8,
    /// The IP address that answered (a router, or the host at the last hop); absent when no
    /// probe of the hop was answered (`*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(max_length = 45))]
    pub address: Option<String>,
    /// Probes sent with this TTL.
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 2147483647))]
    pub sent: u32,
    /// Probes answered within the hop timeout; not more than `sent`.
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 2147483647))]
    pub received: u32,
    /// Percent of the hop's probes unanswered.
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 100))]
    pub packet_loss: f64,
    /// Mean round-trip time of the answered probes; present when `received` is above 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 10000))]
    pub latency_ms: Option<f64>,
    /// Fastest answered probe; not above `latency_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 10000))]
    pub latency_min_ms: Option<f64>,
    /// Slowest answered probe; not below `latency_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 10000))]
    pub latency_max_ms: Option<f64>,
}

/// Most hops a sample may carry: one per TTL.
pub const MAX_HOPS: usize = 255;

/// 64-bit FNV-1a: a hash fixed by its definition, so that a fingerprint computed by one
/// version of the probe equals the one computed by the next.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The fingerprint of a path: FNV-1a of its hops' TTLs and addresses (`*` for a silent hop),
/// as 16 hex digits. Two rounds over the same routers have the same fingerprint; RTTs and
/// loss do not enter it.
pub fn path_fingerprint(hops: &[Hop]) -> String {
    let mut text = String::new();
    for hop in hops {
        text.push_str(&format!(
            "{} {}\n",
            hop.ttl,
            hop.address.as_deref().unwrap_or("*")
        ));
    }
    format!("{:016x}", fnv1a(text.as_bytes()))
}

impl Hop {
    fn validate(&self, field: &str, previous_ttl: u8) -> Result<(), ValidationError> {
        let at = |name: &str| format!("{field}.{name}");
        if self.ttl == 0 || self.ttl <= previous_ttl {
            return Err(ValidationError::new(
                at("ttl"),
                format!(
                    "{} must be 1 to 255 and above the previous hop's {previous_ttl}",
                    self.ttl
                ),
            ));
        }
        if let Some(address) = &self.address
            && address.parse::<std::net::IpAddr>().is_err()
        {
            validate::text(&at("address"), address, 64)?;
            return Err(ValidationError::new(
                at("address"),
                format!("{address:?} is not an IP address"),
            ));
        }
        validate::count(&at("sent"), self.sent)?;
        if self.sent == 0 {
            return Err(ValidationError::new(
                at("sent"),
                "0: a hop has at least one probe",
            ));
        }
        if self.received > self.sent {
            return Err(ValidationError::new(
                at("received"),
                format!(
                    "{} answers counted for {} probes sent",
                    self.received, self.sent
                ),
            ));
        }
        validate::percent(&at("packet_loss"), self.packet_loss)?;
        for (name, value) in [
            ("latency_ms", self.latency_ms),
            ("latency_min_ms", self.latency_min_ms),
            ("latency_max_ms", self.latency_max_ms),
        ] {
            if let Some(v) = value {
                validate::latency(&at(name), v)?;
            }
        }
        if (self.received > 0) != self.address.is_some() {
            return Err(ValidationError::new(
                at("address"),
                format!(
                    "is {} while {} probes were answered; a hop has an address exactly when it answered",
                    if self.address.is_some() {
                        "set"
                    } else {
                        "absent"
                    },
                    self.received
                ),
            ));
        }
        if (self.received > 0) != self.latency_ms.is_some() {
            return Err(ValidationError::new(
                at("latency_ms"),
                format!(
                    "is {} while {} probes were answered; it is required exactly when a probe was",
                    if self.latency_ms.is_some() {
                        "set"
                    } else {
                        "absent"
                    },
                    self.received
                ),
            ));
        }
        if let (Some(min), Some(mean)) = (self.latency_min_ms, self.latency_ms)
            && min > mean + ORDER_EPSILON_MS
        {
            return Err(ValidationError::new(
                at("latency_min_ms"),
                format!("{min} is above latency_ms {mean}"),
            ));
        }
        if let (Some(max), Some(mean)) = (self.latency_max_ms, self.latency_ms)
            && max + ORDER_EPSILON_MS < mean
        {
            return Err(ValidationError::new(
                at("latency_max_ms"),
                format!("{max} is below latency_ms {mean}"),
            ));
        }
        Ok(())
    }
}

/// Tolerance for `latency_min_ms <= latency_ms <= latency_max_ms`, which rounding may bend.
const ORDER_EPSILON_MS: f64 = 1e-6;

/// Earliest time a sample may carry: anything before is a broken clock, not a measurement.
pub(crate) fn earliest_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

impl Sample {
    /// Replaces every NUL (U+0000) in the sample's strings — address, error, metadata keys
    /// and values at any depth — with U+FFFD, which PostgreSQL can store (a NUL it cannot,
    /// and ingest refuses a sample carrying one). For the probe: what it measures (a DNS
    /// answer, a server's error text) may contain one. Returns how many it replaced.
    pub fn scrub_nul(&mut self) -> usize {
        fn text(s: &mut String) -> usize {
            let n = s.matches('\0').count();
            if n > 0 {
                *s = s.replace('\0', "\u{FFFD}");
            }
            n
        }
        fn value(v: &mut Value) -> usize {
            match v {
                Value::String(s) => text(s),
                Value::Array(items) => items.iter_mut().map(value).sum(),
                Value::Object(map) => object(map),
                _ => 0,
            }
        }
        fn object(map: &mut Map<String, Value>) -> usize {
            let mut n = 0;
            if map.keys().any(|k| k.contains('\0')) {
                let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
                for (mut k, v) in entries {
                    n += text(&mut k);
                    map.insert(k, v);
                }
            }
            n + map.values_mut().map(value).sum::<usize>()
        }
        text(&mut self.target)
            + text(&mut self.address)
            + self.error.as_mut().map_or(0, text)
            + object(&mut self.metadata)
    }

    /// A sample with only the required fields set, for builders and tests.
    pub fn new(time: DateTime<Utc>, target: impl Into<String>, kind: CheckKind, up: bool) -> Self {
        Self {
            time,
            target: target.into(),
            kind,
            address: String::new(),
            up,
            latency_ms: None,
            latency_min_ms: None,
            latency_max_ms: None,
            jitter_ms: None,
            packet_loss: None,
            sent: None,
            received: None,
            status_code: None,
            error: None,
            metadata: Map::new(),
            hops: Vec::new(),
            path_fingerprint: None,
        }
    }

    /// Checks every rule; `now` bounds how far in the future `time` may be.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), ValidationError> {
        validate::name("target", &self.target, validate::MAX_TARGET_NAME_LEN)?;
        validate::text("address", &self.address, validate::MAX_ADDRESS_LEN)?;
        if self.time > now + chrono::Duration::seconds(MAX_FUTURE_SKEW_SECS) {
            return Err(ValidationError::new(
                "time",
                format!(
                    "{} is more than {} minutes in the future (server time {})",
                    self.time.to_rfc3339(),
                    MAX_FUTURE_SKEW_SECS / 60,
                    now.to_rfc3339()
                ),
            ));
        }
        if self.time < earliest_time() {
            return Err(ValidationError::new(
                "time",
                format!(
                    "{} is before 2000-01-01; is the node's clock set?",
                    self.time.to_rfc3339()
                ),
            ));
        }
        let latencies = [
            ("latency_ms", self.latency_ms),
            ("latency_min_ms", self.latency_min_ms),
            ("latency_max_ms", self.latency_max_ms),
            ("jitter_ms", self.jitter_ms),
        ];
        for (field, value) in latencies {
            if let Some(v) = value {
                validate::latency(field, v)?;
            }
        }
        if let (Some(min), Some(mean)) = (self.latency_min_ms, self.latency_ms)
            && min > mean + ORDER_EPSILON_MS
        {
            return Err(ValidationError::new(
                "latency_min_ms",
                format!("{min} is above latency_ms {mean}"),
            ));
        }
        if let (Some(max), Some(mean)) = (self.latency_max_ms, self.latency_ms)
            && max + ORDER_EPSILON_MS < mean
        {
            return Err(ValidationError::new(
                "latency_max_ms",
                format!("{max} is below latency_ms {mean}"),
            ));
        }
        if self.up && self.latency_ms.is_none() {
            return Err(ValidationError::new(
                "latency_ms",
                "is required when up is true (a successful check has a duration)",
            ));
        }
        if let Some(loss) = self.packet_loss {
            validate::percent("packet_loss", loss)?;
        }
        if let Some(sent) = self.sent {
            validate::count("sent", sent)?;
        }
        if let Some(received) = self.received {
            validate::count("received", received)?;
        }
        if let (Some(sent), Some(received)) = (self.sent, self.received)
            && received > sent
        {
            return Err(ValidationError::new(
                "received",
                format!(
                    "{received} replies counted for {sent} sent; duplicates must not be counted"
                ),
            ));
        }
        if let Some(code) = self.status_code
            && !(100..=599).contains(&code)
        {
            return Err(ValidationError::new(
                "status_code",
                format!("{code} is not an HTTP status code (100 to 599)"),
            ));
        }
        if let Some(error) = &self.error {
            validate::text("error", error, validate::MAX_ERROR_LEN)?;
        }
        self.validate_hops()?;
        if !self.metadata.is_empty() {
            validate::json_object("metadata", &self.metadata)?;
            let size = serde_json::to_vec(&self.metadata)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > validate::MAX_METADATA_BYTES {
                return Err(ValidationError::new(
                    "metadata",
                    format!(
                        "is {size} bytes as JSON, at most {} are allowed",
                        validate::MAX_METADATA_BYTES
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Sample {
    /// The traceroute fields: hops only on a traceroute sample, each valid, and the
    /// fingerprint theirs.
    fn validate_hops(&self) -> Result<(), ValidationError> {
        if !self.hops.is_empty() && self.kind != CheckKind::Traceroute {
            return Err(ValidationError::new(
                "hops",
                format!(
                    "holds {} hops on a {} sample; only traceroute samples carry hops",
                    self.hops.len(),
                    self.kind
                ),
            ));
        }
        if self.hops.len() > MAX_HOPS {
            return Err(ValidationError::new(
                "hops",
                format!(
                    "holds {} hops, at most {MAX_HOPS} (one per TTL) are allowed",
                    self.hops.len()
                ),
            ));
        }
        let mut previous = 0;
        for (i, hop) in self.hops.iter().enumerate() {
            hop.validate(&format!("hops[{i}]"), previous)?;
            previous = hop.ttl;
        }
        match (&self.path_fingerprint, self.hops.is_empty()) {
            (None, true) => Ok(()),
            (None, false) => Err(ValidationError::new(
                "path_fingerprint",
                "is required with hops",
            )),
            (Some(f), true) => Err(ValidationError::new(
                "path_fingerprint",
                format!("{f:?} is set without hops"),
            )),
            (Some(f), false) => {
                let expected = path_fingerprint(&self.hops);
                if *f == expected {
                    Ok(())
                } else {
                    validate::text("path_fingerprint", f, 64)?;
                    Err(ValidationError::new(
                        "path_fingerprint",
                        format!("{f:?} is not the fingerprint of the hops, {expected}"),
                    ))
                }
            }
        }
    }
}

/// What a probe sends: samples of one node for one FiberProbe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Batch {
    /// `namespace/name` of the FiberProbe.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 253))]
    pub probe: String,
    /// The FiberRegion's name.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 253))]
    pub region: String,
    /// ISO 3166-1 alpha-2 country code of the region.
    #[cfg_attr(feature = "utoipa", schema(pattern = "^[A-Z]{2}$"))]
    pub country: String,
    /// The Kubernetes node the probe runs on.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 253))]
    pub node: String,
    /// Version of the probe agent that measured the samples.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(max_length = 64))]
    pub agent_version: String,
    #[cfg_attr(feature = "utoipa", schema(min_items = 1, max_items = 5000))]
    pub samples: Vec<Sample>,
}

/// A sample of a batch that was refused, by its position in the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Rejection {
    /// Position of the refused sample in the batch.
    pub index: usize,
    /// The rule it breaks, naming the field.
    pub error: String,
}

impl Batch {
    /// Checks the fields that apply to the whole batch; an error here refuses every sample.
    pub fn validate_envelope(&self) -> Result<(), ValidationError> {
        validate::name("probe", &self.probe, validate::MAX_NAME_LEN)?;
        match self.probe.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
            _ => {
                return Err(ValidationError::new(
                    "probe",
                    format!("{:?} is not namespace/name of a FiberProbe", self.probe),
                ));
            }
        }
        validate::name("region", &self.region, validate::MAX_NAME_LEN)?;
        validate::country("country", &self.country)?;
        validate::name("node", &self.node, validate::MAX_NAME_LEN)?;
        validate::text("agent_version", &self.agent_version, 64)?;
        if self.samples.is_empty() {
            return Err(ValidationError::new(
                "samples",
                "is empty; send at least one sample",
            ));
        }
        if self.samples.len() > validate::MAX_SAMPLES_PER_BATCH {
            return Err(ValidationError::new(
                "samples",
                format!(
                    "holds {} samples, at most {} are allowed per batch",
                    self.samples.len(),
                    validate::MAX_SAMPLES_PER_BATCH
                ),
            ));
        }
        Ok(())
    }

    /// Checks the envelope, then each sample. `Err` refuses the whole batch; `Ok` lists the
    /// samples that are refused, each with its index (the rest are valid).
    pub fn validate(&self, now: DateTime<Utc>) -> Result<Vec<Rejection>, ValidationError> {
        self.validate_envelope()?;
        Ok(self
            .samples
            .iter()
            .enumerate()
            .filter_map(|(index, sample)| {
                sample.validate(now).err().map(|e| Rejection {
                    index,
                    error: e.within(&format!("samples[{index}]")).to_string(),
                })
            })
            .collect())
    }

    /// Splits the batch into one holding only its valid samples and the rejections of the
    /// others. `Err` when the envelope itself is invalid.
    pub fn into_valid(
        mut self,
        now: DateTime<Utc>,
    ) -> Result<(Batch, Vec<Rejection>), ValidationError> {
        let rejections = self.validate(now)?;
        self.remove_rejected(&rejections);
        Ok((self, rejections))
    }

    /// Removes the samples `rejections` name (in index order, as [`Self::validate`] gives
    /// them); returns the indexes, in the batch as it was, of the samples kept.
    pub fn remove_rejected(&mut self, rejections: &[Rejection]) -> Vec<usize> {
        let mut rejected = rejections.iter().map(|r| r.index).peekable();
        let mut kept = Vec::with_capacity(self.samples.len().saturating_sub(rejections.len()));
        let mut index = 0;
        self.samples.retain(|_| {
            let keep = rejected.next_if_eq(&index).is_none();
            if keep {
                kept.push(index);
            }
            index += 1;
            keep
        });
        kept
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scrubbing_replaces_every_nul_and_the_sample_validates() {
        let now = chrono::Utc::now();
        let mut s = Sample::new(now, "dns", CheckKind::Dns, false);
        s.address = "10.0.0.1:53".into();
        s.error = Some("bad\0answer".into());
        s.metadata.insert(
            "answers".into(),
            serde_json::json!(["a\0b", { "k\0": "v\0" }]),
        );
        assert!(s.validate(now).is_err(), "a NUL is refused");
        assert_eq!(s.scrub_nul(), 4);
        s.validate(now).expect("scrubbed, it is stored as measured");
        assert_eq!(s.error.as_deref(), Some("bad\u{FFFD}answer"));
        assert_eq!(
            s.metadata["answers"],
            serde_json::json!(["a\u{FFFD}b", { "k\u{FFFD}": "v\u{FFFD}" }])
        );
        assert!(!serde_json::to_string(&s).unwrap().contains("\\u0000"));
        assert_eq!(s.scrub_nul(), 0, "nothing left to replace");
    }

    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    fn hop(ttl: u8, address: Option<&str>, rtts: &[f64], sent: u32) -> Hop {
        let received = rtts.len() as u32;
        let mean = (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64);
        Hop {
            ttl,
            address: address.map(str::to_owned),
            sent,
            received,
            packet_loss: f64::from(sent - received) * 100.0 / f64::from(sent),
            latency_ms: mean,
            latency_min_ms: rtts.iter().copied().reduce(f64::min),
            latency_max_ms: rtts.iter().copied().reduce(f64::max),
        }
    }

    fn traceroute() -> Sample {
        let hops = vec![
            hop(1, Some("10.1.1.1"), &[5.0, 5.2, 5.1], 3),
            hop(2, None, &[], 3),
            hop(3, Some("2001:db8::9"), &[10.0, 11.0], 3),
        ];
        Sample {
            address: "2001:db8::9".into(),
            latency_ms: Some(10.5),
            path_fingerprint: Some(path_fingerprint(&hops)),
            hops,
            ..Sample::new(now(), "path", CheckKind::Traceroute, true)
        }
    }

    #[test]
    fn a_traceroute_sample_carries_hops_and_their_fingerprint() {
        let s = traceroute();
        s.validate(now()).unwrap();
        let back: Sample = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        // RTTs do not enter the fingerprint; addresses, silence and TTLs do.
        let mut slower = s.hops.clone();
        slower[0] = hop(1, Some("10.1.1.1"), &[50.0], 3);
        assert_eq!(path_fingerprint(&slower), path_fingerprint(&s.hops));
        let mut other = s.hops.clone();
        other[0].address = Some("10.1.2.1".into());
        assert_ne!(path_fingerprint(&other), path_fingerprint(&s.hops));
        let mut answered = s.hops.clone();
        answered[1] = hop(2, Some("10.2.1.1"), &[7.0], 3);
        assert_ne!(path_fingerprint(&answered), path_fingerprint(&s.hops));
        assert_eq!(path_fingerprint(&s.hops).len(), 16);
        // No hops: an icmp sample or a traceroute that could not start carries none.
        assert!(!serde_json::to_string(&icmp()).unwrap().contains("hops"));
    }

    #[test]
    fn broken_hops_are_refused_naming_the_hop_and_field() {
        let err = |edit: &dyn Fn(&mut Sample)| {
            let mut s = traceroute();
            edit(&mut s);
            s.validate(now()).unwrap_err()
        };
        let e = err(&|s| s.kind = CheckKind::Icmp);
        assert_eq!(e.field, "hops");
        assert!(e.message.contains("only traceroute samples"), "{e}");
        let e = err(&|s| s.hops[2].ttl = 1);
        assert_eq!(e.field, "hops[2].ttl");
        let e = err(&|s| s.hops[0].address = Some("router-a".into()));
        assert_eq!(e.field, "hops[0].address");
        assert!(
            e.message.contains("\"router-a\" is not an IP address"),
            "{e}"
        );
        let e = err(&|s| s.hops[1].address = Some("10.0.0.1".into()));
        assert_eq!(e.field, "hops[1].address");
        let e = err(&|s| s.hops[0].received = 4);
        assert_eq!(e.field, "hops[0].received");
        let e = err(&|s| s.hops[0].packet_loss = 101.0);
        assert_eq!(e.field, "hops[0].packet_loss");
        let e = err(&|s| s.hops[0].latency_min_ms = Some(9.0));
        assert_eq!(e.field, "hops[0].latency_min_ms");
        let e = err(&|s| s.hops[2].latency_ms = None);
        assert_eq!(e.field, "hops[2].latency_ms");
        let e = err(&|s| s.path_fingerprint = Some("0123456789abcdef".into()));
        assert_eq!(e.field, "path_fingerprint");
        assert!(
            e.message.contains("is not the fingerprint of the hops"),
            "{e}"
        );
        let e = err(&|s| s.path_fingerprint = None);
        assert_eq!(e.field, "path_fingerprint");
        let e = err(&|s| s.hops.clear());
        assert_eq!(e.field, "path_fingerprint");
    }

    fn icmp() -> Sample {
        Sample {
            address: "8.8.8.8".into(),
            latency_ms: Some(20.5),
            latency_min_ms: Some(18.0),
            latency_max_ms: Some(25.0),
            jitter_ms: Some(1.2),
            packet_loss: Some(20.0),
            sent: Some(5),
            received: Some(4),
            ..Sample::new(now(), "google-dns", CheckKind::Icmp, true)
        }
    }

    fn batch(samples: Vec<Sample>) -> Batch {
        Batch {
            probe: "fiberstack/accra-edge".into(),
            region: "ghana".into(),
            country: "GH".into(),
            node: "gh-accra-1".into(),
            agent_version: "0.1.0".into(),
            samples,
        }
    }

    fn field_of(sample: Sample) -> String {
        sample.validate(now()).unwrap_err().field
    }

    #[test]
    fn valid_sample_passes() {
        assert_eq!(icmp().validate(now()), Ok(()));
        let down = Sample {
            error: Some("timeout".into()),
            ..Sample::new(now(), "api", CheckKind::Http, false)
        };
        assert_eq!(down.validate(now()), Ok(()));
    }

    #[test]
    fn each_sample_rule_names_its_field() {
        let cases: Vec<(Sample, &str)> = vec![
            (
                Sample {
                    target: String::new(),
                    ..icmp()
                },
                "target",
            ),
            (
                Sample {
                    target: "x".repeat(64),
                    ..icmp()
                },
                "target",
            ),
            (
                Sample {
                    address: "a".repeat(2049),
                    ..icmp()
                },
                "address",
            ),
            (
                Sample {
                    time: now() + chrono::Duration::minutes(6),
                    ..icmp()
                },
                "time",
            ),
            (
                Sample {
                    time: Utc.with_ymd_and_hms(1999, 1, 1, 0, 0, 0).unwrap(),
                    ..icmp()
                },
                "time",
            ),
            (
                Sample {
                    latency_ms: Some(10_001.0),
                    latency_max_ms: None,
                    ..icmp()
                },
                "latency_ms",
            ),
            (
                Sample {
                    latency_ms: Some(-1.0),
                    latency_min_ms: None,
                    ..icmp()
                },
                "latency_ms",
            ),
            (
                Sample {
                    latency_min_ms: Some(-0.1),
                    ..icmp()
                },
                "latency_min_ms",
            ),
            (
                Sample {
                    latency_max_ms: Some(20_000.0),
                    ..icmp()
                },
                "latency_max_ms",
            ),
            (
                Sample {
                    jitter_ms: Some(f64::NAN),
                    ..icmp()
                },
                "jitter_ms",
            ),
            (
                Sample {
                    latency_min_ms: Some(30.0),
                    ..icmp()
                },
                "latency_min_ms",
            ),
            (
                Sample {
                    latency_max_ms: Some(10.0),
                    ..icmp()
                },
                "latency_max_ms",
            ),
            (
                Sample {
                    latency_ms: None,
                    latency_min_ms: None,
                    latency_max_ms: None,
                    ..icmp()
                },
                "latency_ms",
            ),
            (
                Sample {
                    packet_loss: Some(100.5),
                    ..icmp()
                },
                "packet_loss",
            ),
            (
                Sample {
                    packet_loss: Some(-3.0),
                    ..icmp()
                },
                "packet_loss",
            ),
            (
                Sample {
                    received: Some(6),
                    ..icmp()
                },
                "received",
            ),
            (
                Sample {
                    status_code: Some(99),
                    ..icmp()
                },
                "status_code",
            ),
            (
                Sample {
                    status_code: Some(600),
                    ..icmp()
                },
                "status_code",
            ),
            (
                Sample {
                    error: Some("e".repeat(1025)),
                    ..icmp()
                },
                "error",
            ),
            (
                Sample {
                    error: Some("timed out\0".into()),
                    ..icmp()
                },
                "error",
            ),
            (
                Sample {
                    address: "8.8.8.8\0".into(),
                    ..icmp()
                },
                "address",
            ),
            (
                Sample {
                    sent: Some(1 << 31),
                    received: Some(4),
                    ..icmp()
                },
                "sent",
            ),
            (
                Sample {
                    sent: Some(u32::MAX),
                    received: Some(u32::MAX),
                    ..icmp()
                },
                "sent",
            ),
            (
                Sample {
                    sent: None,
                    received: Some(1 << 31),
                    ..icmp()
                },
                "received",
            ),
        ];
        for (sample, field) in cases {
            assert_eq!(field_of(sample.clone()), field, "{sample:?}");
        }
        let mut big = icmp();
        big.metadata.insert("blob".into(), json!("x".repeat(9000)));
        assert_eq!(field_of(big), "metadata");
        let mut nul = icmp();
        nul.metadata
            .insert("dns".into(), json!({"answers": ["a", "b\u{0}"]}));
        assert_eq!(field_of(nul), "metadata.dns.answers[1]");
        let mut nul_key = icmp();
        nul_key.metadata.insert("k\0".into(), json!(1));
        assert_eq!(field_of(nul_key), "metadata");
        let largest = Sample {
            sent: Some(i32::MAX as u32),
            received: Some(i32::MAX as u32),
            ..icmp()
        };
        assert_eq!(largest.validate(now()), Ok(()));
    }

    #[test]
    fn time_skew_boundary() {
        let at_limit = Sample {
            time: now() + chrono::Duration::minutes(5),
            ..icmp()
        };
        assert!(at_limit.validate(now()).is_ok());
        let past = Sample {
            time: now() - chrono::Duration::days(3),
            ..icmp()
        };
        assert!(past.validate(now()).is_ok());
    }

    #[test]
    fn sample_json_round_trip_and_wire_names() {
        let mut s = icmp();
        s.metadata.insert("ttl".into(), json!(57));
        let text = serde_json::to_string(&s).unwrap();
        for key in [
            "\"time\"",
            "\"latency_ms\"",
            "\"packet_loss\"",
            "\"kind\":\"icmp\"",
            "\"metadata\"",
        ] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        assert!(
            !text.contains("status_code"),
            "absent figures are omitted: {text}"
        );
        assert_eq!(serde_json::from_str::<Sample>(&text).unwrap(), s);
    }

    #[test]
    fn sample_parses_minimal_json_and_refuses_unknown_kind() {
        let s: Sample = serde_json::from_value(json!({
            "time": "2026-11-23T11:59:00Z", "target": "db", "kind": "tcp", "up": false
        }))
        .unwrap();
        assert_eq!(s.kind, CheckKind::Tcp);
        assert_eq!(s.latency_ms, None);
        let e = serde_json::from_value::<Sample>(json!({
            "time": "2026-11-23T11:59:00Z", "target": "db", "kind": "udp", "up": false
        }))
        .unwrap_err();
        assert!(e.to_string().contains("udp"), "{e}");
    }

    #[test]
    fn check_kind_text() {
        for k in CheckKind::ALL {
            assert_eq!(k.as_str().parse::<CheckKind>().unwrap(), k);
        }
        assert_eq!("ICMP".parse::<CheckKind>().unwrap_err().field, "kind");
    }

    #[test]
    fn batch_round_trip() {
        let b = batch(vec![
            icmp(),
            Sample::new(now(), "api", CheckKind::Http, false),
        ]);
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Batch>(&text).unwrap(), b);
    }

    #[test]
    fn envelope_rules_name_their_field() {
        let cases: Vec<(Batch, &str)> = vec![
            (
                Batch {
                    probe: String::new(),
                    ..batch(vec![icmp()])
                },
                "probe",
            ),
            (
                Batch {
                    probe: "no-namespace".into(),
                    ..batch(vec![icmp()])
                },
                "probe",
            ),
            (
                Batch {
                    probe: "a/b/c".into(),
                    ..batch(vec![icmp()])
                },
                "probe",
            ),
            (
                Batch {
                    probe: "/b".into(),
                    ..batch(vec![icmp()])
                },
                "probe",
            ),
            (
                Batch {
                    region: String::new(),
                    ..batch(vec![icmp()])
                },
                "region",
            ),
            (
                Batch {
                    country: "Ghana".into(),
                    ..batch(vec![icmp()])
                },
                "country",
            ),
            (
                Batch {
                    node: "n".repeat(254),
                    ..batch(vec![icmp()])
                },
                "node",
            ),
            (
                Batch {
                    agent_version: "v".repeat(65),
                    ..batch(vec![icmp()])
                },
                "agent_version",
            ),
            (
                Batch {
                    agent_version: "0.1.0\0".into(),
                    ..batch(vec![icmp()])
                },
                "agent_version",
            ),
            (batch(vec![]), "samples"),
            (batch(vec![icmp(); 5001]), "samples"),
        ];
        for (b, field) in cases {
            let e = b.validate(now()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        assert!(
            batch(vec![icmp(); 5000])
                .validate(now())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn invalid_samples_are_named_and_valid_ones_kept() {
        let bad_loss = Sample {
            packet_loss: Some(150.0),
            ..icmp()
        };
        let bad_target = Sample {
            target: String::new(),
            ..icmp()
        };
        let good = Sample {
            target: "b".into(),
            ..icmp()
        };
        let b = batch(vec![icmp(), bad_loss, good.clone(), bad_target]);
        let rejections = b.validate(now()).unwrap();
        assert_eq!(rejections.len(), 2);
        assert_eq!(rejections[0].index, 1);
        assert!(
            rejections[0]
                .error
                .starts_with("samples[1].packet_loss: 150 is out of range"),
            "{}",
            rejections[0].error
        );
        assert_eq!(rejections[1].index, 3);
        assert!(rejections[1].error.starts_with("samples[3].target:"));

        let (valid, rejected) = b.into_valid(now()).unwrap();
        assert_eq!(rejected, rejections);
        assert_eq!(valid.samples, vec![icmp(), good]);
    }
}
