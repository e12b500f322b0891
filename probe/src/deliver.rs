//! Delivery: batches from the disk buffer to `POST /api/v1/samples`, in the binary encoding
//! (`fiberstack_model::binary`; JSON to an ingest that answers 415, one from before it), gzip,
//! bearer token.
//!
//! A batch leaves once `batchMaxSamples` are waiting or its oldest sample has waited
//! `batchMaxDelay`. The URLs are tried in order (regional first, then fallbacks). A URL that
//! failed is left alone until its own time to retry: the `Retry-After` it sent with 429/503,
//! else an exponential backoff with full jitter (AWS's "full jitter": a uniform wait between
//! zero and the capped exponential, which spreads a fleet's retries after an outage). Only a
//! 202 moves the buffer's cursor; the samples it names as rejected are dropped and counted,
//! never sent again. 400 and 401 are configuration or data errors: logged loudly and
//! retried only at the longest backoff, so a fixed token or configuration is picked up
//! without a restart and nothing spins.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fiberstack_model::{Batch, Rejection};
use fiberstack_plumbing::backoff::Backoff;
use http_body_util::Full;
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::buffer::{Buffer, Pending};
use crate::config::Settings;
use crate::metrics::{DropReason, SendError, Stats};

/// First backoff step; doubled per consecutive failure up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The wait before retrying a URL that failed: full jitter from zero to
/// `min(BACKOFF_MAX, BACKOFF_BASE · 2^failures)`.
pub const BACKOFF: Backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
/// The longest `Retry-After` obeyed; a server asking for more is retried after this.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);
/// Longest a single POST may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The ingest path appended to a bare base URL.
pub const SAMPLES_PATH: &str = "/api/v1/samples";

/// The 202 body.
#[derive(Debug, Deserialize)]
struct Accepted {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    rejected: Vec<Rejection>,
}

