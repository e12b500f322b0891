//! The HTTP API: the router, `POST /api/v1/samples`, `POST /api/push`, health, readiness,
//! metrics and the OpenAPI document; the read API's handlers are in `read.rs` (and the seed's
//! dashboard routes in `dashboard.rs`), what every
//! handler shares (state, JSON errors, the token check) in `app.rs`. Each handler carries its
//! `#[utoipa::path]`, from which `openapi.rs` builds the document.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, options, post};
use fiberstack_model::{Batch, PushSample, Rejection};
use serde::Serialize;
use tracing::Instrument;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, ToSchema};

pub use crate::app::AppState;
use crate::app::{ErrorBody, Refusal, authorized_writer, error};
use crate::auth::Identity;
pub use crate::openapi::OPENAPI;
use crate::stream::AppendError;

/// Largest request body, compressed or not.
pub const MAX_BODY_BYTES: usize = 1 << 20;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/samples", post(post_samples))
        .route("/api/push", post(post_push))
        .route("/api/v1/nodes", get(crate::read::nodes))
        .route("/api/v1/metrics", get(crate::read::metrics))
        .route("/api/metrics", get(crate::dashboard::metrics))
        .route("/api/metrics", options(crate::dashboard::metrics_preflight))
        .route("/api/nodes", get(crate::dashboard::nodes))
        .route("/api/nodes", options(crate::dashboard::nodes_preflight))
        .route("/api/status", get(crate::read::status))
        .route("/api/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Answered with the JSON error too, like every refusal.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The compressed body is limited here (the handlers answer an overrun with the JSON
        // error); the decompressed one in `decode_body`.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Every request's duration by route (the matched one: the layer runs after routing).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::app::track_duration,
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such path; see /api/openapi.json")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path; see /api/openapi.json",
    )
}

/// `202` body: how many samples were accepted and which were refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
}

/// `202` body of `POST /api/push`, the seed's contract.
#[derive(Debug, Serialize, ToSchema)]
pub struct PushAccepted {
    #[schema(inline)]
    pub status: PushStatus,
    pub queued: bool,
    /// The Redis stream entry id.
    pub message_id: String,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PushStatus {
    Accepted,
}

/// The `Content-Encoding`s a request body may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ContentEncoding {
    Gzip,
    Identity,
}

/// The headers the POST handlers read besides `Authorization` (for the document: the handlers
/// read them from the `HeaderMap`).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct BodyHeaders {
    #[param(rename = "Content-Encoding", inline, nullable = false)]
    pub content_encoding: Option<ContentEncoding>,
    /// W3C trace context of the sender's span (fiber-probe sends it when it exports traces):
    /// the request's span joins that trace, and the stream entry carries it on to fiber-etl.
    /// A malformed value is ignored.
    #[param(
        nullable = false,
        example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    )]
    pub traceparent: Option<String>,
}

/// `Retry-After` of a 429 or 503: whole seconds, rounded up, at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(u64);

impl RetryAfter {
    fn of(wait: Duration) -> Self {
        Self(wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// Written out: utoipa's derive takes no bounds on a newtype's field.
impl utoipa::PartialSchema for RetryAfter {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .into()
    }
}

impl ToSchema for RetryAfter {}

pub(crate) fn retry_after(
    status: StatusCode,
    wait: Duration,
    message: impl Into<String>,
) -> Response {
    let mut response = error(status, message);
    let RetryAfter(secs) = RetryAfter::of(wait);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// How a request body is encoded, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    Json,
    /// [`fiberstack_model::binary`] (`application/x-fiberstack-batch`): what fiber-probe sends.
    Binary,
}

/// Reads a request body's declared format: `Content-Type: application/json`, with no
/// charset but UTF-8 (RFC 8259 §8.1), or — where `binary` allows it (`/api/v1/samples`) —
/// the binary batch's media type. A request without a `Content-Type` is read as JSON (the
/// seed's push clients may send none): the body must still parse.
fn body_format(headers: &HeaderMap, binary: bool) -> Result<BodyFormat, String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyFormat::Json);
    };
    let text = value.to_str().unwrap_or("?");
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let send = if binary {
        format!(
            "send application/json or {}",
            fiberstack_model::binary::MEDIA_TYPE
        )
    } else {
        "send application/json".to_string()
    };
    if binary && essence.eq_ignore_ascii_case(fiberstack_model::binary::MEDIA_TYPE) {
        return Ok(BodyFormat::Binary);
    }
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(format!("Content-Type {text:?} is not supported; {send}"));
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !value.eq_ignore_ascii_case("utf-8")
            && !value.eq_ignore_ascii_case("utf8")
        {
            return Err(format!(
                "Content-Type {text:?}: JSON is read as UTF-8, not {value:?}; {send}"
            ));
        }
    }
    Ok(BodyFormat::Json)
}

