//! The probe's counters and the optional `/metrics` endpoint (Prometheus text format), in the
//! same `*_total` shape as the ingest service's and the ETL's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fiberstack_model::CheckKind;
use fiberstack_plumbing::metrics::{self, counter, gauge};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why samples were dropped; the `reason` label of `fiber_probe_samples_dropped_total`.
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

/// Counters shared by the checks, the buffer and the delivery; read at each scrape.
#[derive(Debug, Default)]
pub struct Stats {
    checks_run: [AtomicU64; 4],
    checks_failed: [AtomicU64; 4],
    dropped: [AtomicU64; 3],
    pub buffer_samples: AtomicU64,
    pub buffer_bytes: AtomicU64,
    pub push_attempts: AtomicU64,
    pub push_failures: AtomicU64,
    pub samples_delivered: AtomicU64,
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
}

#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

type Labels = Vec<(&'static str, &'static str)>;

fn labelled(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let family = Family::<Labels, prometheus_client::metrics::counter::Counter>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).inc_by(v);
    }
    family.encode(e.encode_descriptor(name, help, None, family.metric_type())?)
}

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        labelled(
            &mut e,
            "fiber_probe_checks",
            "Check rounds run, by kind",
            CheckKind::ALL
                .iter()
                .map(|k| (vec![("kind", k.as_str())], s.checks_run(*k))),
        )?;
        labelled(
            &mut e,
            "fiber_probe_checks_failed",
            "Check rounds whose sample is down, by kind",
            CheckKind::ALL
                .iter()
                .map(|k| (vec![("kind", k.as_str())], s.checks_failed(*k))),
        )?;
        labelled(
            &mut e,
            "fiber_probe_samples_dropped",
            "Samples that will never be delivered, by reason",
            DropReason::ALL
                .iter()
                .map(|r| (vec![("reason", r.as_str())], s.dropped_total(*r))),
        )?;
        gauge(
            &mut e,
            "fiber_probe_buffer_samples",
            "Samples in the disk buffer not yet accepted by the ingest service",
            &s.buffer_samples,
        )?;
        gauge(
            &mut e,
            "fiber_probe_buffer_bytes",
            "Bytes of the disk buffer's segment files",
            &s.buffer_bytes,
        )?;
        counter(
            &mut e,
            "fiber_probe_push_attempts",
            "Batches sent to an ingest URL",
            &s.push_attempts,
        )?;
        counter(
            &mut e,
            "fiber_probe_push_failures",
            "Batch sends that did not end in 202",
            &s.push_failures,
        )?;
        counter(
            &mut e,
            "fiber_probe_samples_delivered",
            "Samples the ingest service accepted",
            &s.samples_delivered,
        )
    }
}

/// The registry that renders [`Stats`].
pub fn registry(stats: Arc<Stats>) -> Registry {
    let mut registry = Registry::default();
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
                            "/metrics" => Response::builder()
                                .header("content-type", metrics::CONTENT_TYPE)
                                .body(Full::new(bytes::Bytes::from(metrics::encode(&registry)))),
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
