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
    serve_with(redis_url, limiter, max_backlog, |w| w).await
}

async fn serve_with(
    redis_url: &str,
    limiter: RateLimiter,
    max_backlog: u64,
    writer: impl FnOnce(StreamWriter) -> StreamWriter,
) -> Result<Server> {
    let region = unique_name("ingest-test");
    let redis = redis_at(redis_url).await?;
    let writer = writer(StreamWriter::new(redis.clone(), &region, max_backlog));
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

fn tcp(latency: f64) -> Sample {
    Sample {
        latency_ms: Some(latency),
        address: "127.0.0.1:5432".into(),
        ..Sample::new(now(), "db", CheckKind::Tcp, true)
    }
}

impl Server {
    /// A batch of this server's region.
    fn batch(&self, samples: Vec<Sample>) -> Batch {
        Batch {
            probe: "fiberstack/accra-edge".into(),
            region: self.region.clone(),
            country: "GH".into(),
            node: "gh-accra-1".into(),
            agent_version: "0.1.0".into(),
            samples,
        }
    }

    async fn post(
        &self,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Option<String>, Value)> {
        let mut request = reqwest::Client::new()
            .post(format!("{}/api/v1/samples", self.url))
            .body(body);
        // JSON unless the test says otherwise (or says `content-type: ""`: none at all).
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        for (k, v) in headers {
            if !(k.eq_ignore_ascii_case("content-type") && v.is_empty()) {
                request = request.header(*k, *v);
            }
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

    /// Makes the ETL's consumer group (`etl`) on this region's stream, having read nothing.
    async fn etl_group(&mut self) -> Result<()> {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(samples_stream(&self.region))
            .arg("etl")
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut self.redis)
            .await?;
        Ok(())
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
    let (status, _, body) = s.post_batch(&s.batch(vec![good.clone(), bad])).await?;
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
    let b = s.batch(vec![tcp(1.0), tcp(2.0)]);
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

/// fiber-probe's binary batch: taken as JSON is (the same refusals, by index), appended as it
/// came when nothing is refused, re-encoded without the refused samples otherwise; bytes that
/// are not a batch are a 400 naming where; the stream holds the binary encoding either way,
/// and a JSON body is appended in it too.
#[tokio::test]
async fn binary_batches_are_taken_like_json_ones() -> Result<()> {
    use fiberstack_model::binary;
    let mut s = server().await?;
    let auth = format!("Bearer {TOKEN}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", binary::MEDIA_TYPE),
    ];
    let entries = async |s: &mut Server| -> Result<Vec<Vec<u8>>> {
        let reply: redis::streams::StreamRangeReply =
            s.redis.xrange_all(samples_stream(&s.region)).await?;
        Ok(reply
            .ids
            .iter()
            .map(|e| e.get::<Vec<u8>>(BATCH_FIELD).unwrap())
            .collect())
    };

    // Nothing refused: the entry is the body, byte for byte.
    let whole = s.batch(vec![tcp(1.0), tcp(2.0)]);
    let body = binary::encode(&whole);
    let (status, _, answer) = s.post(body.clone(), &headers).await?;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(entries(&mut s).await?, vec![body]);

    // One refused (and gzip): named by index, the entry holds the other one.
    let good = tcp(3.0);
    let bad = Sample {
        latency_ms: Some(f64::NAN),
        ..tcp(4.0)
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &binary::encode(&s.batch(vec![bad, good.clone()])))?;
    let (status, _, answer) = s
        .post(
            gz.finish()?,
            &[headers[0], headers[1], ("content-encoding", "gzip")],
        )
        .await?;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["rejected"][0]["index"], 0);
    let reason = answer["rejected"][0]["error"].as_str().unwrap();
    assert!(reason.contains("samples[0].latency_ms"), "{reason}");
    assert!(reason.contains("not a finite number"), "{reason}");
    let stored = entries(&mut s).await?;
    assert_eq!(stored.len(), 2);
    assert!(binary::is_binary(&stored[1]));
    assert_eq!(decode_batch(&stored[1])?.samples, vec![good]);

    // Not a batch: 400 with where, nothing stored.
    let mut cut = binary::encode(&whole);
    cut.truncate(cut.len() - 2);
    let (status, _, answer) = s.post(cut, &headers).await?;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.starts_with("body is not a batch: samples[1].latency_ms: 8 bytes needed, 6 left"),
        "{message}"
    );
    let (status, _, answer) = s.post(serde_json::to_vec(&whole)?, &headers).await?;
    assert_eq!(status, 400, "JSON sent as binary: {answer}");
    assert_eq!(entries(&mut s).await?.len(), 2);

    // A JSON body goes into the stream in the binary encoding.
    let json = s.batch(vec![tcp(5.0)]);
    assert_eq!(s.post_batch(&json).await?.0, 202);
    let stored = entries(&mut s).await?;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[2], binary::encode(&json));
    Ok(())
}

