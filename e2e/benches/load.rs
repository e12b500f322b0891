//! Load benchmark of the data path, on this machine, against the real parts of `make env-up`.
//! Three measurements in one run, each on a fresh PostgreSQL database with `fiber-etl run`
//! workers (the release builds the images ship):
//!
//! 1. **Ceiling**: the ETL alone (binary COPY) on rows already in a stream — no HTTP, no
//!    ingest — the database's own limit on this machine.
//! 2. **Saturation**: N simulated probes POST batches to a `fiber-ingest` process as fast as
//!    they are answered, for a fixed time, with ingest's admission on (`--max-backlog-age`,
//!    default 10 s); a refused probe waits its Retry-After, as fiber-probe does. Prints
//!    accepted and end-to-end (stored) samples/s, their ratio to the ceiling, freshness
//!    (202 → stored) p50/p95/max and the refusals (503/429, with Retry-After or not).
//! 3. **Half load**: the same probes paced to half the saturation's end-to-end rate: HTTP
//!    p50/p99 and freshness p50/p95.
//!
//! Also ingest's own figures from its `/metrics`: the mean append to Redis (one round trip:
//! the admission check's EVAL and the XADD in one pipeline) and Redis' EVAL calls per
//! accepted request; and the ETL workers' writes (transactions, entries each, mean time).
//! Prints figures and, last, one JSON line; never fails on time.
//!
//!   make bench   (or: cargo bench -p fiberstack-e2e --bench load)
//!   FIBER_LOAD_PROBES=20 FIBER_LOAD_SECS=20 FIBER_LOAD_BATCH=500 FIBER_LOAD_CONSUMERS=2 make bench
//!
//! `FIBER_LOAD_RATE=25000` paces the third run to that many samples/s instead of half the
//! saturation; `FIBER_LOAD_MAX_AGE_MS` sets ingest's admission age (0: off).
//!
//! The ETL writer alone (binary COPY against the conflict-tolerant INSERT, no stream) is
//! fiber-etl's own bench: `cargo bench -p fiber-etl --bench writer`.
//!
//! Figures on the 2-core machine, everything co-located and shared with other builds and
//! benches (the ceiling moved 109k–157k samples/s between runs: compare within a run):
//!
//! | run (20 probes × 500, 20 s, 2 workers) | before | admission in a pipeline | + body forwarded, plain parse |
//! |---|---|---|---|
//! | ceiling (ETL alone, 250k rows) | 109,335/s | 117,956/s | 101,664/s |
//! | saturation: accepted | 128,741/s | 174,086/s | 199,051/s |
//! | saturation: end to end (÷ ceiling) | 78,842/s (0.72) | 103,144/s (0.87) | 103,814/s (1.02) |
//! | saturation: freshness p95 / max | 15.5 s / 16.2 s | 16.9 s / 17.6 s | 21.1 s / 22.6 s |
//! | saturation: refused (all with Retry-After), first at | 20, 16.4 s | 20, 16.2 s | 20, 15.8 s |
//! | half load (paced): HTTP p50 / p99 | 2.54 / 19.24 ms (39k/s) | 1.89 / 8.20 ms (52k/s) | 2.21 / 33.07 ms (52k/s) |
//! | half load: freshness p95 | 27 ms | 23 ms | 105 ms |
//! | ingest's append to Redis, mean, saturation / half | 55.2 / 2.17 ms | 32.4 / 1.26 ms | 19.4 / 3.19 ms |
//! | ingest CPU per stored sample (saturation) | – | 1.88 µs | 0.97 µs |
//!
//! "Before": the admission check and the XADD in one Lua script taking the batch as an
//! argument: Redis spent 515 µs per EVALSHA (the 120 KB batch copied into Lua and back, plus
//! the oldest unread entry read whole) against 24 µs per XADD. Now the check is a small EVAL
//! pipelined before a plain XADD (one round trip); a refused entry is deleted again (XDEL).
//! Then ingest appends a body of which nothing was refused as it came (no second encoding)
//! and parses with plain serde_json (the path-tracking parse only for a refused body's
//! message): its CPU per sample halved. CPU per stored sample at saturation, last run:
//! simulated probes 0.84 µs, ingest 0.97 µs, ETL workers 1.31 µs, Redis 0.78 µs, PostgreSQL
//! the rest: on a shared 2-core machine the accept path takes CPU the database would use.
//! The latency and freshness figures at half load swing with the other work on the machine
//! (p99 8–33 ms between the last two runs; ingest's own p99 bucket ≤ 50 ms, p50 ≤ 2.5 ms).
//! Freshness at saturation is about the admission age × accepted ÷ stored rate (10 s × ~2):
//! the age is that of the oldest unread entry, not of the wait a new one will have.
//!
//! 2026-11-30, quiet machine: the simulated probes write each body from one encoding
//! (`BatchBodies`: 25 formatted times per batch instead of 500 samples encoded), their CPU
//! per stored sample 0.77 → 0.27 µs. Ceiling 229,190/s; saturation accepted 360,207/s, end
//! to end 170,871/s (0.75; was 0.72–0.73), freshness max 28.8 s (the faster client fills the
//! 10 s admission age twice as fast: see above); half load (85,435/s) HTTP p50 0.99 ms, p99
//! 5.20 ms. A scheduler trace of ingest's threads over 8 s of the half-load run (`perf sched
//! timehist`): 13 wake-ups waited 1.1–2.7 ms for a CPU while PostgreSQL (4.4 s of CPU in
//! those 8 s), ingest and the client (3.1 s), the ETL (1.8 s), Redis (0.7 s) and the local
//! Kubernetes control plane and kubelet (1.6 s) kept the 2 cores 74 % busy: the p99 here is
//! the scheduler's, not ingest's.
//!
//! 2026-12-01: the binary batch (`fiberstack_model::binary`; the probes send it, the stream
//! carries it). CPU per stored sample at saturation, besides PostgreSQL, 2.97 → ~1.55 µs
//! (ingest 0.88 → 0.33, ETL workers 1.16 → 0.60, Redis 0.68 → 0.32; probes 0.27); the
//! ceiling's ETL 0.5–0.7 µs. Five runs: ceiling 232,713–245,241/s, end to end 164,416–
//! 189,239/s (0.71–0.78 ×; JSON in the same code 0.65 ×): halving the accept path's CPU did not move
//! the ratio; the database sharing the 2 cores with it sets it (an ETL write of 10,000 rows takes 95–108 ms at
//! saturation against 75 ms alone; a ceiling over 4.3M rows — the saturation run's size —
//! measured 246,874/s, no slower than over 250,000). Ingest accepted 3.7 × what the ETL
//! stored and the oldest unread entry's age alone let freshness reach 62 s; the admission
//! now also refuses when a new batch would wait over the limit at the speed the ETL gets
//! through the stream: freshness max 10.4–21.0 s. Half load: HTTP p50 0.43–0.88 ms, p99
//! 3.28–4.67 ms (JSON 4.15), freshness p95 40–61 ms.
//!
//! 2026-12-01, later: the cores were 40 % idle at saturation. The ETL's node upsert came
//! first in each write's transaction and its row locks made the two workers write one at a
//! time; it now comes last (just before the commit). Ceiling 240,558 → 295,858–368,602/s,
//! end to end 147,644 → 206,146–232,473/s (0.57–0.70 × the higher ceiling). Ingest's
//! expected-wait estimate no longer grows while it refuses (the unread stretch ends at its
//! last accepted append; refusal stretches are not counted as stream read): saturation
//! freshness max 6.6–9.2 s. Half load: HTTP p99 3.26–4.20 ms, freshness p95 46–66 ms.
//! Redis' `INFO commandstats` over a run: EVAL (the admission check) 80 µs per call against
//! 27 µs per XADD; reading the oldest unread entry (a whole batch) into Lua is most of it
//! (37 µs of 39 with a 35 KB entry, measured alone).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use fiberstack_e2e::bench::{BatchBodies, batch, commit, setting};
use fiberstack_e2e::{
    LocalEnv, ReservedPort, etl, terminate, unique_name, wait_for, workspace_binary,
};
use fiberstack_model::Batch;
use fiberstack_model::stream::{BATCH_FIELD, dead_letter_stream, encode_batch, samples_stream};
use redis::AsyncCommands;
use serde_json::json;
use tokio::sync::{Mutex, watch};

