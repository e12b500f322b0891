//! The original single-sample contract of `POST /api/push` (seed blueprint), kept so that
//! probes of the first design keep working. The ingest service maps it onto a [`Batch`]
//! ([`PushSample::into_batch`]) and sends it down the same path.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::sample::{Batch, CheckKind, Sample, earliest_time};
use crate::validate::{self, MAX_FUTURE_SKEW_SECS, ValidationError};

/// One measurement in the seed's shape: latency, uptime and loss of a node as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PushSample {
    /// The node's identifier (the seed used UUIDs; any node name is accepted).
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 253))]
    pub node_id: String,
    /// ISO 3166-1 alpha-2 country code.
    #[cfg_attr(feature = "utoipa", schema(pattern = "^[A-Z]{2}$"))]
    pub country: String,
    /// Free text; kept in the stored sample's `metadata` as `push_region` (the sample is
    /// stored under the FiberRegion the ingest service serves).
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 253))]
    pub region: String,
    /// Ping latency in milliseconds; without it the sample is stored as down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 10000))]
    pub latency_ms: Option<f64>,
    /// Percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 100))]
    pub uptime_pct: Option<f64>,
    /// Percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 0, maximum = 100))]
    pub packet_loss: Option<f64>,
    /// When it was measured; not over 5 minutes ahead of the server's clock.
    pub timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub metadata: Map<String, Value>,
}

impl PushSample {
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), ValidationError> {
        validate::name("node_id", &self.node_id, validate::MAX_NAME_LEN)?;
        validate::country("country", &self.country)?;
        validate::name("region", &self.region, validate::MAX_NAME_LEN)?;
        if let Some(v) = self.latency_ms {
            validate::latency("latency_ms", v)?;
        }
        if let Some(v) = self.uptime_pct {
            validate::percent("uptime_pct", v)?;
        }
        if let Some(v) = self.packet_loss {
            validate::percent("packet_loss", v)?;
        }
        validate::json_object("metadata", &self.metadata)?;
        if self.timestamp > now + chrono::Duration::seconds(MAX_FUTURE_SKEW_SECS) {
            return Err(ValidationError::new(
                "timestamp",
                format!(
                    "{} is more than {} minutes in the future",
                    self.timestamp.to_rfc3339(),
                    MAX_FUTURE_SKEW_SECS / 60
                ),
            ));
        }
        // The batch it becomes refuses it too, but would name `samples[0].time`, a field the
        // push contract does not have (found by the `push` fuzz target).
        if self.timestamp < earliest_time() {
            return Err(ValidationError::new(
                "timestamp",
                format!(
                    "{} is before 2000-01-01; is the node's clock set?",
                    self.timestamp.to_rfc3339()
                ),
            ));
        }
        Ok(())
    }
}

/// Namespace/name under which pushed samples are stored (there is no FiberProbe behind them).
pub const PUSH_PROBE: &str = "legacy/push";
/// Target name of pushed samples: the node as a whole.
pub const PUSH_TARGET: &str = "node";

