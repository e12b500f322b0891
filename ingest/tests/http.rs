//! `POST /api/v1/samples` over real HTTP against real Redis (a fresh region, so a fresh
//! stream, per test), and the whole data path into PostgreSQL.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use fiber_ingest::api::{AppState, MAX_BODY_BYTES, router};
use fiber_ingest::auth::Token;
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiberstack_e2e::{LocalEnv, unique_name, wait_for};
use fiberstack_model::stream::{BATCH_FIELD, decode_batch, samples_stream};
use fiberstack_model::{Batch, CheckKind, Sample};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789";

struct Server {
    url: String,
    region: String,
    redis: ConnectionManager,
}

async fn redis_at(url: &str) -> Result<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    Ok(redis::Client::open(url)?
        .get_connection_manager_with_config(config)
        .await?)
}

async fn serve(redis_url: &str, limiter: RateLimiter, max_backlog: u64) -> Result<Server> {
    let region = unique_name("ingest-test");
    let redis = redis_at(redis_url).await?;
    let writer = StreamWriter::new(redis.clone(), &region, max_backlog);
    let state = Arc::new(AppState::new(
        &region,
        Token::new(TOKEN).unwrap(),
        limiter,
        writer,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    Ok(Server {
        url: format!("http://{addr}"),
        region,
        redis,
    })
}

async fn server() -> Result<Server> {
    serve(
        &LocalEnv::load()?.redis_url,
        RateLimiter::new(1000.0, 1000),
        100_000,
    )
    .await
}

fn now() -> DateTime<Utc> {
    Utc::now()
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

fn tcp(latency: f64) -> Sample {
    Sample {
        latency_ms: Some(latency),
        address: "127.0.0.1:5432".into(),
        ..Sample::new(now(), "db", CheckKind::Tcp, true)
    }
}

impl Server {
    async fn post(
        &self,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Option<String>, Value)> {
        let mut request = reqwest::Client::new()
            .post(format!("{}/api/v1/samples", self.url))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, retry, body))
    }

    /// The service's `/metrics` text.
    async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.url))
            .await?
            .text()
            .await?)
    }

    async fn post_batch(&self, batch: &Batch) -> Result<(u16, Option<String>, Value)> {
        self.post(
            serde_json::to_vec(batch)?,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await
    }

    async fn stored(&mut self) -> Result<Vec<Batch>> {
        let reply: redis::streams::StreamRangeReply =
            self.redis.xrange_all(samples_stream(&self.region)).await?;
        Ok(reply
            .ids
            .iter()
            .map(|e| decode_batch(&e.get::<Vec<u8>>(BATCH_FIELD).unwrap()).unwrap())
            .collect())
    }
}

#[tokio::test]
async fn valid_samples_are_accepted_and_invalid_ones_named() -> Result<()> {
    let mut s = server().await?;
    let good = tcp(2.0);
    let bad = Sample {
        packet_loss: Some(120.0),
        ..tcp(3.0)
    };
    let (status, _, body) = s.post_batch(&batch(vec![good.clone(), bad])).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["index"], 1);
    let reason = body["rejected"][0]["error"].as_str().unwrap();
    assert!(
        reason.starts_with("samples[1].packet_loss: 120 is out of range"),
        "{reason}"
    );
    let stored = s.stored().await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].samples,
        vec![good],
        "only the valid sample is in the stream"
    );
    // The data path's one shape: 2 received, 1 sent, 1 discarded as invalid, 1 append.
    let metrics = s.metrics().await?;
    for series in [
        "fiber_ingest_received_samples_total 2",
        "fiber_ingest_sent_samples_total 1",
        "fiber_ingest_discarded_samples_total{reason=\"invalid\"} 1",
        "fiber_ingest_send_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(series), "no {series} in {metrics}");
    }
    fiberstack_e2e::promtool::check_metrics(&metrics)?;
    Ok(())
}