#[tokio::test]
async fn refusals_say_why_and_store_nothing() -> Result<()> {
    let mut s = server().await?;
    let good = serde_json::to_vec(&s.batch(vec![tcp(1.0)]))?;
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

    let mut bad_country = s.batch(vec![tcp(1.0)]);
    bad_country.country = "gh".into();
    let (status, _, body) = s.post_batch(&bad_country).await?;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("country: \"gh\""),
        "{body}"
    );

    let (status, _, body) = s.post_batch(&s.batch(vec![tcp(1.0); 5001])).await?;
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
    let b = s.batch(vec![tcp(1.0)]);
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
    let b = s.batch(vec![tcp(1.0)]);
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

#[tokio::test]
async fn while_the_etl_leaves_the_oldest_entry_unread_too_long_answers_503() -> Result<()> {
    let mut s = serve_with(
        &LocalEnv::load()?.redis_url,
        RateLimiter::new(1000.0, 1000),
        100_000,
        |w| w.with_max_age(Duration::from_millis(1500)),
    )
    .await?;
    let stream = samples_stream(&s.region);
    // The ETL's consumer group exists and has read nothing yet.
    s.etl_group().await?;
    let b = s.batch(vec![tcp(1.0)]);
    assert_eq!(s.post_batch(&b).await?.0, 202);
    assert_eq!(
        s.post_batch(&b).await?.0,
        202,
        "young entries do not refuse"
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (status, retry, body) = s.post_batch(&b).await?;
    assert_eq!(status, 503, "{body}");
    assert!(retry.is_some());
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("not yet read by the ETL") && error.contains("over the limit of 1500 ms"),
        "{body}"
    );
    assert_eq!(s.stored().await?.len(), 2);

    // The ETL catches up (reads every entry): batches are taken again, though the entries
    // it read are still in the stream (acknowledged ones are trimmed later).
    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("etl")
        .arg("worker")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async::<redis::Value>(&mut s.redis)
        .await?;
    assert_eq!(s.post_batch(&b).await?.0, 202);
    assert_eq!(s.stored().await?.len(), 3);
    let metrics = s.metrics().await?;
    let series = "fiber_ingest_errors_total{stage=\"send\",error_type=\"backlog\"} 1";
    assert!(metrics.contains(series), "no {series} in {metrics}");
    Ok(())
}

