//! A body of `POST /api/push` (the seed's single-sample contract): one that validates becomes
//! a batch every sample of which is valid — ingest answers 202 for it, so nothing may be
//! refused on the way to the stream.
#![no_main]

use chrono::{TimeZone, Utc};
use fiberstack_model::PushSample;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
    let Ok(push) = serde_json::from_slice::<PushSample>(body) else {
        return;
    };
    if push.validate(now).is_err() {
        return;
    }
    let batch = push.into_batch("ghana");
    let count = batch.samples.len();
    let (valid, rejected) = batch
        .into_valid(now)
        .expect("a valid push makes a valid batch envelope");
    assert_eq!(rejected, vec![], "a validated push loses a sample");
    assert_eq!(valid.samples.len(), count);
});