#[tokio::test]
async fn gzip_bodies_are_accepted() -> Result<()> {
    let mut s = server().await?;
    let b = batch(vec![tcp(1.0), tcp(2.0)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &serde_json::to_vec(&b)?)?;
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = s
        .post(
            gz.finish()?,
            &[("authorization", &auth), ("content-encoding", "gzip")],
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(s.stored().await?, vec![b]);
    Ok(())
}

#[tokio::test]
async fn refusals_say_why_and_store_nothing() -> Result<()> {
    let mut s = server().await?;
    let good = serde_json::to_vec(&batch(vec![tcp(1.0)]))?;
    let auth = format!("Bearer {TOKEN}");

    let (status, _, body) = s.post(good.clone(), &[]).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing or wrong bearer token"))
    );
    let (status, _, _) = s
        .post(
            good.clone(),
            &[("authorization", "Bearer wrong-token-0123456789")],
        )
        .await?;
    assert_eq!(status, 401);

    let (status, _, body) = s
        .post(b"{\"samples\": 3}".to_vec(), &[("authorization", &auth)])
        .await?;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("body is not a batch"),
        "{body}"
    );

    let mut bad_country = batch(vec![tcp(1.0)]);
    bad_country.country = "gh".into();
    let (status, _, body) = s.post_batch(&bad_country).await?;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("country: \"gh\""),
        "{body}"
    );

    let (status, _, body) = s.post_batch(&batch(vec![tcp(1.0); 5001])).await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 5000"),
        "{body}"
    );

    let (status, _, _) = s
        .post(vec![b' '; MAX_BODY_BYTES + 1], &[("authorization", &auth)])
        .await?;
    assert_eq!(status, 413);
    // A small gzip body that inflates past the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &vec![b' '; 2 * MAX_BODY_BYTES])?;
    let (status, _, _) = s
        .post(
            gz.finish()?,
            &[("authorization", &auth), ("content-encoding", "gzip")],
        )
        .await?;
    assert_eq!(status, 413);
    let (status, _, _) = s
        .post(
            good,
            &[("authorization", &auth), ("content-encoding", "br")],
        )
        .await?;
    assert_eq!(status, 415);

    assert!(
        s.stored().await?.is_empty(),
        "nothing refused reached the stream"
    );
    Ok(())
}

#[tokio::test]
async fn over_the_rate_limit_answers_429_with_retry_after() -> Result<()> {
    let mut s = serve(
        &LocalEnv::load()?.redis_url,
        RateLimiter::new(0.1, 2),
        100_000,
    )
    .await?;
    let b = batch(vec![tcp(1.0)]);
    assert_eq!(s.post_batch(&b).await?.0, 202);
    assert_eq!(s.post_batch(&b).await?.0, 202);
    let (status, retry, body) = s.post_batch(&b).await?;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("10"), "one batch per 10 s");
    assert_eq!(s.stored().await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn over_the_backlog_cap_answers_503_with_retry_after() -> Result<()> {
    let mut s = serve(
        &LocalEnv::load()?.redis_url,
        RateLimiter::new(1000.0, 1000),
        1,
    )
    .await?;
    let b = batch(vec![tcp(1.0)]);
    assert_eq!(s.post_batch(&b).await?.0, 202);
    let (status, retry, body) = s.post_batch(&b).await?;
    assert_eq!(status, 503);
    assert!(retry.is_some());
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("over its cap of 1"),
        "{body}"
    );
    assert_eq!(s.stored().await?.len(), 1);
    let metrics = s.metrics().await?;
    for series in [
        "fiber_ingest_received_samples_total 2",
        "fiber_ingest_sent_samples_total 1",
        "fiber_ingest_errors_total{stage=\"send\",error_type=\"backlog\"} 1",
    ] {
        assert!(metrics.contains(series), "no {series} in {metrics}");
    }
    fiberstack_e2e::promtool::check_metrics(&metrics)?;
    Ok(())
}

