//! The seed's dashboard read API (seed 000): `GET /api/metrics?node_id=&start=&end=&aggregation=`
//! and `GET /api/nodes`, in the seed's shapes, over the same tables as `/api/v1` (`read.rs`).
//! Both answer browsers of the configured CORS origins (seed 001 `CORS_ORIGINS`), preflight
//! included, and share a read rate limit per client address (seed 000: 1,000 requests a
//! minute per dashboard client).
//!
//! The seed's data point is one per node and time, where we store one row per node, probe and
//! target: a point is the node's targets at that time (raw) or in that bucket (hourly, daily).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{RetryAfter, retry_after};
use crate::app::{AppState, ErrorBody, Refusal, authorized_reader, error};
use crate::read::{Aggregation, database, db_error, time_param};

/// Most points one `/api/metrics` answer holds.
pub const MAX_POINTS: i64 = 10_000;

/// Requests a minute each client may make to the dashboard API by default (seed 000).
pub const DEFAULT_READ_RATE_PER_MINUTE: u32 = 1_000;

/// How long a browser may keep a preflight's answer (seconds).
const PREFLIGHT_MAX_AGE: u32 = 600;

/// The origins whose browsers may read the dashboard API (`--cors-origins`). Empty: no CORS
/// header is ever sent, and every preflight is refused.
#[derive(Debug, Clone, Default)]
pub struct CorsOrigins(Vec<HeaderValue>);

impl CorsOrigins {
    /// Comma-separated origins such as `https://dashboard.example.org,http://localhost:3000`:
    /// scheme `http` or `https`, a host and an optional port, no path. Blank entries are
    /// skipped.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut origins = Vec::new();
        for origin in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let valid = host.is_some_and(|h| {
                !h.is_empty()
                    && !h.contains(['/', '?', '#', '*', '@'])
                    && !h.contains(char::is_whitespace)
            });
            if !valid {
                return Err(format!(
                    "CORS origin {origin:?} is not an origin such as https://dashboard.example.org (scheme http or https, host, optional port, no path, no wildcard)"
                ));
            }
            origins.push(
                HeaderValue::from_str(origin)
                    .map_err(|e| format!("CORS origin {origin:?}: {e}"))?,
            );
        }
        Ok(Self(origins))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The request's `Origin` when it is one of ours.
    fn allowed<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.0.contains(origin).then_some(origin)
    }

    /// Adds what lets a browser of an allowed origin read `response`.
    fn apply(&self, headers: &HeaderMap, mut response: Response) -> Response {
        if self.is_empty() {
            return response;
        }
        let out = response.headers_mut();
        // Caches must not hand one origin's answer to another.
        out.append(header::VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = self.allowed(headers) {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            out.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after"),
            );
        }
        response
    }
}

/// The client a request counts against: the connection's peer address. Not a bearer token:
/// every client holds the same region token today, so it would make one allowance of all of
/// them. Not `X-Forwarded-For`: anyone can write it. Behind a proxy, its clients share one
/// allowance.
fn client(extensions: &Extensions) -> String {
    extensions.get::<ConnectInfo<SocketAddr>>().map_or_else(
        || "unknown".to_owned(),
        |ConnectInfo(addr)| addr.ip().to_string(),
    )
}

/// Takes one request from the client's allowance, or the 429 refusal with its Retry-After.
fn within_read_limit(state: &AppState, extensions: &Extensions) -> Result<(), Refusal> {
    let client = client(extensions);
    state.read_limiter.check(&client).map_err(|wait| {
        state.metrics.outcome("read_rate_limited");
        let message = format!(
            "client {client} is over the read rate limit of {} requests a minute",
            state.read_rate_per_minute
        );
        Box::new(retry_after(StatusCode::TOO_MANY_REQUESTS, wait, message))
    })
}

/// A node that has reported, in the seed's names.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct DashboardNode {
    /// The node's name (the seed's `node_id`), e.g. `gh-accra-1`.
    pub node_id: String,
    /// The FiberRegion it reports to.
    pub region: String,
    /// ISO 3166-1 alpha-2.
    #[schema(pattern = "^[A-Z]{2}$")]
    pub country: String,
    /// fiber-probe's version on the node.
    pub probe_version: String,
    /// First report.
    pub created_at: DateTime<Utc>,
    /// Latest report.
    pub last_seen_at: DateTime<Utc>,
}

