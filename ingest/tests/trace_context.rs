//! Trace context through ingest: the `traceparent` a probe sends becomes the parent of the
//! request's span, and that span's context is stored with the stream entry for the ETL.
//! Real HTTP and Redis; spans go to an in-process OpenTelemetry layer (no exporter needed
//! to create them), installed per test as the thread's subscriber.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use fiber_ingest::api::{AppState, router};
use fiber_ingest::auth::Token;
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiberstack_e2e::{LocalEnv, unique_name};
use fiberstack_model::stream::{BATCH_FIELD, TRACEPARENT_FIELD, samples_stream};
use fiberstack_model::{CheckKind, Sample};
use opentelemetry::trace::TracerProvider as _;
use redis::AsyncCommands;
use tracing_subscriber::layer::SubscriberExt;

const TOKEN: &str = "trace-test-token-0123456789";
const REMOTE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Server {
    url: String,
    region: String,
    redis: redis::aio::ConnectionManager,
}

async fn serve() -> Result<Server> {
    let env = LocalEnv::load()?;
    let redis = fiber_ingest::stream::connect(&env.redis_url).await?;
    let region = unique_name("trace-test");
    let writer = StreamWriter::new(redis.clone(), &region, 1_000);
    let state = AppState::new(
        &region,
        Token::new(TOKEN).unwrap(),
        RateLimiter::new(100.0, 100),
        writer,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    // Spawned on this test's single-threaded runtime: the handler's spans reach the
    // subscriber the test set for this thread.
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(state))).await });
    Ok(Server {
        url: format!("http://{addr}"),
        region,
        redis,
    })
}

impl Server {
    /// Posts a one-sample batch; returns the `traceparent` stored with its stream entry.
    async fn post(&mut self, traceparent: Option<&str>) -> Result<Option<String>> {
        let mut batch = fiberstack_e2e::batch(
            "gh-accra-1",
            vec![Sample {
                latency_ms: Some(1.5),
                address: "127.0.0.1:5432".into(),
                ..Sample::new(chrono::Utc::now(), "db", CheckKind::Tcp, true)
            }],
        );
        batch.region = self.region.clone();
        let mut request = reqwest::Client::new()
            .post(format!("{}/api/v1/samples", self.url))
            .header("authorization", format!("Bearer {TOKEN}"))
            .json(&batch);
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        let response = request.send().await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        anyhow::ensure!(
            status == 202 && body["accepted"] == 1,
            "answered {status} {body}"
        );
        let reply: redis::streams::StreamRangeReply = self
            .redis
            .xrevrange_count(samples_stream(&self.region), "+", "-", 1)
            .await?;
        let entry = reply.ids.first().expect("the entry just appended");
        assert!(entry.map.contains_key(BATCH_FIELD));
        Ok(entry.get(TRACEPARENT_FIELD))
    }

    async fn clean(mut self) -> Result<()> {
        let _: () = self.redis.del(samples_stream(&self.region)).await?;
        Ok(())
    }
}

fn trace_and_span(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test]
async fn the_entry_carries_the_request_span_child_of_the_probes() -> Result<()> {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
    );
    let mut server = serve().await?;

    let stored = server
        .post(Some(REMOTE))
        .await?
        .expect("a traceparent stored");
    let (trace, span) = trace_and_span(&stored);
    let (remote_trace, remote_span) = trace_and_span(REMOTE);
    assert_eq!(trace, remote_trace, "the probe's trace continues");
    assert_ne!(span, remote_span, "ingest's own span, not the probe's");

    // No (or a malformed) traceparent: the request starts its own trace.
    for sent in [None, Some("00-garbage")] {
        let stored = server.post(sent).await?.expect("a traceparent stored");
        let (trace, _) = trace_and_span(&stored);
        assert_ne!(trace, remote_trace, "{sent:?}");
        assert_ne!(trace, "0".repeat(32), "{sent:?}");
    }
    server.clean().await
}

#[tokio::test]
async fn without_tracing_no_context_is_stored() -> Result<()> {
    // Logging only, as fiber-ingest runs without an OTLP endpoint.
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let mut server = serve().await?;
    assert_eq!(server.post(Some(REMOTE)).await?, None);
    assert_eq!(server.post(None).await?, None);
    server.clean().await
}