/// The body's bytes: gzip is undone, within the same size limit.
fn decode_body(headers: &HeaderMap, body: Bytes) -> Result<Vec<u8>, (StatusCode, String)> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let encoding = match encoding.as_deref() {
        None | Some("identity") => ContentEncoding::Identity,
        Some("gzip") => ContentEncoding::Gzip,
        Some(other) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?} is not supported; send gzip or no encoding"),
            ));
        }
    };
    match encoding {
        ContentEncoding::Identity => Ok(body.to_vec()),
        ContentEncoding::Gzip => {
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
    }
}

/// Checks the writer's credential, the body's size and type (`binary`: whether the binary
/// batch is a type this route takes), and undoes the content encoding: who sent it, the
/// body's format and its bytes, or the request's refusal.
async fn authorized_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    binary: bool,
) -> Result<(Identity, BodyFormat, Vec<u8>), Refusal> {
    let identity = authorized_writer(state, headers).await?;
    let read = body
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over {MAX_BODY_BYTES} bytes"),
            ),
            status => (status, rejection.body_text()),
        })
        .and_then(|body| {
            let format = body_format(headers, binary)
                .map_err(|message| (StatusCode::UNSUPPORTED_MEDIA_TYPE, message))?;
            decode_body(headers, body).map(|bytes| (format, bytes))
        });
    read.map(|(format, bytes)| (identity, format, bytes))
        .map_err(|(status, message)| {
            let too_large = status == StatusCode::PAYLOAD_TOO_LARGE;
            state
                .metrics
                .outcome(if too_large { "too_large" } else { "invalid" });
            Box::new(error(status, message))
        })
}