/// The query of `GET /api/metrics`. Everything is checked by the handler, which names a
/// malformed parameter in the `Error` body.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NodeMetricsQuery {
    /// The node (as `GET /api/nodes` names it).
    #[param(example = "gh-accra-1")]
    #[serde(default)]
    pub node_id: String,
    /// RFC 3339; default: one hour before `end`.
    #[param(format = DateTime)]
    pub start: Option<String>,
    /// RFC 3339, exclusive; default: now.
    #[param(format = DateTime)]
    pub end: Option<String>,
    /// `raw`: a point per sample time; `hourly`/`daily`: a point per hour or day (UTC).
    #[param(value_type = Option<Aggregation>, inline, example = "hourly")]
    pub aggregation: Option<String>,
}

/// The time range answered: the one asked for, defaults filled in.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeframe {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The node's targets at one time, or in one bucket. `null` where none measured the figure.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct MetricsPoint {
    /// The sample time (`raw`) or the start of the hour or day.
    pub time: DateTime<Utc>,
    /// Mean latency of the samples that measured one.
    #[schema(required = true, minimum = 0)]
    pub latency_ms: Option<f64>,
    /// Share of the samples that were up.
    #[schema(minimum = 0, maximum = 100)]
    pub uptime_pct: f64,
    /// Mean packet loss (%) of the samples that measured one.
    #[schema(required = true, minimum = 0, maximum = 100)]
    pub packet_loss: Option<f64>,
}

/// The answer of `GET /api/metrics` (seed 000's shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeMetrics {
    pub node_id: String,
    pub timeframe: Timeframe,
    /// In time order.
    pub data: Vec<MetricsPoint>,
}

#[utoipa::path(
    get,
    path = "/api/nodes",
    operation_id = "dashboardNodes",
    tag = "dashboard",
    summary = "Probe nodes that have reported (seed 000)",
    description = "Every node, by name. Counts against the client address's read rate limit, shared with `GET /api/metrics`. A browser of an origin configured in `--cors-origins` gets `Access-Control-Allow-Origin` on every answer (and `Vary: Origin` whenever origins are configured); other origins get no CORS header.",
    responses(
        (status = 200, description = "Every known node, by name.", body = Vec<DashboardNode>),
        (status = 401, description = "Missing or wrong bearer token (reading needs the reader token), or no reader token is configured.", body = ErrorBody),
        (status = 403, description = "A writer's token (the region's probe token): reading needs the reader token.", body = ErrorBody),
        (status = 429, description = "The client address is over the read rate limit.", body = ErrorBody,
            headers(("Retry-After" = inline(RetryAfter), description = "Seconds to wait before asking again."))),
        (status = 503, description = "No DATABASE_URL is configured, or the database does not answer.", body = ErrorBody),
    ),
)]
pub async fn nodes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let answer = async {
        within_read_limit(&state, &extensions)?;
        authorized_reader(&state, &headers)?;
        let db = database(&state)?;
        sqlx::query_as::<_, DashboardNode>(
            "select name as node_id, region, country, agent_version as probe_version,
                    first_seen_at as created_at, last_seen_at
               from nodes order by name",
        )
        .fetch_all(db)
        .await
        .map(|nodes| Json(nodes).into_response())
        .map_err(|e| Box::new(db_error(e)))
    };
    let response = answer.await.unwrap_or_else(|refusal| *refusal);
    state.cors.apply(&headers, response)
}