const TOKEN: &str = "load-test-token-0123456789";
/// Rows of the ETL-alone run at most: they sit in Redis at once (about 250 bytes each).
const CEILING_ROWS: u64 = 250_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The processes of a run, stopped with SIGTERM at the end (killed if they do not stop).
struct Processes(Vec<Child>);

impl Processes {
    fn spawn(&mut self, command: &mut Command) -> Result<()> {
        let child = command
            .env("FIBER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.0.push(child);
        Ok(())
    }

    async fn stop(mut self) {
        for child in &mut self.0 {
            let _ = terminate(child, Duration::from_secs(30)).await;
        }
        self.0.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `fiber-etl run` workers of `region` writing into `database`; their metrics ports.
fn start_consumers(
    processes: &mut Processes,
    env: &LocalEnv,
    region: &str,
    database: &str,
    count: usize,
) -> Result<Vec<ReservedPort>> {
    let mut ports = Vec::new();
    for i in 0..count {
        let port = ReservedPort::new()?;
        processes.spawn(
            Command::new(workspace_binary("fiber-etl")?)
                .args(["run", "--region", region, "--database-url", database])
                .args(["--consumer", &format!("bench-{i}"), "--read-count", "20"])
                .args(["--metrics-listen", &port.addr().to_string()])
                // Rollup maintenance (plain PostgreSQL) stays out of the measured minutes.
                .args(["--maintenance-secs", "3600"])
                .env("REDIS_URL", &env.redis_url),
        )?;
        ports.push(port);
    }
    Ok(ports)
}

/// Samples new to the database, summed over the workers' `/metrics`; `None` while one does
/// not answer.
async fn landed(client: &reqwest::Client, ports: &[ReservedPort]) -> Option<u64> {
    let mut total = 0;
    for port in ports {
        let text = client
            .get(format!("{}/metrics", port.url()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("fiber_etl_sent_new_samples_total "))?
            .trim()
            .parse::<u64>()
            .ok()?;
    }
    Some(total)
}

async fn wait_landed(client: &reqwest::Client, ports: &[ReservedPort], what: &str) -> Result<()> {
    wait_for(
        what,
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            Ok(landed(client, ports)
                .await
                .ok_or_else(|| "not answering yet".to_owned()))
        },
    )
    .await?;
    Ok(())
}

/// What one run of probes against ingest measured.
struct Load {
    /// Samples answered 202, and over how long the probes sent.
    accepted: u64,
    load_secs: f64,
    /// Samples stored, and the time from the first request to the last stored.
    stored: u64,
    e2e_secs: f64,
    /// HTTP latency of the accepted requests, ms, sorted.
    latencies: Vec<f64>,
    /// 202 → stored, ms, sorted.
    freshness: Vec<f64>,
    /// Requests refused with 429/503, those of them with a Retry-After, other failures.
    refused: u64,
    refused_with_retry_after: u64,
    failed: u64,
    /// Seconds after the start of the first refusal, if any.
    first_refusal_secs: Option<f64>,
    /// Ingest's mean append (one script call) to Redis, ms, from its `/metrics`.
    append_mean_ms: f64,
    /// Redis' EVAL calls (ingest's admission check, pipelined with its XADD: one round trip
    /// per request) during the run per accepted request; other clients of the same Redis add
    /// to it.
    eval_per_request: f64,
    /// The ETL's writes: see [`etl_writes`].
    writes: (f64, f64, f64),
    /// CPU µs per stored sample of: the simulated probes, ingest, the ETL workers, Redis.
    cpu_us: [f64; 4],
    /// Ingest's own p50 and p99 of its 202s (bucket bounds, ms): see [`ingest_quantile_ms`].
    ingest_p50_ms: f64,
    ingest_p99_ms: f64,
}

impl Load {
    fn accepted_rate(&self) -> f64 {
        self.accepted as f64 / self.load_secs
    }

    fn e2e_rate(&self) -> f64 {
        self.stored as f64 / self.e2e_secs
    }
}

struct Settings {
    probes: usize,
    secs: u64,
    size: usize,
    consumers: usize,
    max_age_ms: u64,
    /// The simulated probes send the binary batch, as fiber-probe does (`FIBER_LOAD_ENCODING=json`:
    /// JSON, as an older probe or another client does).
    binary: bool,
}

/// A `fiber_ingest_send_duration_seconds_{sum,count}`-like figure from a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The ETL workers' writes so far, summed: entries read, writes (transactions), seconds
/// writing.
async fn etl_writes(client: &reqwest::Client, ports: &[ReservedPort]) -> (f64, f64, f64) {
    let mut total = (0.0, 0.0, 0.0);
    for port in ports {
        let Ok(text) = async {
            client
                .get(format!("{}/metrics", port.url()))
                .send()
                .await?
                .text()
                .await
        }
        .await
        else {
            continue;
        };
        total.0 += metric(&text, "fiber_etl_received_entries_total").unwrap_or(0.0);
        total.1 += metric(&text, "fiber_etl_send_duration_seconds_count").unwrap_or(0.0);
        total.2 += metric(&text, "fiber_etl_send_duration_seconds_sum").unwrap_or(0.0);
    }
    total
}

/// "N writes of E entries, W ms each" from [`etl_writes`].
fn describe_writes((entries, writes, secs): (f64, f64, f64)) -> String {
    format!(
        "{writes:.0} writes of {:.1} entries, {:.1} ms each (mean)",
        entries / writes,
        secs / writes * 1000.0
    )
}

/// The upper bound of the histogram bucket holding quantile `q` of ingest's 202 answers to
/// `POST /api/v1/samples` (`fiber_ingest_request_duration_seconds`), in ms: the server's
/// own time, without the client's or the network's.
fn ingest_quantile_ms(text: &str, q: f64) -> f64 {
    // prometheus-client writes `le` first: `…_bucket{le="0.001",route="…",code="202"} 12`.
    let series = "\",route=\"/api/v1/samples\",code=\"202\"} ";
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("fiber_ingest_request_duration_seconds_bucket{le=\"")?;
            let (le, n) = rest.split_once(series)?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |(_, n)| *n);
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total && total > 0.0)
        .map_or(f64::NAN, |(le, _)| le * 1000.0)
}

/// CPU seconds (user + system) process `pid` has used so far; 0 when it cannot be read.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command's closing parenthesis; utime and stime are the 14th and
    // 15th of the line, in clock ticks (100 a second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Redis' process id (`INFO server`), to read its CPU time.
async fn redis_pid(redis: &mut redis::aio::MultiplexedConnection) -> Result<u32> {
    let info: String = redis::cmd("INFO").arg("server").query_async(redis).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0))
}

