//! The HTTP API: the router, `POST /api/v1/samples`, `POST /api/push`, health, readiness,
//! metrics and the OpenAPI document; the read API's handlers are in `read.rs`, what every
//! handler shares (state, JSON errors, the token check) in `app.rs`.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fiberstack_model::{Batch, PushSample, Rejection};
use serde::Serialize;
use tracing::Instrument;

pub use crate::app::AppState;
use crate::app::{Refusal, authorized, error};
use crate::stream::AppendError;

/// Largest request body, compressed or not.
pub const MAX_BODY_BYTES: usize = 1 << 20;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/samples", post(post_samples))
        .route("/api/push", post(post_push))
        .route("/api/v1/nodes", get(crate::read::nodes))
        .route("/api/v1/metrics", get(crate::read::metrics))
        .route("/api/status", get(crate::read::status))
        .route("/api/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // The compressed body is limited here; the decompressed one in `decode_body`.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `202` body: how many samples were accepted and which were refused.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
}

fn retry_after(status: StatusCode, wait: Duration, message: impl Into<String>) -> Response {
    let mut response = error(status, message);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// The body as JSON bytes: gzip is undone, within the same size limit.
fn decode_body(headers: &HeaderMap, body: Bytes) -> Result<Vec<u8>, (StatusCode, String)> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(MAX_BODY_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("body is not valid gzip: {e}"),
                    )
                })?;
            if out.len() > MAX_BODY_BYTES {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("decompressed body is over {MAX_BODY_BYTES} bytes"),
                ));
            }
            Ok(out)
        }
        Some(other) => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other:?} is not supported; send gzip or no encoding"),
        )),
    }
}

/// Checks the token and undoes the content encoding: the JSON of a request, or its refusal.
fn authorized_json(state: &AppState, headers: &HeaderMap, body: Bytes) -> Result<Vec<u8>, Refusal> {
    authorized(state, headers)?;
    decode_body(headers, body).map_err(|(status, message)| {
        let too_large = status == StatusCode::PAYLOAD_TOO_LARGE;
        state
            .metrics
            .outcome(if too_large { "too_large" } else { "invalid" });
        Box::new(error(status, message))
    })
}

/// A 400 for a request whose content breaks a rule, counted as `invalid`.
fn invalid(state: &AppState, message: String) -> Response {
    state.metrics.outcome("invalid");
    error(StatusCode::BAD_REQUEST, message)
}

/// Rate-limits by node and appends a batch of valid samples: the entry id, or the refusal.
async fn admit(state: &AppState, batch: &Batch) -> Result<Option<String>, Refusal> {
    let m = &state.metrics;
    if let Err(wait) = state.limiter.check(&batch.node) {
        m.outcome("rate_limited");
        return Err(Box::new(retry_after(
            StatusCode::TOO_MANY_REQUESTS,
            wait,
            format!("node {} is over its rate limit", batch.node),
        )));
    }
    if batch.samples.is_empty() {
        return Ok(None);
    }
    // The entry carries this request's trace context on to the ETL.
    let traceparent = fiberstack_telemetry::traceparent(&tracing::Span::current());
    match state.writer.append(batch, traceparent.as_deref()).await {
        Ok(id) => {
            m.samples_accepted.inc_by(batch.samples.len() as u64);
            Ok(Some(id))
        }
        Err(e @ (AppendError::Unavailable(_) | AppendError::Timeout(_))) => {
            m.outcome("unavailable");
            tracing::warn!(error = %e, "refusing a batch");
            Err(Box::new(retry_after(
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(1),
                e.to_string(),
            )))
        }
        Err(e @ AppendError::Backlog { .. }) => {
            m.outcome("backlog");
            tracing::warn!(error = %e, "refusing a batch");
            Err(Box::new(retry_after(
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(5),
                e.to_string(),
            )))
        }
    }
}