/// The endpoint for a configured URL: a base URL gets [`SAMPLES_PATH`]; a URL with a path is
/// used as it is.
pub fn endpoint(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.path() == "/" || u.path().is_empty() => {
            format!("{}{SAMPLES_PATH}", url.trim_end_matches('/'))
        }
        _ => url.to_string(),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by fiber-ingest; it falls back
/// to the backoff).
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// What one attempt at one URL came to.
enum Outcome {
    Accepted(Accepted),
    /// 415 to a binary body: an ingest from before the binary encoding. Send it JSON.
    BinaryRefused,
    /// Try this URL again no earlier than after the wait.
    RetryAfter(Duration),
    /// Failed; retry after the backoff (or the longest backoff when `config_error`).
    Failed {
        config_error: bool,
        error: SendError,
    },
}

/// Moves samples from the buffer to the ingest service until told to stop.
pub struct Deliverer {
    buffer: Arc<Mutex<Buffer>>,
    settings: watch::Receiver<Arc<Settings>>,
    stats: Arc<Stats>,
    /// Signalled on every append to the buffer.
    appended: Arc<Notify>,
    tls: Arc<rustls::ClientConfig>,
    /// The TLS settings with `ingest.caFile`'s authorities, and the file's content they were
    /// built from.
    ca: Option<TrustedCa>,
    /// What was last wrong with `ingest.caFile`, said once per change.
    ca_problem: Option<String>,
    failures: u32,
    next_try: Vec<Instant>,
    /// Per URL: it answered 415 to a binary body (an ingest from before the binary
    /// encoding), so it is sent JSON from then on.
    json_only: Vec<bool>,
}

struct TrustedCa {
    path: PathBuf,
    pem: Vec<u8>,
    tls: Arc<rustls::ClientConfig>,
}

impl Deliverer {
    pub fn new(
        buffer: Arc<Mutex<Buffer>>,
        settings: watch::Receiver<Arc<Settings>>,
        stats: Arc<Stats>,
        appended: Arc<Notify>,
    ) -> Self {
        Self {
            buffer,
            settings,
            stats,
            appended,
            tls: crate::connect::tls_config(),
            ca: None,
            ca_problem: None,
            failures: 0,
            next_try: Vec::new(),
            json_only: Vec::new(),
        }
    }

    fn pending(&self) -> u64 {
        self.buffer.lock().expect("buffer lock").pending()
    }

    /// Runs until `stop` turns true, then tries for at most `flush_for` to send what is
    /// left, and returns. What is not accepted by then stays in the buffer.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>, flush_for: Duration) {
        let mut oldest_since: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            let settings = self.settings.borrow().clone();
            let ingest = &settings.config.ingest;
            let pending = self.pending();
            if pending == 0 {
                oldest_since = None;
                tokio::select! {
                    _ = self.appended.notified() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let since = *oldest_since.get_or_insert_with(Instant::now);
            let due = since + ingest.batch_max_delay.as_std();
            if (pending as usize) < ingest.batch_max_samples && Instant::now() < due {
                tokio::select! {
                    _ = self.appended.notified() => {}
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            match self.send_one(&settings, None).await {
                Ok(()) => {
                    // A full batch left: a backlog drains at once. Less than one: mostly
                    // samples that came in during the send, which start a new batch rather
                    // than leave in a small POST of their own.
                    let left = self.pending();
                    oldest_since = if left == 0 {
                        None
                    } else if left as usize >= ingest.batch_max_samples {
                        Some(since)
                    } else {
                        Some(Instant::now())
                    };
                }
                Err(wait_until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(wait_until) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        self.flush(flush_for).await;
    }

    async fn flush(&mut self, flush_for: Duration) {
        let deadline = Instant::now() + flush_for;
        let at_start = self.pending();
        // At shutdown every URL gets a chance, whatever its backoff said.
        self.next_try.clear();
        while self.pending() > 0 && Instant::now() < deadline {
            let settings = self.settings.borrow().clone();
            match self.send_one(&settings, Some(deadline)).await {
                Ok(()) => {}
                Err(wait_until) => {
                    if wait_until >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(wait_until).await;
                }
            }
        }
        let left = self.pending();
        if left > 0 {
            tracing::info!(
                samples = left,
                "stopping with samples still buffered; they are sent after the next start"
            );
        } else if at_start > 0 {
            // Said at info, unlike each batch: how a stop ended is worth a line either way.
            tracing::info!(
                samples = at_start,
                "stopping with everything buffered delivered"
            );
        }
    }

    /// The TLS settings for this send: the system's roots, plus the authorities of
    /// `ingest.caFile` when set. The file is read at every send (a few KiB) so that a renewed
    /// authority in its Secret is taken without a restart; a file that cannot be read or
    /// parsed keeps the last good one of the same path, and without one nothing is sent
    /// (the samples wait in the buffer).
    fn tls_for(&mut self, path: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
        let Some(path) = path else {
            return Ok(self.tls.clone());
        };
        let cached = self.ca.as_ref().filter(|c| c.path == path);
        let built = match std::fs::read(path) {
            Ok(pem) if cached.is_some_and(|c| c.pem == pem) => Ok(None),
            Ok(pem) => crate::connect::tls_config_with(&pem)
                .map(|tls| Some((pem, tls)))
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        };
        let kept = cached.map(|c| c.tls.clone());
        match (built, kept) {
            (Ok(None), Some(tls)) => {
                self.ca_problem = None;
                Ok(tls)
            }
            (Ok(Some((pem, tls))), _) => {
                tracing::info!(path = %path.display(), "trusting the certificate authorities of ingest.caFile");
                self.ca_problem = None;
                self.ca = Some(TrustedCa {
                    path: path.to_owned(),
                    pem,
                    tls: tls.clone(),
                });
                Ok(tls)
            }
            (Err(e), Some(tls)) => {
                if self.ca_problem.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "ingest.caFile is not usable now; keeping the authorities read before");
                    self.ca_problem = Some(e);
                }
                Ok(tls)
            }
            (Err(e), None) => Err(e),
            (Ok(None), None) => unreachable!("unchanged content implies a cached authority"),
        }
    }

    /// Sends one batch from the buffer's head. `Err` holds when to try again.
    async fn send_one(
        &mut self,
        settings: &Settings,
        deadline: Option<Instant>,
    ) -> Result<(), Instant> {
        let config = &settings.config;
        let urls = &config.ingest.urls;
        if self.next_try.len() != urls.len() {
            self.next_try = vec![Instant::now(); urls.len()];
        }
        if self.json_only.len() != urls.len() {
            self.json_only = vec![false; urls.len()];
        }
        let pending: Pending = match self
            .buffer
            .lock()
            .expect("buffer lock")
            .peek(config.ingest.batch_max_samples)
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, kind = e.kind(), "cannot read the buffer");
                return Err(Instant::now() + BACKOFF_MAX);
            }
        };
        if pending.samples.is_empty() {
            // Only corrupt records were left; move past them.
            let _ = self.buffer.lock().expect("buffer lock").ack(pending.end);
            return Ok(());
        }
        let count = pending.samples.len();
        let batch = Batch {
            probe: config.probe.clone(),
            region: config.region.clone(),
            country: config.country.clone(),
            node: config.node.clone(),
            agent_version: crate::AGENT_VERSION.to_string(),
            samples: pending.samples,
        };
        // The binary encoding (a third of JSON's bytes, no text for ingest to parse), JSON
        // only for an ingest that does not take it.
        let binary = Bytes::from(gzip(&fiberstack_model::binary::encode(&batch)));
        let mut json: Option<Bytes> = None;
        let token = match settings.token() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the ingest token; not sending");
                return Err(Instant::now() + BACKOFF_MAX);
            }
        };
        let tls = match self.tls_for(config.ingest.ca_file.as_deref()) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(error = %e, "cannot use ingest.caFile, the authority of the ingest's certificate; not sending");
                return Err(Instant::now() + BACKOFF_MAX);
            }
        };
        for (i, url) in urls.iter().enumerate() {
            if self.next_try[i] > Instant::now() {
                continue;
            }
            let timeout = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => REQUEST_TIMEOUT,
            };
            let attempt = Instant::now();
            // One span per attempt, its context sent along so that ingest's handling (and
            // the ETL's write) join the same trace.
            let span = tracing::info_span!("deliver_batch", url, samples = count);
            let traceparent = fiberstack_telemetry::traceparent(&span);
            let mut outcome = Outcome::BinaryRefused;
            for as_json in [self.json_only[i], true] {
                let (body, content_type) = if as_json {
                    let body = json.get_or_insert_with(|| {
                        Bytes::from(gzip(
                            &serde_json::to_vec(&batch).expect("a batch always serializes"),
                        ))
                    });
                    (body.clone(), "application/json")
                } else {
                    (binary.clone(), fiberstack_model::binary::MEDIA_TYPE)
                };
                outcome = self
                    .post(
                        &tls,
                        url,
                        (body, content_type),
                        token.as_deref(),
                        timeout,
                        traceparent.clone(),
                    )
                    .instrument(span.clone())
                    .await;
                if !matches!(outcome, Outcome::BinaryRefused) || as_json {
                    break;
                }
                tracing::info!(
                    url,
                    "ingest does not take the binary batch (an older version); sending it JSON"
                );
                self.json_only[i] = true;
            }
            self.stats
                .send_duration
                .observe(attempt.elapsed().as_secs_f64());
            match outcome {
                Outcome::Accepted(answer) => {
                    self.failures = 0;
                    self.next_try[i] = Instant::now();
                    let rejected = answer.rejected.len() as u64;
                    if let Err(e) = self.buffer.lock().expect("buffer lock").ack(pending.end) {
                        tracing::error!(error = %e, kind = e.kind(), "cannot move the buffer's cursor; the batch may be sent again");
                    }
                    self.stats
                        .samples_sent
                        .fetch_add(answer.accepted, Ordering::Relaxed);
                    if rejected > 0 {
                        self.stats.dropped(DropReason::Rejected, rejected);
                        for r in answer.rejected.iter().take(5) {
                            tracing::warn!(index = r.index, error = %r.error, "the ingest service rejected a sample as invalid; dropped");
                        }
                        tracing::warn!(
                            rejected,
                            batch = count,
                            "samples rejected as invalid and dropped (not retried)"
                        );
                    }
                    tracing::debug!(
                        url,
                        samples = count,
                        accepted = answer.accepted,
                        "batch delivered"
                    );
                    return Ok(());
                }
                Outcome::BinaryRefused => {
                    // Not reached: a refused binary body is sent again as JSON above, and a
                    // 415 to JSON is `Failed`. Treated as a refusal all the same.
                    self.stats.send_failed(SendError::Refused);
                    self.next_try[i] = Instant::now() + BACKOFF_MAX;
                }
                Outcome::RetryAfter(wait) => {
                    self.stats.send_failed(SendError::RetryLater);
                    self.next_try[i] = Instant::now() + wait;
                }
                Outcome::Failed {
                    config_error,
                    error,
                } => {
                    self.stats.send_failed(error);
                    let wait = if config_error {
                        BACKOFF_MAX
                    } else {
                        BACKOFF.delay(self.failures)
                    };
                    self.next_try[i] = Instant::now() + wait;
                }
            }
        }
        self.failures = self.failures.saturating_add(1);
        Err(self
            .next_try
            .iter()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + BACKOFF_MAX))
    }

    async fn post(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        url: &str,
        (body, content_type): (Bytes, &str),
        token: Option<&str>,
        timeout: Duration,
        traceparent: Option<String>,
    ) -> Outcome {
        let endpoint = endpoint(url);
        let mut request = hyper::Request::post(&endpoint)
            .header("content-type", content_type)
            .header("content-encoding", "gzip")
            .header(
                "user-agent",
                concat!("fiber-probe/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        if let Some(tp) = traceparent {
            request = request.header(fiberstack_telemetry::TRACEPARENT, tp);
        }
        let request = match request.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(url, error = %e, "ingest URL or token cannot form a request");
                return Outcome::Failed {
                    config_error: true,
                    error: SendError::Refused,
                };
            }
        };
        let response = match crate::connect::send(request, tls, timeout, 64 << 10).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(url, error = %e, kind = e.kind(), "ingest unreachable");
                return Outcome::Failed {
                    config_error: false,
                    error: SendError::Unreachable,
                };
            }
        };
        let text = || {
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(500)
                .collect::<String>()
        };
        match response.status {
            202 | 200 => match serde_json::from_slice::<Accepted>(&response.body) {
                Ok(a) => Outcome::Accepted(a),
                Err(e) => {
                    tracing::warn!(url, error = %e, body = %text(), "ingest answered 202 with a body that is not the contract's; treating every sample as accepted");
                    Outcome::Accepted(Accepted {
                        accepted: 0,
                        rejected: Vec::new(),
                    })
                }
            },
            429 | 503 => {
                let wait =
                    retry_after(&response.headers).unwrap_or_else(|| BACKOFF.delay(self.failures));
                tracing::warn!(
                    url,
                    status = response.status,
                    retry_in_ms = wait.as_millis() as u64,
                    "ingest asks to retry later"
                );
                Outcome::RetryAfter(wait)
            }
            401 => {
                tracing::error!(url, status = response.status, body = %text(), "ingest refused the token: check FIBER_TOKEN / FIBER_TOKEN_FILE / ingest.tokenFile; retrying every minute");
                Outcome::Failed {
                    config_error: true,
                    error: SendError::Refused,
                }
            }
            403 => {
                // The token was taken but this probe may not write what it sent: a batch of
                // another region than the ingest's, or (with the pod's ServiceAccount token)
                // of another node or FiberProbe than the pod's. The body names both.
                tracing::error!(url, status = response.status, body = %text(), "ingest forbids this batch: its region, node or probe is not what the ingest or the token allows (the configuration's region and ingest URL disagree, or NODE_NAME is not the pod's node); retrying every minute");
                Outcome::Failed {
                    config_error: true,
                    error: SendError::Refused,
                }
            }
            415 if content_type == fiberstack_model::binary::MEDIA_TYPE => Outcome::BinaryRefused,
            400 | 413 | 404 | 415 => {
                tracing::error!(url, status = response.status, body = %text(), "ingest refused the batch as a whole (configuration: probe/region/country/node, or the URL); retrying every minute");
                Outcome::Failed {
                    config_error: true,
                    error: SendError::Refused,
                }
            }
            status => {
                tracing::warn!(url, status, body = %text(), "ingest failed");
                Outcome::Failed {
                    config_error: false,
                    error: SendError::Failed,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("http://i:8080"), "http://i:8080/api/v1/samples");
        assert_eq!(endpoint("http://i:8080/"), "http://i:8080/api/v1/samples");
        assert_eq!(endpoint("https://i/custom/path"), "https://i/custom/path");
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        for failures in 0..40 {
            let cap = BACKOFF_BASE
                .saturating_mul(1 << failures.min(16))
                .min(BACKOFF_MAX);
            for _ in 0..50 {
                assert!(BACKOFF.delay(failures) <= cap);
            }
        }
        // Spread, not a constant: 200 draws under a 60 s cap are not all alike.
        let draws: std::collections::HashSet<u128> =
            (0..200).map(|_| BACKOFF.delay(20).as_millis()).collect();
        assert!(draws.len() > 100);
    }
}
