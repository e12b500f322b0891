//! Logging and tracing shared by every FiberStack binary.
//!
//! Logs are JSON lines on stderr, filtered by `FIBER_LOG` (default `info`). When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, spans are
//! also exported over OTLP/HTTP (protobuf); the exporter reads the other standard
//! `OTEL_EXPORTER_OTLP_*` variables (headers, timeout) itself. Trace context crosses process
//! boundaries as a W3C `traceparent` string: [`traceparent`] writes it, [`set_parent`] and
//! [`add_link`] read it.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What every binary's `--help` says about its logs and traces.
pub const ENV_HELP: &str = "Logs are JSON lines on stderr; FIBER_LOG sets the filter (default info). \
Spans are exported over OTLP/HTTP (protobuf) when OTEL_EXPORTER_OTLP_ENDPOINT (e.g. \
http://otel-collector:4318) or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (plain http:// \
only); OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT and OTEL_BSP_* apply as \
usual. Trace context travels probe → ingest → stream → ETL as W3C traceparent.";

/// The header (and stream field) carrying W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Keeps the span exporter alive; dropping it exports the spans still queued, so keep it
/// until `main` returns (after the SIGTERM drain) or the last spans are lost.
#[must_use = "dropping the guard shuts the span exporter down"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// Whether spans are exported (an OTLP endpoint was configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            // The subscriber may be the thing that fails: say it where it is always seen.
            eprintln!("telemetry: exporting the last spans failed: {e}");
        }
    }
}

/// Installs the global subscriber: JSON logs, plus OTLP span export when an endpoint is
/// configured, with `service.name` = `service_name`. Panics if a subscriber is already
/// installed (as `tracing_subscriber`'s `init` does).
pub fn init(service_name: &str) -> Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FIBER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr);
    let (provider, exporter_error) = if otlp_configured() {
        match tracer_provider(service_name) {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name.to_owned()))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    // A broken exporter configuration must not stop the service: it runs without traces
    // and says why.
    if let Some(e) = exporter_error {
        tracing::error!(error = %e, "OpenTelemetry export disabled: the OTLP exporter cannot be built");
    }
    Guard { provider }
}

fn otlp_configured() -> bool {
    ENDPOINT_VARS
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

fn tracer_provider(
    service_name: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    // The batch processor exports from its own thread, off the request paths.
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// The `traceparent` of `span`, or `None` when spans are not exported (nothing to carry).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The span context a `traceparent` names, if it is well formed.
fn remote_context(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the remote span `traceparent` names. Call it before the span is
/// first entered. A malformed `traceparent` is ignored: the span starts a new trace.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = remote_context(traceparent) {
        // Fails only when spans are not exported or the span already started: no trace to
        // join either way.
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the remote span `traceparent` names (for work done on behalf of several
/// traces at once). A malformed `traceparent` is ignored.
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = remote_context(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_traceparent_is_ignored() {
        assert!(remote_context("").is_none());
        assert!(remote_context("00-zz-01").is_none());
        // All-zero trace id is invalid per W3C.
        assert!(
            remote_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        let cx = remote_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("a well-formed traceparent");
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn no_traceparent_without_an_exporter() {
        // No OpenTelemetry layer in this subscriber: nothing to carry.
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
        let span = tracing::info_span!("work");
        assert_eq!(traceparent(&span), None);
    }

    #[test]
    fn traceparent_round_trips_through_a_span() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);
        let remote = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = tracing::info_span!("child");
        set_parent(&child, remote);
        let carried = traceparent(&child).expect("an exported span has a traceparent");
        let parts: Vec<&str> = carried.split('-').collect();
        assert_eq!(parts.len(), 4, "{carried}");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
        assert_ne!(parts[2], "00f067aa0ba902b7", "its own span id");
        let root = tracing::info_span!("root");
        let other = traceparent(&root).unwrap();
        assert_ne!(other.split('-').nth(1), Some(parts[1]), "a new trace");
    }
}
