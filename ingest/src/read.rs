//! The read API: `GET /api/v1/nodes` and `GET /api/v1/metrics`, over the shared surface of
//! both storage modes (`nodes`, `metrics`, `metrics_hourly`, `metrics_daily`), and
//! `GET /api/status`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use fiberstack_model::CheckKind;
use serde::{Deserialize, Serialize};
use utoipa::openapi::Schema;
use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Ref, Type};
use utoipa::{IntoParams, ToSchema};

use crate::app::{AppState, ErrorBody, Refusal, authorized_reader, error};

/// Most rows one `/api/v1/metrics` answer holds.
pub const MAX_LIMIT: i64 = 10_000;

/// A probe node that has reported.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Node {
    pub name: String,
    pub region: String,
    pub country: String,
    pub agent_version: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// A stored sample (`aggregation=raw`). Every field is present; a figure not measured is
/// `null`.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct RawRow {
    pub time: DateTime<Utc>,
    pub node: String,
    pub probe: String,
    pub target: String,
    // The database's constraint keeps it to the model's kinds.
    #[schema(value_type = CheckKind)]
    pub kind: String,
    pub up: bool,
    #[schema(required = true)]
    pub latency_ms: Option<f64>,
    #[schema(required = true)]
    pub jitter_ms: Option<f64>,
    #[schema(required = true)]
    pub packet_loss: Option<f64>,
    #[schema(required = true)]
    pub status_code: Option<i16>,
    #[schema(required = true)]
    pub error: Option<String>,
}

/// An hourly or daily rollup of one node, probe and target. Every field is present; a figure
/// no sample of the bucket measured is `null`.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct RollupRow {
    /// Start of the hour or day (UTC).
    pub bucket: DateTime<Utc>,
    pub node: String,
    pub probe: String,
    pub target: String,
    #[schema(minimum = 1)]
    pub samples: i64,
    #[schema(minimum = 0, maximum = 100)]
    pub uptime_pct: f64,
    #[schema(required = true)]
    pub latency_avg_ms: Option<f64>,
    /// The percentiles of the bucket's latencies, from its histogram (log-linear bins of 2 %:
    /// within 1 % of the sample at rank ⌊q·(n−1)⌋; a day's are the day's, not a mean of hours').
    #[schema(required = true)]
    pub latency_p50_ms: Option<f64>,
    #[schema(required = true)]
    pub latency_p95_ms: Option<f64>,
    #[schema(required = true)]
    pub latency_p99_ms: Option<f64>,
    #[schema(required = true)]
    pub jitter_avg_ms: Option<f64>,
    #[schema(required = true)]
    pub packet_loss_avg: Option<f64>,
}

/// The query of `GET /api/v1/metrics`. Times and the aggregation are checked by the handler,
/// which answers a malformed one with the `Error` body naming it; so is a `limit` that is not
/// a number (the extractor's refusal, turned into the `Error` body).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Only this node.
    #[param(example = "gh-accra-1")]
    pub node: Option<String>,
    /// Only this FiberProbe (`namespace/name`).
    #[param(example = "fiberstack/accra-edge")]
    pub probe: Option<String>,
    /// Only this target.
    #[param(example = "google-dns")]
    pub target: Option<String>,
    /// RFC 3339; default: one hour before `end`.
    #[param(format = DateTime)]
    pub start: Option<String>,
    /// RFC 3339, exclusive; default: now.
    #[param(format = DateTime)]
    pub end: Option<String>,
    /// `raw` samples, or the `hourly`/`daily` rollups (percentiles read from each bucket's
    /// latency histogram: within 1 % of the bucket's sample at that rank).
    #[param(value_type = Option<Aggregation>, inline, example = "hourly")]
    pub aggregation: Option<String>,
    /// At most this many rows, oldest first.
    #[param(minimum = 1, maximum = 10000, default = 1000)]
    pub limit: Option<i64>,
}

/// Which rows `/api/v1/metrics` answers with.
// The default is given on the type: given on the query's field, utoipa would wrap the enum
// in a `oneOf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[schema(default = "raw")]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Raw,
    Hourly,
    Daily,
}

impl Aggregation {
    const ALL: [Self; 3] = [Self::Raw, Self::Hourly, Self::Daily];

    const fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Hourly => "hourly",
            Self::Daily => "daily",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

pub(crate) fn database(state: &AppState) -> Result<&sqlx::PgPool, Refusal> {
    state.db.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the read API is off: this ingest service has no DATABASE_URL",
        ))
    })
}