/// An ETL reading 20 entries a second with 100 appended in a few hundred ms waiting: once
/// ingest has measured how fast it gets through them (a second of reads with entries unread
/// throughout), a new batch would wait many seconds, over the 3 s limit, and is refused — while the oldest unread entry is still younger than the limit,
/// so the age alone would have taken it (and let freshness grow to the limit × appended ÷
/// stored).
#[tokio::test]
async fn when_a_new_batch_would_wait_too_long_at_the_etl_rate_answers_503() -> Result<()> {
    let limit = Duration::from_secs(3);
    let mut s = serve_with(
        &LocalEnv::load()?.redis_url,
        RateLimiter::new(1000.0, 1000),
        100_000,
        |w| w.with_max_age(limit),
    )
    .await?;
    let stream = samples_stream(&s.region);
    s.etl_group().await?;
    let b = s.batch(vec![tcp(1.0)]);
    let start = std::time::Instant::now();
    for i in 0..100 {
        let (status, _, body) = s.post_batch(&b).await?;
        assert_eq!(status, 202, "batch {i}, before any rate is known: {body}");
    }
    // The ETL: one entry every 50 ms, read and acknowledged.
    let mut etl = s.redis.clone();
    let reader_stream = stream.clone();
    let reader = tokio::spawn(async move {
        loop {
            let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("etl")
                .arg("worker")
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg(&reader_stream)
                .arg(">")
                .query_async(&mut etl)
                .await
                .unwrap();
            for key in read.keys {
                for entry in key.ids {
                    let _: u64 = etl.xack(&reader_stream, "etl", &[&entry.id]).await.unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let refused = loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (status, retry, body) = s.post_batch(&b).await?;
        if status == 503 {
            break (retry, body, start.elapsed());
        }
        assert_eq!(status, 202, "{body}");
        assert!(start.elapsed() < limit, "not refused within {limit:?}");
    };
    reader.abort();
    let (retry, body, after) = refused;
    assert!(retry.is_some());
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("s of appends per second: a new one would wait")
            && error.contains("over the limit of 3000 ms"),
        "{body}"
    );
    assert!(
        after < limit,
        "refused after {after:?}, the age would have done it"
    );
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
    let b = s.batch(vec![tcp(1.0)]);
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

    let b = s.batch(vec![
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
    // The binary batch is /api/v1/samples' only.
    let binary = reqwest::Client::new()
        .post(format!("{}/api/push", s.url))
        .header("authorization", &auth)
        .header("content-type", fiberstack_model::binary::MEDIA_TYPE)
        .body(serde_json::to_vec(&push)?)
        .send()
        .await?;
    assert_eq!(binary.status().as_u16(), 415);
    assert_eq!(s.stored().await?.len(), 1, "refused pushes stored nothing");
    Ok(())
}

#[tokio::test]
async fn a_batch_of_another_region_is_refused_and_nothing_stored() -> Result<()> {
    let mut s = server().await?;
    // The forgery of issue 12: this region's token, another region's node and probe.
    let forged = Batch {
        region: "nigeria".into(),
        country: "NG".into(),
        node: "ng-fake-9".into(),
        probe: "fiberstack/spoof".into(),
        ..s.batch(vec![tcp(1.0)])
    };
    let (status, _, body) = s.post_batch(&forged).await?;
    assert_eq!(status, 403, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("{:?}", s.region)) && message.contains("\"nigeria\""),
        "names both regions: {message}"
    );
    // Refused whatever else is wrong with it.
    let mut forged_and_invalid = forged.clone();
    forged_and_invalid.samples[0].packet_loss = Some(300.0);
    assert_eq!(s.post_batch(&forged_and_invalid).await?.0, 403);
    assert!(s.stored().await?.is_empty(), "nothing reached the stream");
    assert!(
        s.metrics()
            .await?
            .contains("fiber_ingest_requests_total{outcome=\"forbidden\"} 2")
    );
    // The region's own batches still go in.
    assert_eq!(s.post_batch(&s.batch(vec![tcp(1.0)])).await?.0, 202);
    Ok(())
}

#[tokio::test]
async fn what_cannot_be_stored_is_refused_and_its_neighbours_stored() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut s = server().await?;
    let named = |target: &str, sample: Sample| Sample {
        target: target.into(),
        ..sample
    };
    let mut nul_metadata = named("meta", tcp(3.0));
    nul_metadata.metadata.insert(
        "dns".into(),
        serde_json::json!({"answers": ["10.0.0.1", "evil\u{0}.example"]}),
    );
    let samples = vec![
        named("first", tcp(1.0)),
        Sample {
            error: Some("connection reset\u{0}".into()),
            ..named("error", tcp(2.0))
        },
        nul_metadata,
        Sample {
            address: "10.0.0.5:5432\u{0}".into(),
            ..named("address", tcp(4.0))
        },
        Sample {
            sent: Some(1 << 31),
            received: Some(1),
            ..named("sent", tcp(5.0))
        },
        Sample {
            received: Some(3_000_000_000),
            ..named("received", tcp(6.0))
        },
        // The largest count the column holds is stored as sent.
        Sample {
            sent: Some(i32::MAX as u32),
            received: Some(i32::MAX as u32),
            ..named("last", tcp(7.0))
        },
    ];
    let (status, _, body) = s.post_batch(&s.batch(samples.clone())).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    let rejected: Vec<(u64, &str)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["error"].as_str().unwrap()))
        .collect();
    let expected = [
        (1, "samples[1].error: contains a NUL character"),
        (
            2,
            "samples[2].metadata.dns.answers[1]: contains a NUL character",
        ),
        (3, "samples[3].address: contains a NUL character"),
        (
            4,
            "samples[4].sent: 2147483648 is out of range, expected 0 to 2147483647",
        ),
        (
            5,
            "samples[5].received: 3000000000 is out of range, expected 0 to 2147483647",
        ),
    ];
    assert_eq!(rejected.len(), expected.len(), "{body}");
    for ((index, error), (want_index, want)) in rejected.iter().zip(expected) {
        assert_eq!(*index, want_index, "{body}");
        assert!(error.starts_with(want), "{error}, expected {want}");
    }
    let stored = s.stored().await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].samples,
        vec![samples[0].clone(), samples[6].clone()]
    );

    // Beyond even the wire type's range: the batch is not one, and the answer says where.
    let mut json = serde_json::to_value(s.batch(vec![tcp(1.0)]))?;
    json["samples"][0]["sent"] = serde_json::json!(5_000_000_000u64);
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = s
        .post(serde_json::to_vec(&json)?, &[("authorization", &auth)])
        .await?;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.starts_with(
            "body is not a batch: samples[0].sent: invalid value: integer `5000000000`"
        ),
        "{message}"
    );
    assert_eq!(
        s.stored().await?.len(),
        1,
        "the refused batch stored nothing"
    );

    // What was accepted is stored exactly as sent: the ETL dead-letters nothing.
    let url = env.fresh_postgres_database("fs_storable").await?;
    fiberstack_e2e::etl::migrate(&url, None).await?;
    fiberstack_e2e::etl::drain(&env.redis_url, &url, &s.region).await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    let rows: Vec<(String, Option<i32>, Option<i32>)> =
        sqlx::query_as("select target, sent, received from metrics order by target")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        rows,
        vec![
            ("first".to_owned(), None, None),
            ("last".to_owned(), Some(i32::MAX), Some(i32::MAX)),
        ]
    );
    pool.close().await;
    env.drop_postgres_database(&url, &[]).await?;
    Ok(())
}