/// Parses a JSON body; the error names where it went wrong (`samples[3].sent: invalid value:
/// integer `5000000000`, expected u32 at line 1 column 200`).
fn parse<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, String> {
    // The plain parse first: tracking the path costs an allocation per field, about as much
    // again as the parse, and only a refused body needs it (parsed once more, for the message).
    if let Ok(value) = serde_json::from_slice(json) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// A 400 for a request whose content breaks a rule, counted as `invalid`.
fn invalid(state: &AppState, message: String) -> Response {
    state.metrics.outcome("invalid");
    error(StatusCode::BAD_REQUEST, message)
}

/// Rate-limits by node and appends a batch of valid samples: the entry id, or the refusal.
/// `encoded` is the batch's binary encoding when the caller has it (a binary body of which
/// nothing was refused), saving the encoding.
async fn admit(
    state: &AppState,
    batch: &Batch,
    encoded: Option<Vec<u8>>,
) -> Result<Option<String>, Refusal> {
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
    let started = Instant::now();
    let appended = match encoded {
        Some(bytes) => {
            state
                .writer
                .append_encoded(bytes, traceparent.as_deref())
                .await
        }
        None => state.writer.append(batch, traceparent.as_deref()).await,
    };
    m.send_duration.observe(started.elapsed().as_secs_f64());
    match appended {
        Ok(id) => {
            m.samples_sent.inc_by(batch.samples.len() as u64);
            Ok(Some(id))
        }
        Err(e @ (AppendError::Unavailable(_) | AppendError::Timeout(_))) => {
            m.outcome("unavailable");
            m.send_error("unavailable");
            tracing::warn!(error = %e, "refusing a batch");
            Err(Box::new(retry_after(
                StatusCode::SERVICE_UNAVAILABLE,
                e.retry_after(),
                e.to_string(),
            )))
        }
        Err(
            e @ (AppendError::Backlog { .. }
            | AppendError::Behind { .. }
            | AppendError::Expected { .. }),
        ) => {
            m.outcome("backlog");
            m.send_error("backlog");
            tracing::warn!(error = %e, "refusing a batch");
            Err(Box::new(retry_after(
                StatusCode::SERVICE_UNAVAILABLE,
                e.retry_after(),
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

#[utoipa::path(
    post,
    path = "/api/v1/samples",
    operation_id = "postSamples",
    tag = "ingest",
    summary = "Send a batch of samples",
    description = "Valid samples of a batch are accepted even when others are not; refused ones are named by index and field, among them any that could not be stored as sent (a NUL character in any string, a count above 2147483647). At most 5000 samples and 1 MiB (compressed and decompressed). The batch's `region` must be the region this service serves, unless it comes with a probe pod's ServiceAccount token of that region (a probe falling back to another region's ingest; stored under the batch's region). `Content-Type: application/json` (a request without one is read as JSON), or `application/x-fiberstack-batch`: the same batch in FiberStack's binary encoding (the layout is documented in the model crate's `binary` module; fiber-probe sends it); `Content-Encoding: gzip` is accepted.",
    params(BodyHeaders),
    request_body(content(
        (Batch = "application/json", example = json!({
        "probe": "fiberstack/accra-edge",
        "region": "ghana",
        "country": "GH",
        "node": "gh-accra-1",
        "agent_version": "0.1.0",
        "samples": [
            {
                "time": "2026-11-23T10:00:00Z", "target": "google-dns", "kind": "icmp",
                "address": "8.8.8.8", "up": true,
                "latency_ms": 21.4, "latency_min_ms": 19.9, "latency_max_ms": 24.0,
                "jitter_ms": 1.2, "packet_loss": 0.0, "sent": 5, "received": 5
            },
            {
                "time": "2026-11-23T10:00:00Z", "target": "api", "kind": "http",
                "address": "https://api.example.com/health", "up": true,
                "latency_ms": 84.0, "status_code": 200,
                "metadata": {
                    "dns_ms": 2.1, "connect_ms": 20.3, "tls_ms": 31.0, "ttfb_ms": 80.2,
                    "total_ms": 84.0, "cert_days_to_expiry": 61
                }
            }
        ]
    })),
        ("application/x-fiberstack-batch"),
    )),
    responses(
        (status = 202, description = "The valid samples are in the stream.", body = Accepted),
        (status = 400, description = "The body is not a batch, or the batch as a whole breaks a rule (the message names the field).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "With the region's static token: the batch's region is not the region this service serves. With a probe pod's ServiceAccount token: its region, node or probe is not the pod's own (the message names both; a pod's batch of its own region is taken by any region's ingest, the probe's fallback). Or the token sent is the reader token. Nothing is stored.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB, compressed or decompressed.", body = ErrorBody),
        (status = 415, description = "A Content-Type other than application/json (or a charset other than UTF-8) or application/x-fiberstack-batch, or a Content-Encoding other than gzip.", body = ErrorBody),
        (status = 429, description = "The node is over its rate limit.", body = ErrorBody,
            headers(("Retry-After" = inline(RetryAfter), description = "Seconds to wait before sending again."))),
        (status = 503, description = "Redis does not answer, the stream's backlog is over its cap, or the Kubernetes API cannot be asked to verify a ServiceAccount token.", body = ErrorBody,
            headers(("Retry-After" = inline(RetryAfter), description = "Seconds to wait before sending again."))),
    ),
)]
async fn post_samples(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = request_span(tracing::info_span!("post_samples"), &headers);
    accept_samples(state, headers, body).instrument(span).await
}

async fn accept_samples(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (identity, format, body) = match authorized_body(&state, &headers, body, true).await {
        Ok(read) => read,
        Err(refusal) => return *refusal,
    };
    let m = &state.metrics;
    let parsed = match format {
        BodyFormat::Json => parse(&body),
        BodyFormat::Binary => fiberstack_model::binary::decode(&body).map_err(|e| e.to_string()),
    };
    let batch: Batch = match parsed {
        Ok(batch) => batch,
        Err(e) => return invalid(&state, format!("body is not a batch: {e}")),
    };
    // The region's token admits the region's batches only; a probe pod's token its own
    // region's (to any region's ingest: its fallback), node's and FiberProbe's.
    if let Err(message) =
        identity.may_write(&state.region, &batch.region, &batch.node, &batch.probe)
    {
        m.outcome("forbidden");
        return error(StatusCode::FORBIDDEN, message);
    }
    let (valid, rejected) = match batch.into_valid(chrono::Utc::now()) {
        Ok(split) => split,
        Err(e) => return invalid(&state, format!("batch refused: {e}")),
    };
    m.samples_received
        .inc_by((valid.samples.len() + rejected.len()) as u64);
    // A binary body of which nothing was refused is the stream entry as the ETL reads it:
    // appended as it came rather than encoded again. A JSON body is encoded (the stream
    // carries the binary encoding: a third of the bytes for Redis, no text for the ETL to
    // parse).
    let encoded = (format == BodyFormat::Binary && rejected.is_empty()).then_some(body);
    if let Err(refusal) = admit(&state, &valid, encoded).await {
        return *refusal;
    }
    m.discarded("invalid", rejected.len() as u64);
    m.outcome("accepted");
    let accepted = valid.samples.len();
    (
        StatusCode::ACCEPTED,
        axum::Json(Accepted { accepted, rejected }),
    )
        .into_response()
}

/// The seed's single-sample contract: `202 {"status":"accepted","queued":true,"message_id"}`.
#[utoipa::path(
    post,
    path = "/api/push",
    operation_id = "postPush",
    tag = "ingest",
    summary = "Send one sample (the original single-sample contract)",
    description = "Kept compatible with the first FiberStack blueprint. Stored as probe `legacy/push`, target `node`, kind `icmp`, under the region this service serves. `Content-Type: application/json` (a request without one is read as JSON).",
    params(BodyHeaders),
    request_body(content = PushSample, example = json!({
        "node_id": "gh-accra-1",
        "country": "GH",
        "region": "ghana",
        "latency_ms": 23.5,
        "uptime_pct": 99.9,
        "packet_loss": 0.0,
        "timestamp": "2026-11-23T10:00:00Z"
    })),
    responses(
        (status = 202, description = "The sample is in the stream.", body = PushAccepted),
        (status = 400, description = "The body is not a push sample, or a field breaks a rule.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "With a probe pod's ServiceAccount token: the sample's node is not the pod's own, or the pod is not a probe of `legacy/push`; or the token sent is the reader token. Nothing is stored.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
        (status = 415, description = "A Content-Type other than application/json (or a charset other than UTF-8), or a Content-Encoding other than gzip.", body = ErrorBody),
        (status = 429, description = "The node is over its rate limit.", body = ErrorBody,
            headers(("Retry-After" = inline(RetryAfter), description = "Seconds to wait before sending again."))),
        (status = 503, description = "Redis does not answer, the stream's backlog is over its cap, or the Kubernetes API cannot be asked to verify a ServiceAccount token.", body = ErrorBody,
            headers(("Retry-After" = inline(RetryAfter), description = "Seconds to wait before sending again."))),
    ),
)]
async fn post_push(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = request_span(tracing::info_span!("post_push"), &headers);
    accept_push(state, headers, body).instrument(span).await
}

async fn accept_push(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (identity, _, json) = match authorized_body(&state, &headers, body, false).await {
        Ok(read) => read,
        Err(refusal) => return *refusal,
    };
    let m = &state.metrics;
    let now = chrono::Utc::now();
    let push: PushSample = match parse(&json) {
        Ok(push) => push,
        Err(e) => return invalid(&state, format!("body is not a push sample: {e}")),
    };
    if let Err(e) = push.validate(now) {
        return invalid(&state, format!("sample refused: {e}"));
    }
    let batch = push.into_batch(&state.region);
    if let Err(message) =
        identity.may_write(&state.region, &batch.region, &batch.node, &batch.probe)
    {
        m.outcome("forbidden");
        return error(StatusCode::FORBIDDEN, message);
    }
    // The mapping can still break a rule of the batch (the region name, say): say which.
    match batch.validate(now) {
        Ok(rejected) if rejected.is_empty() => {}
        Ok(rejected) => return invalid(&state, format!("sample refused: {}", rejected[0].error)),
        Err(e) => return invalid(&state, format!("sample refused: {e}")),
    }
    m.samples_received.inc();
    match admit(&state, &batch, None).await {
        Ok(id) => {
            m.outcome("accepted");
            let body = PushAccepted {
                status: PushStatus::Accepted,
                queued: true,
                // A push is one sample, so there always is an entry.
                message_id: id.unwrap_or_default(),
            };
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Err(refusal) => *refusal,
    }
}

#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    tag = "service",
    summary = "This document",
    security(),
    responses((status = 200, description = "OpenAPI 3.1", body = Object)),
)]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.as_str(),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "service",
    summary = "Liveness: the process serves HTTP",
    security(),
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")),
)]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "service",
    summary = "Readiness: Redis answers",
    security(),
    responses(
        (status = 200, description = "`ok`", body = String, content_type = "text/plain"),
        (status = 503, description = "Redis does not answer.", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.writer.ping().await {
        "ok".into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "redis does not answer")
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "service",
    summary = "Prometheus metrics",
    description = "OpenMetrics text when the request's Accept header lists application/openmetrics-text (Prometheus' does), else the classic text format (version 0.0.4).",
    security(),
    responses((status = 200, description = "Requests by outcome, samples accepted and rejected, stream append latency.",
        content((String = "application/openmetrics-text"), (String = "text/plain")))),
)]
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, text) = fiberstack_plumbing::metrics::exposition(&state.registry, accept);
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
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
