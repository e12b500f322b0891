//! A request body of `POST /api/v1/samples` in the binary encoding (what fiber-probe sends),
//! as ingest reads it: decoded without panicking whatever the bytes, split into valid samples
//! and refusals (checked by `common::accept` as for JSON), and what is accepted reaches the
//! ETL unchanged both ways ingest appends it: re-encoded, or (nothing refused) the body itself.
#![no_main]

mod common;

use chrono::{TimeZone, Utc};
use fiberstack_model::binary;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
    let Ok(batch) = binary::decode(body) else {
        return;
    };
    let Some((valid, rejected)) = common::accept(batch, now) else {
        return;
    };
    common::reaches_the_etl(body, &valid, &rejected);
});