pub(crate) fn db_error(e: sqlx::Error) -> Response {
    tracing::warn!(error = %e, "read API query failed");
    error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
}

#[utoipa::path(
    get,
    path = "/api/v1/nodes",
    operation_id = "listNodes",
    tag = "read",
    summary = "Probe nodes that have reported",
    responses(
        (status = 200, description = "Every known node, by name.", body = Vec<Node>),
        (status = 401, description = "Missing or wrong bearer token (reading needs the reader token), or no reader token is configured.", body = ErrorBody),
        (status = 403, description = "A writer's token (the region's probe token): reading needs the reader token.", body = ErrorBody),
        (status = 503, description = "No DATABASE_URL is configured, or the database does not answer.", body = ErrorBody),
    ),
)]
pub async fn nodes(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorized_reader(&state, &headers) {
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

pub(crate) fn time_param(
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

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsAnswer {
    #[schema(inline)]
    aggregation: Aggregation,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// RawRow for `raw`, RollupRow for `hourly` and `daily`.
    #[schema(schema_with = rows_schema)]
    rows: Rows,
}

/// The rows of a [`MetricsAnswer`]: one kind per answer.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Rows {
    Raw(Vec<RawRow>),
    Rollup(Vec<RollupRow>),
}

impl From<Vec<RawRow>> for Rows {
    fn from(rows: Vec<RawRow>) -> Self {
        Self::Raw(rows)
    }
}

impl From<Vec<RollupRow>> for Rows {
    fn from(rows: Vec<RollupRow>) -> Self {
        Self::Rollup(rows)
    }
}

/// An array whose items are any of the row kinds. utoipa derives `oneOf` for an untagged
/// enum, and per array rather than per item; this says what a client reads.
fn rows_schema() -> Schema {
    let row = AnyOfBuilder::new()
        .item(Ref::from_schema_name(RawRow::name()))
        .item(Ref::from_schema_name(RollupRow::name()));
    ArrayBuilder::new()
        .items(row)
        .description(Some(
            "RawRow for `raw`, RollupRow for `hourly` and `daily`.",
        ))
        .build()
        .into()
}

#[utoipa::path(
    get,
    path = "/api/v1/metrics",
    operation_id = "queryMetrics",
    tag = "read",
    summary = "Samples or rollups over a time range",
    params(MetricsQuery),
    responses(
        (status = 200, description = "Rows in time order.", body = MetricsAnswer),
        (status = 400, description = "A parameter is malformed, or holds a NUL character (the message names it).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token (reading needs the reader token), or no reader token is configured.", body = ErrorBody),
        (status = 403, description = "A writer's token (the region's probe token): reading needs the reader token.", body = ErrorBody),
        (status = 503, description = "No DATABASE_URL is configured, or the database does not answer.", body = ErrorBody),
    ),
)]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<MetricsQuery>, QueryRejection>,
) -> Response {
    if let Err(refusal) = authorized_reader(&state, &headers) {
        return *refusal;
    }
    let q = match query {
        Ok(Query(q)) => q,
        // "Failed to deserialize query string: limit: invalid digit found in string"
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    // No stored name holds a NUL (ingest refuses them), and the database refuses one in a
    // query: say which parameter instead of answering with the database's error.
    for (name, value) in [
        ("node", &q.node),
        ("probe", &q.probe),
        ("target", &q.target),
    ] {
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{name}: contains a NUL character (U+0000), which no name holds"),
            );
        }
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
    let aggregation = q.aggregation.as_deref().unwrap_or("raw");
    match Aggregation::parse(aggregation) {
        Some(a @ Aggregation::Raw) => answer::<RawRow>(db, RAW, a, &filters).await,
        Some(a @ Aggregation::Hourly) => answer::<RollupRow>(db, ROLLUP_HOURLY, a, &filters).await,
        Some(a @ Aggregation::Daily) => answer::<RollupRow>(db, ROLLUP_DAILY, a, &filters).await,
        None => error(
            StatusCode::BAD_REQUEST,
            format!("aggregation: {aggregation:?} is not one of raw, hourly, daily"),
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
    aggregation: Aggregation,
    f: &Filters<'_>,
) -> Response
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    Rows: From<Vec<T>>,
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
            rows: rows.into(),
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

/// The query of a rollup: the summary table's row, with its percentiles read from the latency
/// histogram of the same bucket (`fiberstack_latency_quantile`, within 1 % of the sample at
/// rank ⌊q·(n−1)⌋), so an hourly and a daily answer come from one kind of rollup — histograms
/// that merge — and a day's p95 is the p95 of the day's samples, never a mean of hourly ones.
/// Both kinds of relation have the same columns in both storage modes (tables refreshed by
/// `fiberstack_refresh_rollups` in plain PostgreSQL, continuous aggregates in TimescaleDB).
macro_rules! rollup_query {
    ($summary:literal, $histogram:literal) => {
        concat!(
            "with r as (
                select bucket, node, probe, target, samples, uptime_pct::float8 as uptime_pct,
                       latency_avg_ms, jitter_avg_ms, packet_loss_avg
                  from ",
            $summary,
            "
                 where bucket >= $1 and bucket < $2
                   and ($3::text is null or node = $3) and ($4::text is null or probe = $4)
                   and ($5::text is null or target = $5)
                 order by bucket, node, probe, target limit $6
            ), h as (
                select l.bucket, l.node, l.probe, l.target,
                       array_agg(l.bin) as bins, array_agg(l.samples::numeric) as counts
                  from ",
            $histogram,
            " l
                  join r on (r.bucket, r.node, r.probe, r.target) = (l.bucket, l.node, l.probe, l.target)
                 where l.bucket >= $1 and l.bucket < $2
                   and ($3::text is null or l.node = $3) and ($4::text is null or l.probe = $4)
                   and ($5::text is null or l.target = $5)
                 group by 1, 2, 3, 4
            )
            select r.bucket, r.node, r.probe, r.target, r.samples, r.uptime_pct, r.latency_avg_ms,
                   fiberstack_latency_quantile(0.50, h.bins, h.counts) as latency_p50_ms,
                   fiberstack_latency_quantile(0.95, h.bins, h.counts) as latency_p95_ms,
                   fiberstack_latency_quantile(0.99, h.bins, h.counts) as latency_p99_ms,
                   r.jitter_avg_ms, r.packet_loss_avg
              from r left join h using (bucket, node, probe, target)
             order by r.bucket, r.node, r.probe, r.target"
        )
    };
}

const ROLLUP_HOURLY: &str = rollup_query!("metrics_hourly", "metrics_latency_hourly");
const ROLLUP_DAILY: &str = rollup_query!("metrics_daily", "metrics_latency_daily");

/// The `service` of every status answer.
const SERVICE: &str = "fiber-ingest";

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    #[schema(schema_with = service_schema)]
    service: &'static str,
    version: &'static str,
    region: String,
    /// fiber:samples:<region>
    stream: String,
    #[schema(inline)]
    redis: RedisState,
    /// Entries in the stream (about what the ETL has not stored yet), when Redis answers.
    #[schema(required = true)]
    stream_length: Option<u64>,
    #[schema(inline)]
    database: DatabaseState,
}