/// CPU seconds used by: this process (the simulated probes), ingest, the ETL workers, Redis.
fn cpu_now(processes: &Processes, redis: u32) -> [f64; 4] {
    let pids: Vec<u32> = processes.0.iter().map(Child::id).collect();
    [
        cpu_secs(std::process::id()),
        pids.first().map_or(0.0, |p| cpu_secs(*p)),
        pids.iter().skip(1).map(|p| cpu_secs(*p)).sum(),
        cpu_secs(redis),
    ]
}

/// Redis' EVAL calls so far (`INFO commandstats`).
async fn eval_calls(redis: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_eval:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// N probes against a fresh ingest and ETL for `settings.secs`, paced to `rate` samples/s in
/// all or (`None`) as fast as they are answered.
async fn run_load(env: &LocalEnv, settings: &Settings, rate: Option<f64>) -> Result<Load> {
    let Settings {
        probes,
        secs,
        size,
        consumers,
        max_age_ms,
        binary,
    } = *settings;
    // Each probe's time between batches when paced.
    let period = rate.map(|r| Duration::from_secs_f64((probes * size) as f64 / r));
    let url = env.fresh_postgres_database("fs_load").await?;
    etl::migrate(&url, None).await?;
    let region = unique_name("load");
    let client = reqwest::Client::new();
    let mut processes = Processes(Vec::new());
    let mut redis = env.redis().await?;

    // The ingest service, on a loopback port, with the rate limit out of the way; the
    // length cap too (the admission age is what is measured).
    let ingest = ReservedPort::new()?;
    processes.spawn(
        Command::new(workspace_binary("fiber-ingest")?)
            .args(["--region", &region, "--listen", &ingest.addr().to_string()])
            .args(["--rate-per-node", "1e9", "--rate-burst", "1000000"])
            .args(["--max-backlog", "10000000"])
            .args([
                "--max-backlog-age",
                &(max_age_ms as f64 / 1000.0).to_string(),
            ])
            .env("REDIS_URL", &env.redis_url)
            .env("FIBER_TOKEN", TOKEN),
    )?;
    let ingest_url = format!("{}/api/v1/samples", ingest.url());
    wait_for(
        "fiber-ingest ready",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let ready = client.get(format!("{}/readyz", ingest.url())).send().await;
            Ok(match ready {
                Ok(r) if r.status().is_success() => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;

    // The ETL workers.
    let etl_ports = start_consumers(&mut processes, env, &region, &url, consumers)?;
    wait_landed(&client, &etl_ports, "fiber-etl workers up").await?;

    // Landed-count timeline, for freshness.
    let (stop_tx, stop_rx) = watch::channel(false);
    let etl_ports = Arc::new(etl_ports);
    let timeline: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let poller = {
        let (timeline, ports, client) = (timeline.clone(), etl_ports.clone(), client.clone());
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            while !*rx.borrow() {
                if let Some(n) = landed(&client, &ports).await {
                    timeline.lock().await.push((Instant::now(), n));
                }
                let _ = tokio::time::timeout(Duration::from_millis(10), rx.changed()).await;
            }
        })
    };

    let evals_before = eval_calls(&mut redis).await?;
    let redis_process = redis_pid(&mut redis).await?;
    let cpu_before = cpu_now(&processes, redis_process);
    let accepted = Arc::new(AtomicU64::new(0));
    let accept_log: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let refusals: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut senders = Vec::new();
    for p in 0..probes {
        let (client, url, region) = (client.clone(), ingest_url.clone(), region.clone());
        let (accepted, accept_log, latencies, refusals, failures) = (
            accepted.clone(),
            accept_log.clone(),
            latencies.clone(),
            refusals.clone(),
            failures.clone(),
        );
        // Made once per probe: encoding each batch cost ~0.8 µs of CPU per sample, taken
        // from what is measured on the shared cores.
        let bodies = if binary {
            BatchBodies::binary(p, size, base, &region)
        } else {
            BatchBodies::new(p, size, base, &region)
        };
        let content_type = if binary {
            fiberstack_model::binary::MEDIA_TYPE
        } else {
            "application/json"
        };
        senders.push(tokio::spawn(async move {
            let mut seq = 0;
            // Probes start spread over one period, as real ones would.
            let mut next = tokio::time::Instant::now()
                + period.map_or(Duration::ZERO, |d| d.mul_f64(p as f64 / probes as f64));
            while Instant::now() < deadline {
                if let Some(period) = period {
                    tokio::time::sleep_until(next).await;
                    next += period;
                }
                // The ingest service takes its own region's batches only.
                let body = match &bodies {
                    Some(bodies) => bodies.body(seq),
                    None => {
                        let batch = Batch {
                            region: region.clone(),
                            ..batch(p, seq, size, base)
                        };
                        if binary {
                            fiberstack_model::binary::encode(&batch)
                        } else {
                            serde_json::to_vec(&batch).expect("json")
                        }
                    }
                };
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await;
                let took = sent.elapsed().as_secs_f64() * 1000.0;
                match response {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let total =
                            accepted.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
                        accept_log.lock().await.push((Instant::now(), total));
                        latencies.lock().await.push(took);
                        seq += 1;
                    }
                    Ok(r) if matches!(r.status().as_u16(), 429 | 503) => {
                        // As fiber-probe does: wait what the service asks, keep the batch.
                        let wait = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                        refusals.lock().await.push((Instant::now(), wait.is_some()));
                        let wait = Duration::from_secs(wait.unwrap_or(1))
                            .min(deadline.saturating_duration_since(Instant::now()));
                        tokio::time::sleep(wait).await;
                        if let Some(period) = period {
                            next = tokio::time::Instant::now().max(next) + period;
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for s in senders {
        s.await?;
    }
    let load_secs = start.elapsed().as_secs_f64();
    let total = accepted.load(Ordering::Relaxed);
    let evals = eval_calls(&mut redis).await? - evals_before;
    let ingest_metrics = client
        .get(format!("{}/metrics", ingest.url()))
        .send()
        .await?
        .text()
        .await?;
    let append_mean_ms = metric(&ingest_metrics, "fiber_ingest_send_duration_seconds_sum")
        .zip(metric(
            &ingest_metrics,
            "fiber_ingest_send_duration_seconds_count",
        ))
        .map_or(f64::NAN, |(sum, count)| sum / count * 1000.0);
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let mut stored = 0;
    while Instant::now() < drain_deadline {
        stored = landed(&client, &etl_ports).await.unwrap_or(stored);
        if stored >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e2e_secs = start.elapsed().as_secs_f64();
    let writes = etl_writes(&client, &etl_ports).await;
    let cpu_after = cpu_now(&processes, redis_process);
    stop_tx.send(true)?;
    let _ = poller.await;
    processes.stop().await;
    let _: () = redis
        .del(&[samples_stream(&region), dead_letter_stream(&region)])
        .await?;
    env.drop_postgres_database(&url, &[]).await?;

    let mut latencies = latencies.lock().await.clone();
    latencies.sort_by(f64::total_cmp);
    let timeline = timeline.lock().await;
    let mut freshness: Vec<f64> = accept_log
        .lock()
        .await
        .iter()
        .filter_map(|(at, cumulative)| {
            timeline
                .iter()
                .find(|(t, n)| *t >= *at && *n >= *cumulative)
                .map(|(t, _)| t.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    freshness.sort_by(f64::total_cmp);
    let refusals = refusals.lock().await;
    let requests = latencies.len().max(1) as f64;
    Ok(Load {
        accepted: total,
        load_secs,
        stored,
        e2e_secs,
        latencies,
        freshness,
        refused: refusals.len() as u64,
        refused_with_retry_after: refusals.iter().filter(|(_, r)| *r).count() as u64,
        failed: failures.load(Ordering::Relaxed),
        first_refusal_secs: refusals
            .iter()
            .map(|(t, _)| t.duration_since(start).as_secs_f64())
            .min_by(f64::total_cmp),
        append_mean_ms,
        eval_per_request: evals as f64 / requests,
        writes,
        cpu_us: std::array::from_fn(|i| {
            (cpu_after[i] - cpu_before[i]) * 1e6 / stored.max(1) as f64
        }),
        ingest_p50_ms: ingest_quantile_ms(&ingest_metrics, 0.5),
        ingest_p99_ms: ingest_quantile_ms(&ingest_metrics, 0.99),
    })
}

/// The ETL alone on `rows` rows already in a stream, written by `consumers` workers into an
/// empty database: samples/s.
async fn ceiling(env: &LocalEnv, settings: &Settings, rows: u64) -> Result<(f64, u64, String)> {
    let (probes, size) = (settings.probes, settings.size);
    let base = Utc::now() - chrono::Duration::hours(1);
    let count = (rows as usize).div_ceil(size);
    let rows = (count * size) as u64;
    let url = env.fresh_postgres_database("fs_load_etl").await?;
    etl::migrate(&url, None).await?;
    let region = unique_name("load-etl");
    let mut redis = env.redis().await?;
    for s in 0..count {
        let b = batch(s % probes, (s / probes) as u64, size, base);
        let _: String = redis
            .xadd(
                samples_stream(&region),
                "*",
                &[(BATCH_FIELD, encode_batch(&b))],
            )
            .await?;
    }
    let client = reqwest::Client::new();
    let mut processes = Processes(Vec::new());
    let ports = start_consumers(&mut processes, env, &region, &url, settings.consumers)?;
    wait_landed(&client, &ports, "fiber-etl workers up").await?;
    let redis_process = redis_pid(&mut redis).await?;
    let cpu_before = cpu_now(&processes, redis_process);
    let etl_start = Instant::now();
    wait_for(
        "the ETL alone to store the pre-filled stream",
        Duration::from_secs(300),
        Duration::from_millis(10),
        || async {
            Ok(match landed(&client, &ports).await {
                Some(n) if n >= rows => Ok(()),
                other => Err(format!("{other:?} of {rows}")),
            })
        },
    )
    .await?;
    let rate = rows as f64 / etl_start.elapsed().as_secs_f64();
    let cpu_after = cpu_now(&processes, redis_process);
    // Here the first process is an ETL worker too: all of them are ETL.
    let etl_cpu = (cpu_after[1] + cpu_after[2] - cpu_before[1] - cpu_before[2]) * 1e6 / rows as f64;
    let writes = format!(
        "{}; cpu per stored sample: ETL workers {etl_cpu:.2} µs, Redis {:.2} µs",
        describe_writes(etl_writes(&client, &ports).await),
        (cpu_after[3] - cpu_before[3]) * 1e6 / rows as f64
    );
    processes.stop().await;
    let _: () = redis
        .del(&[samples_stream(&region), dead_letter_stream(&region)])
        .await?;
    env.drop_postgres_database(&url, &[]).await?;
    Ok((rate, rows, writes))
}

fn print_load(name: &str, load: &Load, ceiling: f64) {
    println!(
        "{name}: accepted {} samples in {:.1}s = {:.0}/s; stored {} in {:.1}s = {:.0}/s ({:.2} × ceiling)",
        load.accepted,
        load.load_secs,
        load.accepted_rate(),
        load.stored,
        load.e2e_secs,
        load.e2e_rate(),
        load.e2e_rate() / ceiling,
    );
    println!(
        "  http latency: p50 {:.2} ms, p99 {:.2} ms over {} accepted requests; refused {} ({} with Retry-After){}, failed {}",
        percentile(&load.latencies, 0.5),
        percentile(&load.latencies, 0.99),
        load.latencies.len(),
        load.refused,
        load.refused_with_retry_after,
        load.first_refusal_secs
            .map_or(String::new(), |s| format!(", first at {s:.1}s")),
        load.failed,
    );
    println!(
        "  freshness (202 → stored): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        percentile(&load.freshness, 0.5),
        percentile(&load.freshness, 0.95),
        load.freshness.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "  ingest: append to Redis {:.3} ms mean (one round trip: EVAL of the admission check + XADD); {:.2} EVAL per accepted request",
        load.append_mean_ms, load.eval_per_request,
    );
    println!(
        "  ingest's own time per 202 (its histogram's buckets): p50 ≤ {} ms, p99 ≤ {} ms",
        load.ingest_p50_ms, load.ingest_p99_ms
    );
    println!("  etl: {}", describe_writes(load.writes));
    let [probes, ingest, etl, redis] = load.cpu_us;
    println!(
        "  cpu per stored sample: simulated probes {probes:.2} µs, ingest {ingest:.2} µs, ETL workers {etl:.2} µs, Redis {redis:.2} µs (PostgreSQL not counted)"
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let settings = Settings {
        probes: setting("FIBER_LOAD_PROBES", 20) as usize,
        secs: setting("FIBER_LOAD_SECS", 20),
        size: setting("FIBER_LOAD_BATCH", 500) as usize,
        consumers: setting("FIBER_LOAD_CONSUMERS", 2) as usize,
        max_age_ms: setting("FIBER_LOAD_MAX_AGE_MS", 10_000),
        binary: match std::env::var("FIBER_LOAD_ENCODING").as_deref() {
            Err(_) | Ok("binary") => true,
            Ok("json") => false,
            Ok(other) => anyhow::bail!("FIBER_LOAD_ENCODING={other:?}: say binary or json"),
        },
    };
    let rate = setting("FIBER_LOAD_RATE", 0);
    let env = LocalEnv::load()?;
    println!(
        "load: {} probes × batches of {} samples ({}) for {}s, {} fiber-etl workers, PostgreSQL, admission age {} ms",
        settings.probes,
        settings.size,
        if settings.binary { "binary" } else { "JSON" },
        settings.secs,
        settings.consumers,
        settings.max_age_ms,
    );
    // Build (and warm) the binaries before anything is timed.
    workspace_binary("fiber-ingest")?;

    let (ceiling_rate, ceiling_rows, ceiling_writes) =
        ceiling(&env, &settings, CEILING_ROWS).await?;
    println!(
        "ceiling: the ETL alone (binary COPY) stores {ceiling_rate:.0} samples/s ({ceiling_rows} rows from a pre-filled stream, no HTTP, no ingest)"
    );
    println!("  etl: {ceiling_writes}");
    let saturation = run_load(&env, &settings, None).await?;
    print_load("saturation (unpaced)", &saturation, ceiling_rate);
    let half = if rate > 0 {
        rate as f64
    } else {
        saturation.e2e_rate() / 2.0
    };
    let paced = run_load(&env, &settings, Some(half)).await?;
    print_load(
        &format!("paced at {half:.0} samples/s"),
        &paced,
        ceiling_rate,
    );
    println!(
        "end to end / ceiling: {:.2}",
        saturation.e2e_rate() / ceiling_rate
    );
    println!(
        "{}",
        json!({
            "bench": "datapath",
            "encoding": if settings.binary { "binary" } else { "json" },
            "e2e_per_s": saturation.e2e_rate().round(),
            "copy_ceiling_per_s": ceiling_rate.round(),
            "saturation_per_s": saturation.accepted_rate().round(),
            "e2e_ratio": (saturation.e2e_rate() / ceiling_rate * 100.0).round() / 100.0,
            "saturation_freshness_max_s": saturation.freshness.last().copied().unwrap_or(f64::NAN) / 1000.0,
            "saturation_refused": saturation.refused,
            "half_load_per_s": half.round(),
            "half_load_p99_ms": percentile(&paced.latencies, 0.99),
            "half_load_freshness_p95_s": percentile(&paced.freshness, 0.95) / 1000.0,
            "commit": commit(),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        })
    );
    Ok(())
}