#[tokio::test]
async fn every_refusal_is_the_json_error_with_its_headers() -> Result<()> {
    let mut s = server().await?;
    let good = serde_json::to_vec(&s.batch(vec![tcp(1.0)]))?;
    let auth = format!("Bearer {TOKEN}");
    let json_error = |what: &str, body: &Value| {
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: not the JSON error: {body}"
        );
    };

    // 401: the RFC 6750 challenge, saying whether the token sent was wrong.
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/samples", s.url))
        .json(&serde_json::from_slice::<Value>(&good)?)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"fiberstack\""
    );
    json_error("401", &response.json().await?);
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/samples", s.url))
        .bearer_auth("wrong-token-0123456789")
        .json(&serde_json::from_slice::<Value>(&good)?)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"fiberstack\", error=\"invalid_token\""
    );

    // The scheme is case-insensitive.
    let lower = format!("bearer {TOKEN}");
    let (status, _, body) = s.post(good.clone(), &[("authorization", &lower)]).await?;
    assert_eq!(status, 202, "{body}");

    // 413, compressed or not, is the JSON error.
    let (status, _, body) = s
        .post(vec![b' '; MAX_BODY_BYTES + 1], &[("authorization", &auth)])
        .await?;
    assert_eq!(status, 413);
    json_error("413", &body);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &vec![b' '; 2 * MAX_BODY_BYTES])?;
    let (status, _, body) = s
        .post(
            gz.finish()?,
            &[("authorization", &auth), ("content-encoding", "gzip")],
        )
        .await?;
    assert_eq!(status, 413);
    json_error("413 gzip", &body);

    // 415 for a body that does not say it is JSON.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin1",
        "application/jsonx",
    ] {
        let (status, _, body) = s
            .post(
                good.clone(),
                &[("authorization", &auth), ("content-type", content_type)],
            )
            .await?;
        assert_eq!(status, 415, "{content_type}: {body}");
        json_error(content_type, &body);
        assert!(
            body["error"].as_str().unwrap().contains("Content-Type"),
            "{content_type}: {body}"
        );
    }
    let before = s.stored().await?.len();
    // JSON in any spelling, and no Content-Type at all (read as JSON), are accepted.
    for content_type in ["application/json; charset=UTF-8", "Application/JSON", ""] {
        let (status, _, body) = s
            .post(
                good.clone(),
                &[("authorization", &auth), ("content-type", content_type)],
            )
            .await?;
        assert_eq!(status, 202, "{content_type:?}: {body}");
    }
    assert_eq!(s.stored().await?.len(), before + 3);
    // gzip still works with a charset.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &good)?;
    let (status, _, body) = s
        .post(
            gz.finish()?,
            &[
                ("authorization", &auth),
                ("content-encoding", "gzip"),
                ("content-type", "application/json;charset=utf-8"),
            ],
        )
        .await?;
    assert_eq!(status, 202, "{body}");

    // Paths and methods that are not served.
    let response = reqwest::get(format!("{}/api/v2/samples", s.url)).await?;
    assert_eq!(response.status().as_u16(), 404);
    json_error("404", &response.json().await?);
    let response = reqwest::get(format!("{}/api/v1/samples", s.url)).await?;
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    json_error("405", &response.json().await?);
    Ok(())
}