/// The span of a request, a child of the caller's span when it sent a `traceparent`.
fn request_span(span: tracing::Span, headers: &HeaderMap) -> tracing::Span {
    if let Some(tp) = headers
        .get(fiberstack_telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
    {
        fiberstack_telemetry::set_parent(&span, tp);
    }
    span
}

async fn post_samples(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let span = request_span(tracing::info_span!("post_samples"), &headers);
    accept_samples(state, headers, body).instrument(span).await
}

async fn accept_samples(state: Arc<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let json = match authorized_json(&state, &headers, body) {
        Ok(json) => json,
        Err(refusal) => return *refusal,
    };
    let m = &state.metrics;
    let batch: Batch = match serde_json::from_slice(&json) {
        Ok(batch) => batch,
        Err(e) => return invalid(&state, format!("body is not a batch: {e}")),
    };
    let (valid, rejected) = match batch.into_valid(chrono::Utc::now()) {
        Ok(split) => split,
        Err(e) => return invalid(&state, format!("batch refused: {e}")),
    };
    if let Err(refusal) = admit(&state, &valid).await {
        return *refusal;
    }
    m.samples_rejected.inc_by(rejected.len() as u64);
    m.outcome("accepted");
    let accepted = valid.samples.len();
    (
        StatusCode::ACCEPTED,
        axum::Json(Accepted { accepted, rejected }),
    )
        .into_response()
}

/// The seed's single-sample contract: `202 {"status":"accepted","queued":true,"message_id"}`.
async fn post_push(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let span = request_span(tracing::info_span!("post_push"), &headers);
    accept_push(state, headers, body).instrument(span).await
}

async fn accept_push(state: Arc<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let json = match authorized_json(&state, &headers, body) {
        Ok(json) => json,
        Err(refusal) => return *refusal,
    };
    let m = &state.metrics;
    let now = chrono::Utc::now();
    let push: PushSample = match serde_json::from_slice(&json) {
        Ok(push) => push,
        Err(e) => return invalid(&state, format!("body is not a push sample: {e}")),
    };
    if let Err(e) = push.validate(now) {
        return invalid(&state, format!("sample refused: {e}"));
    }
    let batch = push.into_batch(&state.region);
    // The mapping can still break a rule of the batch (the region name, say): say which.
    match batch.validate(now) {
        Ok(rejected) if rejected.is_empty() => {}
        Ok(rejected) => return invalid(&state, format!("sample refused: {}", rejected[0].error)),
        Err(e) => return invalid(&state, format!("sample refused: {e}")),
    }
    match admit(&state, &batch).await {
        Ok(id) => {
            m.outcome("accepted");
            (
                StatusCode::ACCEPTED,
                axum::Json(
                    serde_json::json!({ "status": "accepted", "queued": true, "message_id": id }),
                ),
            )
                .into_response()
        }
        Err(refusal) => *refusal,
    }
}

/// The OpenAPI 3.1 description of this service (`ingest/src/openapi.json`; its test sends
/// every documented request and checks each answer against it).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.writer.ping().await {
        "ok".into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "redis does not answer")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            fiberstack_plumbing::metrics::CONTENT_TYPE,
        )],
        fiberstack_plumbing::metrics::encode(&state.registry),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after_header(wait: Duration) -> String {
        let response = retry_after(StatusCode::TOO_MANY_REQUESTS, wait, "over");
        let value = &response.headers()[header::RETRY_AFTER];
        value.to_str().unwrap().to_owned()
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_header(Duration::ZERO), "1");
        assert_eq!(retry_after_header(Duration::from_nanos(1)), "1");
        assert_eq!(retry_after_header(Duration::from_millis(500)), "1");
        assert_eq!(retry_after_header(Duration::from_secs(1)), "1");
        assert_eq!(retry_after_header(Duration::from_millis(1001)), "2");
        assert_eq!(retry_after_header(Duration::from_secs(1000)), "1000");
    }
}
