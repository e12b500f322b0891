//! `/metrics` times every request: `fiber_ingest_request_duration_seconds{route, code}`, a
//! histogram per route pattern (never the raw path) and status code, over real HTTP against
//! real Redis.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::Utc;
use fiber_ingest::api::{AppState, router};
use fiber_ingest::auth::Token;
use fiber_ingest::metrics::REQUEST_DURATION_BUCKETS;
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiberstack_e2e::{LocalEnv, batch, unique_name};
use fiberstack_model::stream::samples_stream;
use fiberstack_model::{CheckKind, Sample};
use redis::AsyncCommands;

const TOKEN: &str = "metrics-test-token-0123456789";
const HISTOGRAM: &str = "fiber_ingest_request_duration_seconds";

/// The value of the sample `name{labels}` in a classic-format exposition.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The `le` label as prometheus-client writes a bucket bound.
fn le(bound: f64) -> String {
    if bound == f64::INFINITY {
        "+Inf".to_owned()
    } else {
        format!("{bound:?}")
    }
}

/// Checks one series of the histogram: `count` requests, buckets cumulative up to the count,
/// a positive sum below `count` × the slowest any took (`most` seconds).
fn assert_series(text: &str, route: &str, code: u16, count: u64, most: f64) {
    let labels = format!("route=\"{route}\",code=\"{code}\"");
    assert_eq!(
        sample(text, &format!("{HISTOGRAM}_count"), &labels),
        Some(count as f64),
        "{labels} in {text}"
    );
    let sum = sample(text, &format!("{HISTOGRAM}_sum"), &labels).expect("a sum");
    assert!(
        sum > 0.0 && sum <= most * count as f64,
        "{labels}: sum {sum}"
    );
    let mut previous = 0.0;
    for bound in REQUEST_DURATION_BUCKETS.into_iter().chain([f64::INFINITY]) {
        // prometheus-client writes `le` first.
        let bucket_labels = format!("le=\"{}\",{labels}", le(bound));
        let n = sample(text, &format!("{HISTOGRAM}_bucket"), &bucket_labels)
            .unwrap_or_else(|| panic!("no bucket {bucket_labels} in {text}"));
        assert!(n >= previous, "{bucket_labels}: {n} < {previous}");
        previous = n;
    }
    assert_eq!(previous, count as f64, "{labels}: +Inf holds every request");
}

#[tokio::test]
async fn every_request_is_timed_by_route_and_code() -> Result<()> {
    let env = LocalEnv::load()?;
    let redis = fiber_ingest::stream::connect(&env.redis_url).await?;
    let region = unique_name("metrics-test");
    let state = AppState::new(
        &region,
        Token::new(TOKEN).unwrap(),
        RateLimiter::new(1000.0, 1000),
        StreamWriter::new(redis.clone(), &region, 1_000),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(state))).await });
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();

    let started = std::time::Instant::now();
    let mut sample_batch = batch(
        "gh-accra-1",
        vec![Sample {
            latency_ms: Some(1.5),
            address: "127.0.0.1:5432".into(),
            ..Sample::new(Utc::now(), "api", CheckKind::Tcp, true)
        }],
    );
    sample_batch.region = region.clone();
    for _ in 0..3 {
        let accepted = client
            .post(format!("{url}/api/v1/samples"))
            .bearer_auth(TOKEN)
            .json(&sample_batch)
            .send()
            .await?;
        assert_eq!(accepted.status().as_u16(), 202);
        let body: serde_json::Value = accepted.json().await?;
        assert_eq!(body["accepted"], 1, "{body}");
    }
    for _ in 0..2 {
        let refused = client
            .post(format!("{url}/api/v1/samples"))
            .bearer_auth("wrong-token-0123456789")
            .json(&sample_batch)
            .send()
            .await?;
        assert_eq!(refused.status().as_u16(), 401);
    }
    // A path no route serves is counted under one name, whatever the path.
    for path in ["/nowhere", "/api/v1/samples/extra"] {
        let missing = client.get(format!("{url}{path}")).send().await?;
        assert_eq!(missing.status().as_u16(), 404);
    }
    assert_eq!(
        client.get(format!("{url}/healthz")).send().await?.status(),
        200
    );
    let most = started.elapsed().as_secs_f64();

    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert_series(&text, "/api/v1/samples", 202, 3, most);
    assert_series(&text, "/api/v1/samples", 401, 2, most);
    assert_series(&text, "unmatched", 404, 2, most);
    assert_series(&text, "/healthz", 200, 1, most);
    assert!(
        !text.contains("/nowhere") && !text.contains("/extra"),
        "a raw path is never a label: {text}"
    );
    // The scrape itself is counted once it is answered.
    let again = client
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert_series(&again, "/metrics", 200, 1, started.elapsed().as_secs_f64());
    fiberstack_e2e::promtool::check_metrics(&again)?;

    // The three accepted batches are in the stream: a 202 only for what was appended.
    let mut redis = redis;
    let stream = samples_stream(&region);
    let len: u64 = redis.xlen(&stream).await.context("XLEN")?;
    assert_eq!(len, 3);
    let _: () = redis.del(&stream).await?;
    Ok(())
}
