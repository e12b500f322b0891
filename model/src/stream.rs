//! How batches travel through Redis Streams between fiber-ingest and fiber-etl: the stream
//! names and the encoding of one entry.

use std::fmt;

use crate::binary;
use crate::sample::Batch;

/// Consumer group of the ETL workers on every region's stream.
pub const CONSUMER_GROUP: &str = "fiber-etl";
/// The entry field holding the batch: its [`binary`] encoding (JSON in entries written
/// before it existed, still read).
pub const BATCH_FIELD: &str = "batch";
/// The optional entry field holding the W3C `traceparent` of the ingest request that
/// appended it, so that the ETL's write joins the probe's trace. Absent when tracing is off
/// (and in entries from before it existed).
pub const TRACEPARENT_FIELD: &str = "traceparent";
/// The dead-letter entry field holding why the entry could not be stored.
pub const REASON_FIELD: &str = "reason";
/// The dead-letter entry field holding the original entry's id.
pub const SOURCE_ID_FIELD: &str = "source_id";

/// `fiber:samples:<region>`: accepted batches of a region, in arrival order.
pub fn samples_stream(region: &str) -> String {
    format!("fiber:samples:{region}")
}

/// `fiber:dlq:<region>`: entries that can never be stored, with the reason.
pub fn dead_letter_stream(region: &str) -> String {
    format!("fiber:dlq:{region}")
}

/// The bytes of a stream entry's `batch` field: the batch's [`binary`] encoding, about a
/// third the size of its JSON and read without parsing text — Redis keeps and serves fewer
/// bytes, the ETL decodes faster.
pub fn encode_batch(batch: &Batch) -> Vec<u8> {
    binary::encode(batch)
}

/// Why a stream entry's `batch` field is not a batch.
#[derive(Debug)]
pub enum EntryError {
    Binary(binary::DecodeError),
    Json(serde_json::Error),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Binary(e) => write!(f, "binary batch: {e}"),
            Self::Json(e) => write!(f, "JSON batch: {e}"),
        }
    }
}

impl std::error::Error for EntryError {}

/// Reads a stream entry's `batch` field: the binary encoding, or JSON (entries appended by
/// an ingest from before the binary encoding, and any a person wrote by hand).
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, EntryError> {
    if binary::is_binary(bytes) {
        binary::decode(bytes).map_err(EntryError::Binary)
    } else {
        serde_json::from_slice(bytes).map_err(EntryError::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{CheckKind, Sample};

    #[test]
    fn names() {
        assert_eq!(samples_stream("ghana"), "fiber:samples:ghana");
        assert_eq!(dead_letter_stream("ghana"), "fiber:dlq:ghana");
    }

    #[test]
    fn round_trip() {
        let batch = Batch {
            probe: "fiberstack/accra-edge".into(),
            region: "ghana".into(),
            country: "GH".into(),
            node: "gh-accra-1".into(),
            agent_version: "0.1.0".into(),
            samples: vec![Sample::new(
                "2026-11-23T12:00:00Z".parse().unwrap(),
                "api",
                CheckKind::Http,
                false,
            )],
        };
        assert_eq!(decode_batch(&encode_batch(&batch)).unwrap(), batch);
        assert!(binary::is_binary(&encode_batch(&batch)));
        // Entries from before the binary encoding: JSON, read as such.
        assert_eq!(
            decode_batch(&serde_json::to_vec(&batch).unwrap()).unwrap(),
            batch
        );
        assert!(decode_batch(b"{\"probe\":1}").is_err());
    }

    /// Found by the batch fuzz target: a decimal longer than an f64 holds must be read as the
    /// nearest f64, or re-encoding it (shortest form) and reading that back gives a neighbour —
    /// what ETL stores would differ from what ingest accepted by one ulp.
    #[test]
    fn long_decimals_survive_the_stream() {
        let body = br#"{"probe":"p/q","region":"ghana","country":"GH","node":"n","agent_version":"0",
            "samples":[{"time":"2026-11-23T10:00:00Z","target":"t","kind":"icmp","address":"a",
            "up":true,"jitter_ms":0.24444444444444444444444444444444444444444444444444444444444444444444444}]}"#;
        let batch = decode_batch(body).unwrap();
        assert_eq!(batch.samples[0].jitter_ms, Some(0.24444444444444444));
        assert_eq!(decode_batch(&encode_batch(&batch)).unwrap(), batch);
    }
}
