//! The probe's counters and the optional `/metrics` endpoint, in the data path's one shape
//! (see `fiberstack_plumbing::metrics`): received (samples measured), sent (accepted by the
//! ingest service), discarded, errors by stage and type, send duration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fiberstack_model::CheckKind;
use fiberstack_plumbing::metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

/// Why samples were dropped; the `reason` label of `fiber_probe_discarded_samples_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The disk buffer reached `buffer.maxBytes`; the oldest samples made room.
    BufferFull,
    /// The ingest service refused the sample as invalid; it would be refused again.
    Rejected,
    /// A record in the buffer failed its checksum (a torn write after a crash).
    Corrupt,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [Self::BufferFull, Self::Rejected, Self::Corrupt];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BufferFull => "buffer_full",
            Self::Rejected => "rejected",
            Self::Corrupt => "corrupt",
        }
    }
}

/// Why a send to an ingest URL failed; the `error_type` of
/// `fiber_probe_errors_total{stage="send"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No answer: connection refused or reset, timeout, name not resolved.
    Unreachable,
    /// 429 or 503: the ingest service asked to come back later.
    RetryLater,
    /// 400, 401, 403, 404, 413: the token, the URL or the probe's configuration is wrong.
    Refused,
    /// Any other answer (a 5xx, say).
    Failed,
}

impl SendError {
    pub const ALL: [SendError; 4] = [
        Self::Unreachable,
        Self::RetryLater,
        Self::Refused,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::RetryLater => "retry_later",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// Counters shared by the checks, the buffer and the delivery; read at each scrape.
#[derive(Debug)]
pub struct Stats {
    checks_run: [AtomicU64; CheckKind::ALL.len()],
    checks_failed: [AtomicU64; CheckKind::ALL.len()],
    dropped: [AtomicU64; 3],
    send_errors: [AtomicU64; 4],
    pub buffer_samples: AtomicU64,
    pub buffer_bytes: AtomicU64,
    /// Samples the ingest service accepted.
    pub samples_sent: AtomicU64,
    /// Every attempt to send a batch, however it ended.
    pub send_duration: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            checks_run: Default::default(),
            checks_failed: Default::default(),
            dropped: Default::default(),
            send_errors: Default::default(),
            buffer_samples: AtomicU64::new(0),
            buffer_bytes: AtomicU64::new(0),
            samples_sent: AtomicU64::new(0),
            send_duration: metrics::send_duration(),
        }
    }
}

fn kind_index(kind: CheckKind) -> usize {
    CheckKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

fn drop_index(reason: DropReason) -> usize {
    DropReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

impl Stats {
    pub fn check_done(&self, kind: CheckKind, up: bool) {
        self.checks_run[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
        if !up {
            self.checks_failed[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn checks_run(&self, kind: CheckKind) -> u64 {
        self.checks_run[kind_index(kind)].load(Ordering::Relaxed)
    }

    pub fn checks_failed(&self, kind: CheckKind) -> u64 {
        self.checks_failed[kind_index(kind)].load(Ordering::Relaxed)
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[drop_index(reason)].fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped[drop_index(reason)].load(Ordering::Relaxed)
    }

    pub fn send_failed(&self, error: SendError) {
        let i = SendError::ALL.iter().position(|e| *e == error).unwrap_or(0);
        self.send_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn send_errors(&self, error: SendError) -> u64 {
        let i = SendError::ALL.iter().position(|e| *e == error).unwrap_or(0);
        self.send_errors[i].load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        metrics::labelled_counter(
            &mut e,
            "fiber_probe_received_samples",
            "Samples measured (one per check round), by kind",
            CheckKind::ALL
                .iter()
                .map(|k| (vec![("kind", k.as_str())], s.checks_run(*k))),
        )?;
        metrics::labelled_counter(
            &mut e,
            "fiber_probe_down_samples",
            "Samples measured whose target was down, by kind",
            CheckKind::ALL
                .iter()
                .map(|k| (vec![("kind", k.as_str())], s.checks_failed(*k))),
        )?;
        metrics::counter(
            &mut e,
            "fiber_probe_sent_samples",
            "Samples the ingest service accepted",
            &s.samples_sent,
        )?;
        metrics::labelled_counter(
            &mut e,
            "fiber_probe_discarded_samples",
            "Samples that will never be delivered, by reason",
            DropReason::ALL
                .iter()
                .map(|r| (vec![("reason", r.as_str())], s.dropped_total(*r))),
        )?;
        metrics::labelled_counter(
            &mut e,
            "fiber_probe_errors",
            "Failed attempts to send a batch to an ingest URL (retried), by type",
            SendError::ALL.iter().map(|t| {
                (
                    vec![("stage", "send"), ("error_type", t.as_str())],
                    s.send_errors(*t),
                )
            }),
        )?;
        metrics::gauge(
            &mut e,
            "fiber_probe_buffer_samples",
            "Samples in the disk buffer not yet accepted by the ingest service",
            &s.buffer_samples,
        )?;
        metrics::gauge(
            &mut e,
            "fiber_probe_buffer_bytes",
            "Bytes of the disk buffer's segment files",
            &s.buffer_bytes,
        )
    }
}

/// The registry that renders [`Stats`].
pub fn registry(stats: Arc<Stats>) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "fiber_probe_send_duration_seconds",
        "Attempts to send a batch to an ingest URL, however they ended",
        stats.send_duration.clone(),
    );
    registry.register_collector(Box::new(StatsCollector(stats)));
    registry
}

/// Serves `GET /metrics` (and `/healthz`) on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, stats: Arc<Stats>) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper::{Response, StatusCode};

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics");
    let registry = Arc::new(registry(stats));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move {
                        let response = match req.uri().path() {
                            "/metrics" => {
                                let accept = req
                                    .headers()
                                    .get(hyper::header::ACCEPT)
                                    .and_then(|v| v.to_str().ok());
                                let (content_type, text) = metrics::exposition(&registry, accept);
                                Response::builder()
                                    .header("content-type", content_type)
                                    .body(Full::new(bytes::Bytes::from(text)))
                            }
                            "/healthz" => {
                                Response::builder().body(Full::new(bytes::Bytes::from("ok")))
                            }
                            _ => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(bytes::Bytes::new())),
                        };
                        Ok::<_, hyper::http::Error>(
                            response.expect("static response parts are valid"),
                        )
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
