//! The read API's hourly and daily percentiles come from the latency histograms of the
//! rollups, in both storage modes: a day's p95 is the p95 of the day's samples (within the
//! histogram's bin error), not a mean of the hours' p95s — on data where the two differ by
//! far more than that error.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use common::{READER, TOKEN, get};
use fiber_ingest::api::{AppState, router};
use fiber_ingest::auth::Token;
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiberstack_e2e::{LocalEnv, etl, unique_name};
use fiberstack_plumbing::postgres::DbConfig;
use serde_json::Value;
use sqlx::PgPool;

/// Relative error of a percentile read from the histograms: bins are 2 % wide (ratio 1.02)
/// and a bin answers with its geometric middle, within 1 % of any latency in it.
const BIN_ERROR: f64 = 0.01;

/// Yesterday, midnight UTC: every sample of the test falls in one day, in four of its hours.
fn day() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() / 86_400 * 86_400 - 86_400, 0).unwrap()
}

/// Skewed hours of one target: three busy hours of fast answers (10–20 ms, 1,000 samples
/// each) and a quiet one of slow answers (500–600 ms, 100 samples). Each hour's p95 is its
/// own; the mean of the four is about 160 ms while the day's p95 is about 20 ms (its slowest
/// 5 % are the 100 slow samples and 55 fast ones). Times and latencies, per hour.
fn hours() -> Vec<Vec<(DateTime<Utc>, f64)>> {
    let spread = |hour: i64, n: usize, low: f64, high: f64| {
        (0..n)
            .map(|i| {
                let at = day() + Duration::hours(hour) + Duration::seconds(3 * i as i64);
                // Not in order of time: the percentile must not depend on it.
                let k = (i * 7919) % n;
                (at, low + (high - low) * k as f64 / n as f64)
            })
            .collect::<Vec<_>>()
    };
    vec![
        spread(1, 1_000, 10.0, 20.0),
        spread(2, 1_000, 10.0, 20.0),
        spread(3, 1_000, 10.0, 20.0),
        spread(4, 100, 500.0, 600.0),
    ]
}

/// The sample `fiberstack_latency_quantile` stands for: rank ⌊q·(n−1)⌋ of the sorted samples.
fn quantile(latencies: &[f64], q: f64) -> f64 {
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

/// Stores the samples of [`hours`] (target `api` of probe `fs/p` on node `gh-accra-1`).
async fn insert_samples(pool: &PgPool) -> Result<()> {
    let (times, latencies): (Vec<DateTime<Utc>>, Vec<f64>) = hours().into_iter().flatten().unzip();
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms)
         select t, 'gh-accra-1', 'fs/p', 'ghana', 'api', 'tcp', true, l
           from unnest($1::timestamptz[], $2::float8[]) as s(t, l)",
    )
    .bind(&times)
    .bind(&latencies)
    .execute(pool)
    .await
    .context("inserting the samples")?;
    Ok(())
}

/// An ingest server whose read API reads `db`.
async fn serve(db: PgPool) -> Result<String> {
    let env = LocalEnv::load()?;
    let redis = fiber_ingest::stream::connect(&env.redis_url).await?;
    let region = unique_name("pctl-test");
    let state = AppState::new(
        &region,
        Token::new(TOKEN).unwrap(),
        RateLimiter::new(100.0, 100),
        StreamWriter::new(redis, &region, 1_000),
    )
    .with_reader_token(Token::new(READER).unwrap())
    .with_database(db);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let service = router(Arc::new(state)).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    Ok(format!("http://{addr}"))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339().replace("+00:00", "Z")
}

/// The rows of `aggregation` for the test's day.
async fn rows(url: &str, aggregation: &str) -> Result<Vec<Value>> {
    let (status, body) = get(&format!(
        "{url}/api/v1/metrics?aggregation={aggregation}&target=api&start={}&end={}",
        rfc3339(day()),
        rfc3339(day() + Duration::days(1)),
    ))
    .await?;
    assert_eq!(status, 200, "{body}");
    Ok(body["rows"].as_array().context("rows")?.clone())
}

fn assert_near(what: &str, answered: &Value, exact: f64) {
    let answered = answered
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: no figure"));
    let error = (answered / exact - 1.0).abs();
    assert!(
        error <= BIN_ERROR,
        "{what}: answered {answered} ms, the samples' is {exact} ms ({:.2} % off)",
        error * 100.0
    );
}