fn service_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([SERVICE]))
        .build()
        .into()
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum RedisState {
    Ok,
    Unavailable,
}

/// `off` without a DATABASE_URL.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum DatabaseState {
    Ok,
    Unavailable,
    Off,
}

/// `GET /api/status`: what this ingest service serves and whether its dependencies answer.
/// 200 when Redis answers (samples can be accepted), 503 otherwise.
#[utoipa::path(
    get,
    path = "/api/status",
    operation_id = "status",
    tag = "service",
    summary = "What this service serves and whether its dependencies answer",
    security(),
    responses(
        (status = 200, description = "Redis answers: samples can be accepted.", body = Status),
        (status = 503, description = "Redis does not answer.", body = Status),
    ),
)]
pub async fn status(State(state): State<Arc<AppState>>) -> Response {
    let stream_length = state.writer.length().await;
    let database = match &state.db {
        None => DatabaseState::Off,
        Some(db) => match sqlx::query("select 1").execute(db).await {
            Ok(_) => DatabaseState::Ok,
            Err(_) => DatabaseState::Unavailable,
        },
    };
    let body = Status {
        service: SERVICE,
        version: env!("CARGO_PKG_VERSION"),
        region: state.region.clone(),
        stream: state.writer.stream().to_owned(),
        redis: if stream_length.is_some() {
            RedisState::Ok
        } else {
            RedisState::Unavailable
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
