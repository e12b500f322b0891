//! What the batch targets assert of a batch ingest accepts, whatever its encoding: the split
//! is final and loses nothing, and what is accepted is storable as is — every value within
//! the columns' CHECK constraints of migrations/0001 and 0008, no NUL (PostgreSQL refuses it
//! in text and jsonb, and the ETL would dead-letter the whole entry).

use chrono::{DateTime, Utc};
use fiberstack_model::stream::{decode_batch, encode_batch};
use fiberstack_model::{Batch, Rejection};
use serde_json::Value;

fn no_nul(what: &str, text: &str) {
    assert!(!text.contains('\0'), "{what} accepted with a NUL: {text:?}");
}

fn no_nul_json(what: &str, v: &Value) {
    match v {
        Value::String(s) => no_nul(what, s),
        Value::Array(items) => items.iter().for_each(|i| no_nul_json(what, i)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            no_nul(what, k);
            no_nul_json(what, v);
        }),
        _ => {}
    }
}

fn within(what: &str, v: Option<f64>, lo: f64, hi: f64) {
    if let Some(v) = v {
        assert!(
            (lo..=hi).contains(&v),
            "{what} {v} accepted, outside [{lo}, {hi}]"
        );
    }
}

fn int4(what: &str, v: Option<u32>) {
    if let Some(v) = v {
        assert!(
            i32::try_from(v).is_ok(),
            "{what} {v} accepted, beyond an integer column"
        );
    }
}

/// Ingest's split of `batch` at `now`, checked; `None` when the batch is refused whole.
pub fn accept(batch: Batch, now: DateTime<Utc>) -> Option<(Batch, Vec<Rejection>)> {
    let samples = batch.samples.len();
    let Ok((valid, rejected)) = batch.into_valid(now) else {
        return None;
    };
    assert_eq!(
        valid.samples.len() + rejected.len(),
        samples,
        "a sample lost in the split"
    );
    assert!(
        rejected.windows(2).all(|w| w[0].index < w[1].index),
        "refusals out of order: {rejected:?}"
    );
    // What is accepted is valid: the split is final.
    for (i, s) in valid.samples.iter().enumerate() {
        assert!(
            s.validate(now).is_ok(),
            "accepted sample {i} is invalid: {s:?}"
        );
    }

    for what in [
        &valid.probe,
        &valid.region,
        &valid.country,
        &valid.node,
        &valid.agent_version,
    ] {
        no_nul("the envelope", what);
    }
    for s in &valid.samples {
        no_nul("target", &s.target);
        no_nul("address", &s.address);
        if let Some(e) = &s.error {
            no_nul("error", e);
        }
        s.metadata.iter().for_each(|(k, v)| {
            no_nul("metadata", k);
            no_nul_json("metadata", v);
        });
        for (what, v) in [
            ("latency_ms", s.latency_ms),
            ("latency_min_ms", s.latency_min_ms),
            ("latency_max_ms", s.latency_max_ms),
            ("jitter_ms", s.jitter_ms),
        ] {
            within(what, v, 0.0, 10_000.0);
        }
        within("packet_loss", s.packet_loss, 0.0, 100.0);
        int4("sent", s.sent);
        int4("received", s.received);
        if let Some(code) = s.status_code {
            assert!((100..=599).contains(&code), "status_code {code} accepted");
        }
        assert!(
            s.time <= now + chrono::Duration::minutes(10),
            "a sample far in the future"
        );
        if let Some(f) = &s.path_fingerprint {
            assert!(
                f.len() == 16 && f.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "path_fingerprint {f:?} accepted"
            );
        }
        for h in &s.hops {
            assert!(h.ttl >= 1, "ttl 0 accepted");
            assert!(h.sent >= 1 && h.received <= h.sent, "hop counts {h:?}");
            int4("hop sent", Some(h.sent));
            within("hop packet_loss", Some(h.packet_loss), 0.0, 100.0);
            within("hop latency_ms", h.latency_ms, 0.0, 10_000.0);
            within("hop latency_min_ms", h.latency_min_ms, 0.0, 10_000.0);
            within("hop latency_max_ms", h.latency_max_ms, 0.0, 10_000.0);
            assert_eq!(
                h.address.is_none(),
                h.received == 0,
                "hop address versus answers {h:?}"
            );
            if let Some(a) = &h.address {
                assert!(
                    a.parse::<std::net::IpAddr>().is_ok(),
                    "hop address {a:?} is no inet"
                );
            }
        }
    }

    Some((valid, rejected))
}

/// What ingest accepted reaches the ETL unchanged both ways ingest may append it: encoded for
/// the stream, or (nothing refused) the body as it came.
pub fn reaches_the_etl(body: &[u8], valid: &Batch, rejected: &[Rejection]) {
    let decoded = decode_batch(&encode_batch(valid)).expect("an encoded batch decodes");
    assert_eq!(
        &decoded, valid,
        "the stream entry differs from what was accepted"
    );
    if rejected.is_empty() {
        let raw = decode_batch(body).expect("the accepted body decodes");
        assert_eq!(
            &raw, valid,
            "the appended body differs from what was accepted"
        );
    }
}