impl PushSample {
    /// The batch this push becomes, for the FiberRegion `region` the ingest service serves:
    /// probe `legacy/push`, target `node`, kind `icmp` (the seed measured ping latency and
    /// loss). `up` holds when a latency was measured, some uptime was reported and not every
    /// packet was lost. The pushed `region` text and `uptime_pct` are kept in `metadata`.
    pub fn into_batch(self, region: &str) -> Batch {
        let up = self.latency_ms.is_some()
            && self.uptime_pct.is_none_or(|u| u > 0.0)
            && self.packet_loss.is_none_or(|l| l < 100.0);
        let mut metadata = self.metadata;
        metadata.insert("push_region".into(), Value::String(self.region));
        if let Some(uptime) = self.uptime_pct {
            metadata.insert("uptime_pct".into(), Value::from(uptime));
        }
        let sample = Sample {
            latency_ms: self.latency_ms,
            packet_loss: self.packet_loss,
            metadata,
            ..Sample::new(self.timestamp, PUSH_TARGET, CheckKind::Icmp, up)
        };
        Batch {
            probe: PUSH_PROBE.into(),
            region: region.into(),
            country: self.country,
            node: self.node_id,
            agent_version: String::new(),
            samples: vec![sample],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn seed_payload() -> Value {
        json!({
            "node_id": "550e8400-e29b-41d4-a716-446655440000",
            "country": "GH", "region": "Accra",
            "latency_ms": 45.2, "uptime_pct": 99.9, "packet_loss": 0.1,
            "timestamp": "2026-11-23T11:59:00Z",
            "metadata": {"isp": "MTN"}
        })
    }

    #[test]
    fn seed_payload_parses_validates_and_round_trips() {
        let p: PushSample = serde_json::from_value(seed_payload()).unwrap();
        assert_eq!(p.validate(now()), Ok(()));
        assert_eq!(p.uptime_pct, Some(99.9));
        let again: PushSample = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn each_rule_names_its_field() {
        for (key, value, field) in [
            ("node_id", json!(""), "node_id"),
            ("country", json!("Gh"), "country"),
            ("region", json!(""), "region"),
            ("latency_ms", json!(10_000.5), "latency_ms"),
            ("uptime_pct", json!(101), "uptime_pct"),
            ("uptime_pct", json!(-1), "uptime_pct"),
            ("packet_loss", json!(100.1), "packet_loss"),
            ("timestamp", json!("2026-11-23T12:05:01Z"), "timestamp"),
            ("timestamp", json!("1013-11-23T10:00:00Z"), "timestamp"),
            ("metadata", json!({"isp": "MTN\u{0}"}), "metadata.isp"),
        ] {
            let mut payload = seed_payload();
            payload[key] = value;
            let p: PushSample = serde_json::from_value(payload).unwrap();
            assert_eq!(p.validate(now()).unwrap_err().field, field);
        }
    }

    #[test]
    fn required_fields_are_required() {
        for key in ["node_id", "country", "region", "timestamp"] {
            let mut payload = seed_payload();
            payload.as_object_mut().unwrap().remove(key);
            let e = serde_json::from_value::<PushSample>(payload).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn maps_onto_a_valid_batch() {
        let p: PushSample = serde_json::from_value(seed_payload()).unwrap();
        let b = p.into_batch("ghana");
        assert_eq!(b.validate(now()), Ok(vec![]));
        assert_eq!(
            (b.probe.as_str(), b.region.as_str(), b.node.as_str()),
            (PUSH_PROBE, "ghana", "550e8400-e29b-41d4-a716-446655440000")
        );
        let s = &b.samples[0];
        assert_eq!(
            (s.target.as_str(), s.kind, s.up),
            (PUSH_TARGET, CheckKind::Icmp, true)
        );
        assert_eq!((s.latency_ms, s.packet_loss), (Some(45.2), Some(0.1)));
        assert_eq!(s.metadata["push_region"], "Accra");
        assert_eq!(s.metadata["uptime_pct"], 99.9);
        assert_eq!(s.metadata["isp"], "MTN");
    }

    #[test]
    fn down_when_nothing_got_through() {
        for (key, value) in [("uptime_pct", json!(0)), ("packet_loss", json!(100))] {
            let mut payload = seed_payload();
            payload[key] = value;
            let p: PushSample = serde_json::from_value(payload).unwrap();
            assert!(!p.into_batch("ghana").samples[0].up, "{key}");
        }
        let mut payload = seed_payload();
        payload.as_object_mut().unwrap().remove("latency_ms");
        let b = serde_json::from_value::<PushSample>(payload)
            .unwrap()
            .into_batch("ghana");
        assert!(
            !b.samples[0].up,
            "no latency: not up (a successful check has a duration)"
        );
        assert_eq!(b.validate(now()), Ok(vec![]));
    }
}