#[utoipa::path(
    get,
    path = "/api/metrics",
    operation_id = "dashboardMetrics",
    tag = "dashboard",
    summary = "A node's latency, uptime and packet loss over a time range (seed 000)",
    description = "One point per sample time (`raw`) or per hour or day (`hourly`, `daily`, from the rollups), each over all the node's probes and targets; at most 10000 points. A node that sent nothing in the range (or never) has no points. Counts against the client address's read rate limit, shared with `GET /api/nodes`. A browser of an origin configured in `--cors-origins` gets `Access-Control-Allow-Origin` on every answer (and `Vary: Origin` whenever origins are configured); other origins get no CORS header.",
    params(NodeMetricsQuery),
    responses(
        (status = 200, description = "The node's points in time order.", body = NodeMetrics),
        (status = 400, description = "A parameter is missing, malformed or holds a NUL character, `end` is not after `start`, or the range holds more than 10000 points (the message names it).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token (reading needs the reader token), or no reader token is configured.", body = ErrorBody),
        (status = 403, description = "A writer's token (the region's probe token): reading needs the reader token.", body = ErrorBody),
        (status = 429, description = "The client address is over the read rate limit.", body = ErrorBody,
            headers(("Retry-After" = inline(RetryAfter), description = "Seconds to wait before asking again."))),
        (status = 503, description = "No DATABASE_URL is configured, or the database does not answer.", body = ErrorBody),
    ),
)]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    extensions: Extensions,
    query: Result<Query<NodeMetricsQuery>, QueryRejection>,
) -> Response {
    let answer = async {
        within_read_limit(&state, &extensions)?;
        authorized_reader(&state, &headers)?;
        let Query(q) = query
            .map_err(|rejection| Box::new(error(StatusCode::BAD_REQUEST, rejection.body_text())))?;
        node_metrics(&state, q).await
    };
    let response = answer.await.unwrap_or_else(|refusal| *refusal);
    state.cors.apply(&headers, response)
}

fn bad_request(message: String) -> Refusal {
    Box::new(error(StatusCode::BAD_REQUEST, message))
}

async fn node_metrics(state: &AppState, q: NodeMetricsQuery) -> Result<Response, Refusal> {
    if q.node_id.is_empty() {
        return Err(bad_request(
            "node_id: missing; name a node as GET /api/nodes lists them".to_owned(),
        ));
    }
    if q.node_id.contains('\0') {
        return Err(bad_request(
            "node_id: contains a NUL character (U+0000), which no name holds".to_owned(),
        ));
    }
    let aggregation_text = q.aggregation.as_deref().unwrap_or("raw");
    let aggregation = Aggregation::parse(aggregation_text).ok_or_else(|| {
        bad_request(format!(
            "aggregation: {aggregation_text:?} is not one of raw, hourly, daily"
        ))
    })?;
    let end = time_param("end", q.end.as_deref(), Utc::now())?;
    let start = time_param("start", q.start.as_deref(), end - Duration::hours(1))?;
    if start >= end {
        return Err(bad_request(format!(
            "end: {end} is not after start {start}"
        )));
    }
    let db = database(state)?;
    let sql = match aggregation {
        Aggregation::Raw => RAW_POINTS,
        Aggregation::Hourly => HOURLY_POINTS,
        Aggregation::Daily => DAILY_POINTS,
    };
    let data = sqlx::query_as::<_, MetricsPoint>(sql)
        .bind(&q.node_id)
        .bind(start)
        .bind(end)
        .bind(MAX_POINTS + 1)
        .fetch_all(db)
        .await
        .map_err(|e| Box::new(db_error(e)))?;
    if data.len() as i64 > MAX_POINTS {
        return Err(bad_request(format!(
            "start, end: the range holds more than {MAX_POINTS} points at aggregation={}; narrow it or ask for a coarser aggregation",
            aggregation_text
        )));
    }
    Ok(Json(NodeMetrics {
        node_id: q.node_id,
        timeframe: Timeframe { start, end },
        data,
    })
    .into_response())
}

/// The node's samples, one point per sample time across its probes and targets.
const RAW_POINTS: &str = "select time, avg(latency_ms) as latency_ms,
                                 (100.0 * avg(up::int))::float8 as uptime_pct,
                                 avg(packet_loss) as packet_loss
                            from metrics
                           where node = $1 and time >= $2 and time < $3
                           group by time order by time limit $4";

/// The node's rollup rows, one point per bucket: uptime exactly (from the up counts), latency
/// and loss as the targets' means weighted by their samples.
macro_rules! points_query {
    ($table:literal) => {
        concat!(
            "select bucket as time,
                    (sum(latency_avg_ms * samples)
                       / nullif(sum(samples) filter (where latency_avg_ms is not null), 0))::float8 as latency_ms,
                    (100.0 * sum(up_samples) / sum(samples))::float8 as uptime_pct,
                    (sum(packet_loss_avg * samples)
                       / nullif(sum(samples) filter (where packet_loss_avg is not null), 0))::float8 as packet_loss
               from ",
            $table,
            "
              where node = $1 and bucket >= $2 and bucket < $3
              group by bucket order by bucket limit $4"
        )
    };
}