/// What a reader of `url` sees of the samples of [`hours`].
async fn check_percentiles(url: &str) -> Result<()> {
    let hours = hours();
    let latencies = |h: &[(DateTime<Utc>, f64)]| h.iter().map(|(_, l)| *l).collect::<Vec<_>>();

    let hourly = rows(url, "hourly").await?;
    assert_eq!(hourly.len(), hours.len(), "{hourly:?}");
    let mut hourly_p95s = Vec::new();
    for (row, hour) in hourly.iter().zip(&hours) {
        let hour = latencies(hour);
        assert_eq!(row["samples"].as_u64(), Some(hour.len() as u64), "{row}");
        for (field, q) in [
            ("latency_p50_ms", 0.50),
            ("latency_p95_ms", 0.95),
            ("latency_p99_ms", 0.99),
        ] {
            assert_near(
                &format!("{} {field}", row["bucket"]),
                &row[field],
                quantile(&hour, q),
            );
        }
        hourly_p95s.push(row["latency_p95_ms"].as_f64().unwrap());
    }

    let daily = rows(url, "daily").await?;
    assert_eq!(daily.len(), 1, "{daily:?}");
    let day: Vec<f64> = hours.iter().flat_map(|h| latencies(h)).collect();
    assert_eq!(daily[0]["samples"].as_u64(), Some(day.len() as u64));
    let true_p95 = quantile(&day, 0.95);
    let mean_of_hours = hourly_p95s.iter().sum::<f64>() / hourly_p95s.len() as f64;
    // The data tells the two apart by far more than the bins' error.
    assert!(
        mean_of_hours > 5.0 * true_p95,
        "the hours' mean p95 {mean_of_hours} ms vs the day's {true_p95} ms"
    );
    for (field, q) in [
        ("latency_p50_ms", 0.50),
        ("latency_p95_ms", 0.95),
        ("latency_p99_ms", 0.99),
    ] {
        assert_near(
            &format!("daily {field}"),
            &daily[0][field],
            quantile(&day, q),
        );
    }
    Ok(())
}

#[tokio::test]
async fn daily_percentiles_are_the_days_not_a_mean_of_hours_in_plain_postgres() -> Result<()> {
    let env = LocalEnv::load()?;
    let url = env.fresh_postgres_database("fs_pctl").await?;
    etl::migrate(&url, None).await?;
    let writer = DbConfig::new(&url).connect().await?;
    insert_samples(&writer).await?;
    // What fiber-etl's maintenance loop does in plain mode.
    sqlx::query("select fiberstack_refresh_rollups($1, 'infinity')")
        .bind(day())
        .execute(&writer)
        .await?;
    writer.close().await;
    let reader = DbConfig::new(&url).connect_read_only().await?;
    let served = serve(reader.clone()).await?;
    let checked = check_percentiles(&served).await;
    reader.close().await;
    env.drop_postgres_database(&url, &[]).await?;
    checked
}

#[tokio::test]
async fn daily_percentiles_are_the_days_not_a_mean_of_hours_in_timescaledb() -> Result<()> {
    let env = LocalEnv::load()?;
    // One connection at a time (the server takes one); the extension goes to `public` first,
    // as etl's tests do, so it outlives the test's schema.
    let single = |schema: Option<String>| DbConfig {
        schema,
        max_connections: 1,
        ..DbConfig::new(&env.timescale_url)
    };
    let admin = single(None).connect().await?;
    sqlx::query("create extension if not exists timescaledb")
        .execute(&admin)
        .await?;
    admin.close().await;
    let schema = unique_name("fs_pctl").replace('-', "_");
    etl::migrate(&env.timescale_url, Some(&schema)).await?;
    let writer = single(Some(schema.clone())).connect().await?;
    let mode: String =
        sqlx::query_scalar("select value from fiberstack_meta where key = 'storage_mode'")
            .fetch_one(&writer)
            .await?;
    assert_eq!(mode, "timescaledb");
    // Continuous aggregates with real-time aggregation: nothing to refresh.
    insert_samples(&writer).await?;
    writer.close().await;
    // The pool that sets the search path with a statement: this server (PGlite) does not
    // take the startup options a read-only pool sets it with.
    let reader = single(Some(schema.clone())).connect().await?;
    let served = serve(reader.clone()).await?;
    let checked = check_percentiles(&served).await;
    reader.close().await;
    let admin = single(Some(schema.clone())).connect().await?;
    for statement in fiberstack_e2e::etl::timescale_schema_drop(&schema) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .context("dropping the test's schema")?;
    }
    admin.close().await;
    checked
}
