//! What every handler shares: the state, the JSON error body, the bearer-token check. Below
//! both the write API (`api.rs`) and the read API (`read.rs`). Every refusal, whatever its
//! cause, is the JSON `Error` body.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::auth::Token;
use crate::dashboard::{CorsOrigins, DEFAULT_READ_RATE_PER_MINUTE};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::stream::StreamWriter;

pub struct AppState {
    /// The FiberRegion served; pushed samples are stored under it.
    pub region: String,
    pub token: Token,
    pub limiter: RateLimiter,
    pub writer: StreamWriter,
    pub metrics: Metrics,
    pub registry: Registry,
    /// The database of the read API (read-only role); the read API answers 503 without it.
    pub db: Option<sqlx::PgPool>,
    /// The dashboard API's allowance per client address (`dashboard.rs`).
    pub read_limiter: RateLimiter,
    /// Requests a minute of `read_limiter`, for its refusals.
    pub read_rate_per_minute: u32,
    /// Origins whose browsers may read the dashboard API; none by default.
    pub cors: CorsOrigins,
}

impl AppState {
    pub fn new(region: &str, token: Token, limiter: RateLimiter, writer: StreamWriter) -> Self {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Self {
            region: region.to_owned(),
            token,
            limiter,
            writer,
            metrics,
            registry,
            db: None,
            read_limiter: read_limiter(DEFAULT_READ_RATE_PER_MINUTE),
            read_rate_per_minute: DEFAULT_READ_RATE_PER_MINUTE,
            cors: CorsOrigins::default(),
        }
    }

    /// Allows each client `per_minute` dashboard requests a minute, all of them at once at
    /// most (0 is taken as 1).
    pub fn with_read_rate(mut self, per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        self.read_limiter = read_limiter(per_minute);
        self.read_rate_per_minute = per_minute;
        self
    }

    /// Lets browsers of `origins` read the dashboard API.
    pub fn with_cors_origins(mut self, origins: CorsOrigins) -> Self {
        self.cors = origins;
        self
    }

    /// Enables the read API on `pool`.
    pub fn with_database(mut self, pool: sqlx::PgPool) -> Self {
        self.db = Some(pool);
        self
    }
}

fn read_limiter(per_minute: u32) -> RateLimiter {
    RateLimiter::new(f64::from(per_minute) / 60.0, per_minute)
}

/// A request's refusal (boxed: a `Response` is large to carry in every `Result`).
pub type Refusal = Box<Response>;

/// The body of every refusal.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What is wrong, naming the field or parameter.
    pub error: String,
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

/// Checks the bearer token: nothing, or the 401 refusal with its `WWW-Authenticate`
/// challenge.
pub fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), Refusal> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.token.check(authorization).map_err(|refused| {
        state.metrics.outcome("unauthorized");
        let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        let challenge = HeaderValue::from_str(&refused.challenge())
            .expect("the challenge is a valid header value");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
        Box::new(response)
    })
}