/// A Redis of this test's own, so it can be stopped.
fn own_redis(port: u16) -> Result<Child> {
    Ok(Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()?)
}

#[tokio::test]
async fn redis_down_answers_503_never_202() -> Result<()> {
    let port = 20_000 + (std::process::id() % 10_000) as u16;
    let mut redis = own_redis(port)?;
    let url = format!("redis://127.0.0.1:{port}");
    let s = wait_for(
        "own redis-server up",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let url = url.clone();
            async move {
                match serve(&url, RateLimiter::new(1000.0, 1000), 100_000).await {
                    Ok(s) => Ok(Ok(s)),
                    Err(e) => Ok(Err(e.to_string())),
                }
            }
        },
    )
    .await?;
    let b = batch(vec![tcp(1.0)]);
    assert_eq!(s.post_batch(&b).await?.0, 202);
    redis.kill()?;
    redis.wait()?;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let (status, retry, body) = s.post_batch(&b).await?;
        eprintln!("503 after {:?}", start.elapsed());
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry.as_deref(), Some("1"));
    }
    let ready = reqwest::get(format!("{}/readyz", s.url))
        .await?
        .status()
        .as_u16();
    assert_eq!(ready, 503);
    Ok(())
}

#[tokio::test]
async fn a_batch_goes_in_over_http_and_lands_in_postgres_once() -> Result<()> {
    let env = LocalEnv::load()?;
    let s = server().await?;
    let url = env.fresh_postgres_database("fs_e2e").await?;
    fiberstack_e2e::etl::migrate(&url, None).await?;

    let b = batch(vec![
        tcp(1.5),
        Sample {
            target: "api".into(),
            ..tcp(7.0)
        },
    ]);
    assert_eq!(s.post_batch(&b).await?.0, 202);
    assert_eq!(
        s.post_batch(&b).await?.0,
        202,
        "a retried batch is accepted again"
    );
    // The ETL as it runs in production, until it has stored everything the stream holds.
    fiberstack_e2e::etl::drain(&env.redis_url, &url, &s.region).await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    let rows: Vec<(String, f64)> =
        sqlx::query_as("select target, latency_ms from metrics order by target")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        rows,
        vec![("api".to_owned(), 7.0), ("db".to_owned(), 1.5)],
        "stored once"
    );
    Ok(())
}

#[tokio::test]
async fn the_seed_push_contract_lands_on_the_same_path() -> Result<()> {
    let mut s = server().await?;
    let auth = format!("Bearer {TOKEN}");
    let push = serde_json::json!({
        "node_id": "probe-gh-accra-01", "country": "GH", "region": "Ghana",
        "latency_ms": 45.2, "uptime_pct": 99.5, "packet_loss": 0.1,
        "timestamp": now().to_rfc3339()
    });
    let response = reqwest::Client::new()
        .post(format!("{}/api/push", s.url))
        .header("authorization", &auth)
        .json(&push)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await?;
    assert_eq!(
        (body["status"].as_str(), body["queued"].as_bool()),
        (Some("accepted"), Some(true))
    );
    let stored = s.stored().await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].node, "probe-gh-accra-01");
    assert_eq!(
        stored[0].region, s.region,
        "stored under the region this ingest serves"
    );
    assert_eq!(stored[0].samples[0].latency_ms, Some(45.2));

    let mut bad = push.clone();
    bad["uptime_pct"] = serde_json::json!(140);
    let response = reqwest::Client::new()
        .post(format!("{}/api/push", s.url))
        .header("authorization", &auth)
        .json(&bad)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await?;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("uptime_pct: 140 is out of range"),
        "{body}"
    );
    let unauthorized = reqwest::Client::new()
        .post(format!("{}/api/push", s.url))
        .json(&push)
        .send()
        .await?;
    assert_eq!(unauthorized.status().as_u16(), 401);
    assert_eq!(s.stored().await?.len(), 1, "refused pushes stored nothing");
    Ok(())
}
