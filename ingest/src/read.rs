//! The read API: `GET /api/v1/nodes` and `GET /api/v1/metrics`, over the shared surface of
//! both storage modes (`nodes`, `metrics`, `metrics_hourly`, `metrics_daily`), and
//! `GET /api/status`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::app::{AppState, Refusal, authorized, error};

/// Most rows one `/api/v1/metrics` answer holds.
pub const MAX_LIMIT: i64 = 10_000;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Node {
    pub name: String,
    pub region: String,
    pub country: String,
    pub agent_version: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct RawRow {
    pub time: DateTime<Utc>,
    pub node: String,
    pub probe: String,
    pub target: String,
    pub kind: String,
    pub up: bool,
    pub latency_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub packet_loss: Option<f64>,
    pub status_code: Option<i16>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct RollupRow {
    pub bucket: DateTime<Utc>,
    pub node: String,
    pub probe: String,
    pub target: String,
    pub samples: i64,
    pub uptime_pct: f64,
    pub latency_avg_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub jitter_avg_ms: Option<f64>,
    pub packet_loss_avg: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    pub node: Option<String>,
    pub probe: Option<String>,
    pub target: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub aggregation: Option<String>,
    pub limit: Option<i64>,
}

fn database(state: &AppState) -> Result<&sqlx::PgPool, Refusal> {
    state.db.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the read API is off: this ingest service has no DATABASE_URL",
        ))
    })
}

fn db_error(e: sqlx::Error) -> Response {
    tracing::warn!(error = %e, "read API query failed");
    error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
}

pub async fn nodes(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorized(&state, &headers) {
        return *refusal;
    }
    let db = match database(&state) {
        Ok(db) => db,
        Err(r) => return *r,
    };
    match sqlx::query_as::<_, Node>(
        "select name, region, country, agent_version, first_seen_at, last_seen_at from nodes order by name",
    )
    .fetch_all(db)
    .await
    {
        Ok(nodes) => Json(nodes).into_response(),
        Err(e) => db_error(e),
    }
}

fn time_param(
    name: &str,
    value: Option<&str>,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, Refusal> {
    match value {
        None => Ok(default),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!("{name}: {text:?} is not an RFC 3339 time such as 2026-11-23T10:00:00Z ({e})"),
                ))
            }),
    }
}

#[derive(Debug, Serialize)]
struct MetricsAnswer<T> {
    aggregation: &'static str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    rows: Vec<T>,
}

pub async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<MetricsQuery>,
) -> Response {
    if let Err(refusal) = authorized(&state, &headers) {
        return *refusal;
    }
    let db = match database(&state) {
        Ok(db) => db,
        Err(r) => return *r,
    };
    let now = Utc::now();
    let end = match time_param("end", q.end.as_deref(), now) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let start = match time_param("start", q.start.as_deref(), end - Duration::hours(1)) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if start >= end {
        return error(
            StatusCode::BAD_REQUEST,
            format!("start {start} is not before end {end}"),
        );
    }
    let limit = q.limit.unwrap_or(1_000);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit: {limit} is out of range, expected 1 to {MAX_LIMIT}"),
        );
    }
    let filters = Filters {
        start,
        end,
        node: q.node.as_deref(),
        probe: q.probe.as_deref(),
        target: q.target.as_deref(),
        limit,
    };
    match q.aggregation.as_deref().unwrap_or("raw") {
        "raw" => answer::<RawRow>(db, RAW, "raw", &filters).await,
        "hourly" => answer::<RollupRow>(db, ROLLUP_HOURLY, "hourly", &filters).await,
        "daily" => answer::<RollupRow>(db, ROLLUP_DAILY, "daily", &filters).await,
        other => error(
            StatusCode::BAD_REQUEST,
            format!("aggregation: {other:?} is not one of raw, hourly, daily"),
        ),
    }
}

/// The checked parameters of a `/api/v1/metrics` query, bound as $1–$6 of every query.
struct Filters<'a> {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    node: Option<&'a str>,
    probe: Option<&'a str>,
    target: Option<&'a str>,
    limit: i64,
}

/// Runs one of the metrics queries and answers with its rows.
async fn answer<T>(
    db: &sqlx::PgPool,
    sql: &'static str,
    aggregation: &'static str,
    f: &Filters<'_>,
) -> Response
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Serialize + Send + Unpin,
{
    let rows = sqlx::query_as::<_, T>(sql)
        .bind(f.start)
        .bind(f.end)
        .bind(f.node)
        .bind(f.probe)
        .bind(f.target)
        .bind(f.limit)
        .fetch_all(db)
        .await;
    match rows {
        Ok(rows) => Json(MetricsAnswer {
            aggregation,
            start: f.start,
            end: f.end,
            rows,
        })
        .into_response(),
        Err(e) => db_error(e),
    }
}

const RAW: &str = "select time, node, probe, target, kind, up, latency_ms, jitter_ms, packet_loss, status_code, error
                     from metrics
                    where time >= $1 and time < $2
                      and ($3::text is null or node = $3) and ($4::text is null or probe = $4)
                      and ($5::text is null or target = $5)
                    order by time, node, probe, target limit $6";

/// The query of a rollup table; both have the same columns in both storage modes.
macro_rules! rollup_query {
    ($table:literal) => {
        concat!(
            "select bucket, node, probe, target, samples, uptime_pct::float8 as uptime_pct,
                    latency_avg_ms, latency_p50_ms, latency_p95_ms, latency_p99_ms,
                    jitter_avg_ms, packet_loss_avg
               from ",
            $table,
            "
              where bucket >= $1 and bucket < $2
                and ($3::text is null or node = $3) and ($4::text is null or probe = $4)
                and ($5::text is null or target = $5)
              order by bucket, node, probe, target limit $6"
        )
    };
}

const ROLLUP_HOURLY: &str = rollup_query!("metrics_hourly");
const ROLLUP_DAILY: &str = rollup_query!("metrics_daily");

#[derive(Debug, Serialize)]
struct Status {
    service: &'static str,
    version: &'static str,
    region: String,
    stream: String,
    /// "ok" or "unavailable".
    redis: &'static str,
    /// Entries in the stream (about what the ETL has not stored yet), when Redis answers.
    stream_length: Option<u64>,
    /// "ok", "unavailable", or "off" without a DATABASE_URL.
    database: &'static str,
}

/// `GET /api/status`: what this ingest service serves and whether its dependencies answer.
/// 200 when Redis answers (samples can be accepted), 503 otherwise.
pub async fn status(State(state): State<Arc<AppState>>) -> Response {
    let stream_length = state.writer.length().await;
    let database = match &state.db {
        None => "off",
        Some(db) => match sqlx::query("select 1").execute(db).await {
            Ok(_) => "ok",
            Err(_) => "unavailable",
        },
    };
    let body = Status {
        service: "fiber-ingest",
        version: env!("CARGO_PKG_VERSION"),
        region: state.region.clone(),
        stream: state.writer.stream().to_owned(),
        redis: if stream_length.is_some() {
            "ok"
        } else {
            "unavailable"
        },
        stream_length,
        database,
    };
    let code = if stream_length.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
