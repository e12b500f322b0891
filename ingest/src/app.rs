//! What every handler shares: the state, the JSON error body, the bearer-token check. Below
//! both the write API (`api.rs`) and the read API (`read.rs`). Every refusal, whatever its
//! cause, is the JSON `Error` body.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::auth::{Identity, Refused, ReviewError, Token, TokenReviewer, bearer};
use crate::dashboard::{CorsOrigins, DEFAULT_READ_RATE_PER_MINUTE};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::stream::StreamWriter;

pub struct AppState {
    /// The FiberRegion served; pushed samples are stored under it.
    pub region: String,
    /// The region's static writer token(s): probes outside the cluster.
    pub token: Token,
    /// The read API's token(s); none, or none yet (its file is absent): the read API
    /// refuses everyone.
    pub reader: Option<Token>,
    /// Verifies probe pods' ServiceAccount tokens; without it only `token` writes.
    pub reviewer: Option<TokenReviewer>,
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
            reader: None,
            reviewer: None,
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

    /// Opens the read API to holders of `reader` (and to them only: a writer's token is
    /// refused there, and `reader` is refused on the write API).
    pub fn with_reader_token(mut self, reader: Token) -> Self {
        self.reader = Some(reader);
        self
    }

    /// Takes probe pods' ServiceAccount tokens too, verified by `reviewer`.
    pub fn with_token_review(mut self, reviewer: TokenReviewer) -> Self {
        self.reviewer = Some(reviewer);
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

/// Checks a reader's credential: nothing, or the refusal with its `WWW-Authenticate`
/// challenge — 401 for no token or an unknown one, 403 for a writer's (a probe's) token.
pub fn authorized_reader(state: &AppState, headers: &HeaderMap) -> Result<(), Refusal> {
    let presented = bearer(authorization(headers))
        .map_err(|refused| unauthorized(state, refused, "missing or wrong bearer token"))?;
    if state.reader.as_ref().is_some_and(|r| r.matches(presented)) {
        return Ok(());
    }
    if state.token.matches(presented) {
        return Err(unauthorized(
            state,
            Refused::InsufficientScope,
            "this is a writer's token (the region's probe token); reading needs the reader token",
        ));
    }
    if state.reader.as_ref().is_none_or(Token::is_empty) {
        return Err(unauthorized(
            state,
            Refused::Invalid,
            "the read API is closed: this service has no reader token (--reader-token-file)",
        ));
    }
    Err(unauthorized(
        state,
        Refused::Invalid,
        "missing or wrong bearer token",
    ))
}

/// Checks a writer's credential: the region token, or (with a TokenReviewer) a probe pod's
/// ServiceAccount token; who it is, or the refusal (401 with the challenge; 503 with
/// Retry-After when the API server cannot be asked).
pub async fn authorized_writer(state: &AppState, headers: &HeaderMap) -> Result<Identity, Refusal> {
    let presented = bearer(authorization(headers))
        .map_err(|refused| unauthorized(state, refused, "missing or wrong bearer token"))?;
    if state.token.matches(presented) {
        return Ok(Identity::Region);
    }
    if state.reader.as_ref().is_some_and(|r| r.matches(presented)) {
        return Err(unauthorized(
            state,
            Refused::InsufficientScope,
            "this is the reader token; writing needs the region's probe token or a probe pod's ServiceAccount token",
        ));
    }
    let Some(reviewer) = state
        .reviewer
        .as_ref()
        .filter(|_| TokenReviewer::looks_like_jwt(presented))
    else {
        return Err(unauthorized(
            state,
            Refused::Invalid,
            "missing or wrong bearer token",
        ));
    };
    match reviewer.review(presented).await {
        Ok(pod) => Ok(Identity::Pod(pod)),
        Err(e @ ReviewError::Refused(_)) => {
            Err(unauthorized(state, Refused::Invalid, &e.to_string()))
        }
        Err(e @ ReviewError::Unavailable(_)) => {
            state.metrics.outcome("unavailable");
            tracing::warn!(error = %e, "cannot review a token");
            Err(Box::new(crate::api::retry_after(
                StatusCode::SERVICE_UNAVAILABLE,
                std::time::Duration::from_secs(5),
                e.to_string(),
            )))
        }
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The 401 (403 for a token of the other role) with its RFC 6750 challenge.
fn unauthorized(state: &AppState, refused: Refused, message: &str) -> Refusal {
    let status = if refused == Refused::InsufficientScope {
        state.metrics.outcome("forbidden");
        StatusCode::FORBIDDEN
    } else {
        state.metrics.outcome("unauthorized");
        StatusCode::UNAUTHORIZED
    };
    let mut response = error(status, message);
    let challenge =
        HeaderValue::from_str(&refused.challenge()).expect("the challenge is a valid header value");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    Box::new(response)
}

/// Times every request into `fiber_ingest_request_duration_seconds{route, code}`: from the
/// request read to its response's head (the body of an answer is small and written after).
pub async fn track_duration(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
