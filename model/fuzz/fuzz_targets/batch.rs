//! A request body of `POST /api/v1/samples` in JSON, as ingest reads it: parsed, split into
//! valid samples and refusals (checked by `common::accept`); what is accepted must reach the
//! ETL unchanged in the stream's encoding.
#![no_main]

mod common;

use chrono::{TimeZone, Utc};
use fiberstack_model::Batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
    // Ingest's parse: a body that is not a batch is refused whole (400).
    let Ok(batch) = serde_json::from_slice::<Batch>(body) else {
        return;
    };
    let Some((valid, rejected)) = common::accept(batch, now) else {
        return;
    };
    // To the ETL, as the stream's encoding; an older ingest appended the JSON body as it came.
    common::reaches_the_etl(body, &valid, &rejected);
});