const HOURLY_POINTS: &str = points_query!("metrics_hourly");
const DAILY_POINTS: &str = points_query!("metrics_daily");

/// The CORS preflight of the dashboard API: answered for the configured origins only.
#[utoipa::path(
    options,
    path = "/api/metrics",
    operation_id = "dashboardMetricsPreflight",
    tag = "dashboard",
    summary = "CORS preflight of GET /api/metrics",
    security(),
    params(PreflightHeaders),
    responses(
        (status = 204, description = "The Origin is one of `--cors-origins`: a browser there may send GET with an Authorization header.",
            headers(
                ("Access-Control-Allow-Origin" = String, description = "The request's Origin."),
                ("Access-Control-Allow-Methods" = String, description = "`GET`"),
                ("Access-Control-Allow-Headers" = String, description = "`authorization`"),
                ("Access-Control-Max-Age" = u32, description = "Seconds a browser may keep this answer (600)."),
            )),
        (status = 403, description = "No Origin, or one not in `--cors-origins` (none are by default); no CORS header is sent.", body = ErrorBody),
    ),
)]
pub async fn metrics_preflight(state: State<Arc<AppState>>, headers: HeaderMap) -> Response {
    preflight(state, headers).await
}

/// The CORS preflight of the dashboard API: answered for the configured origins only.
#[utoipa::path(
    options,
    path = "/api/nodes",
    operation_id = "dashboardNodesPreflight",
    tag = "dashboard",
    summary = "CORS preflight of GET /api/nodes",
    security(),
    params(PreflightHeaders),
    responses(
        (status = 204, description = "The Origin is one of `--cors-origins`: a browser there may send GET with an Authorization header.",
            headers(
                ("Access-Control-Allow-Origin" = String, description = "The request's Origin."),
                ("Access-Control-Allow-Methods" = String, description = "`GET`"),
                ("Access-Control-Allow-Headers" = String, description = "`authorization`"),
                ("Access-Control-Max-Age" = u32, description = "Seconds a browser may keep this answer (600)."),
            )),
        (status = 403, description = "No Origin, or one not in `--cors-origins` (none are by default); no CORS header is sent.", body = ErrorBody),
    ),
)]
pub async fn nodes_preflight(state: State<Arc<AppState>>, headers: HeaderMap) -> Response {
    preflight(state, headers).await
}

/// The headers a browser's preflight carries.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct PreflightHeaders {
    /// The page's origin.
    #[param(rename = "Origin", example = "https://dashboard.example.org")]
    pub origin: String,
    #[param(
        rename = "Access-Control-Request-Method",
        nullable = false,
        example = "GET"
    )]
    pub request_method: Option<String>,
}

async fn preflight(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(origin) = state.cors.allowed(&headers) else {
        let origin = headers
            .get(header::ORIGIN)
            .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned());
        let message = match origin {
            None => "CORS preflight without an Origin header".to_owned(),
            Some(origin) => {
                format!("Origin {origin:?} is not one of the allowed CORS origins (--cors-origins)")
            }
        };
        return state
            .cors
            .apply(&headers, error(StatusCode::FORBIDDEN, message));
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    out.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization"),
    );
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE),
    );
    out.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::CorsOrigins;

    #[test]
    fn cors_origins_are_origins() {
        let origins =
            CorsOrigins::parse(" https://a.example.org, ,http://localhost:3000 ").unwrap();
        assert_eq!(
            origins.0,
            ["https://a.example.org", "http://localhost:3000"]
        );
        assert!(CorsOrigins::parse("").unwrap().is_empty());
        for bad in [
            "*",
            "https://a.example.org/",
            "ftp://x",
            "a.example.org",
            "https://",
            "https://a b",
        ] {
            let refused = CorsOrigins::parse(bad).unwrap_err();
            assert!(refused.contains(&format!("{bad:?}")), "{bad}: {refused}");
        }
    }
}
