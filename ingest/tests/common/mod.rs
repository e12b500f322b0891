//! Fixtures shared by the read API and OpenAPI tests: an ingest server whose read API runs on
//! a fresh PostgreSQL database, migrated and seeded by the `fiber-etl` binary.

#![allow(dead_code)] // each test binary uses its own share of these

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use fiber_ingest::api::{AppState, router};
use fiber_ingest::auth::Token;
use fiber_ingest::dashboard::CorsOrigins;
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiberstack_e2e::{LocalEnv, batch, etl, unique_name};
use fiberstack_model::{Batch, CheckKind, Sample};
use fiberstack_plumbing::postgres::DbConfig;
use serde_json::Value;

/// The region's writer (probe) token of the test servers.
pub const TOKEN: &str = "read-test-token-0123456789";
/// Their reader token: the read API's only credential.
pub const READER: &str = "read-test-reader-0123456789";

/// Two hours ago, on the hour: every sample of a test falls in one hourly bucket.
pub fn hour() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() / 3600 * 3600 - 2 * 3600, 0).unwrap()
}

pub fn sample(target: &str, minute: i64, latency: f64, up: bool) -> Sample {
    Sample {
        latency_ms: up.then_some(latency),
        ..Sample::new(
            hour() + Duration::minutes(minute),
            target,
            CheckKind::Tcp,
            up,
        )
    }
}

/// The origin the test servers let read the dashboard API.
pub const DASHBOARD_ORIGIN: &str = "https://dashboard.example.org";

/// An ingest server whose read API uses a fresh database seeded with `batches`, whose
/// dashboard API answers browsers of [`DASHBOARD_ORIGIN`].
pub async fn serve(batches: &[Batch], with_db: bool) -> Result<String> {
    serve_with(batches, with_db, |state| state).await
}

/// [`serve`], with the state changed by `configure` (after the CORS origin is set).
pub async fn serve_with(
    batches: &[Batch],
    with_db: bool,
    configure: impl FnOnce(AppState) -> AppState,
) -> Result<String> {
    let env = LocalEnv::load()?;
    let redis = fiber_ingest::stream::connect(&env.redis_url).await?;
    let region = unique_name("read-test");
    let writer = StreamWriter::new(redis, &region, 1_000);
    let mut state = AppState::new(
        &region,
        Token::new(TOKEN).unwrap(),
        RateLimiter::new(100.0, 100),
        writer,
    )
    .with_reader_token(Token::new(READER).unwrap());
    if with_db {
        let url = env.fresh_postgres_database("fs_read").await?;
        etl::migrate(&url, None).await?;
        etl::store(&env.redis_url, &url, batches).await?;
        let writer = DbConfig::new(&url).connect().await?;
        sqlx::query("select fiberstack_refresh_rollups($1, 'infinity')")
            .bind(hour() - Duration::days(1))
            .execute(&writer)
            .await?;
        writer.close().await;
        // The read API's pool as fiber-ingest opens it.
        state = state.with_database(DbConfig::new(url).connect_read_only().await?);
    }
    let state = configure(state.with_cors_origins(CorsOrigins::parse(DASHBOARD_ORIGIN).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    // As fiber-ingest serves: the peer address keys the dashboard API's rate limit.
    let service = router(Arc::new(state)).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    Ok(format!("http://{addr}"))
}

pub async fn get(url: &str) -> Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .get(url)
        .header("authorization", format!("Bearer {READER}"))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

pub fn seed() -> Vec<Batch> {
    vec![
        batch(
            "gh-accra-1",
            vec![
                sample("db", 1, 10.0, true),
                sample("db", 2, 20.0, true),
                sample("api", 2, 30.0, true),
            ],
        ),
        batch(
            "ng-lagos-1",
            vec![sample("db", 1, 40.0, true), sample("db", 2, 0.0, false)],
        ),
    ]
}
