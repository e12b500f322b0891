//! Load benchmark of the data path, on this machine, against the real parts of `make env-up`:
//! N simulated probes POST batches over HTTP to a `fiber-ingest` process for a fixed time;
//! `fiber-etl run` processes write them into a fresh PostgreSQL database. Prints accepted
//! samples/s, HTTP latency p50/p99, end-to-end samples/s landed, freshness (202 → stored)
//! p50/p95, and — in the same run — the rate of the ETL alone on the same rows (a pre-filled
//! stream, no HTTP), as the ceiling. The binaries are the release builds the images ship.
//! Prints figures; never fails on time.
//!
//!   make bench   (or: cargo bench -p fiberstack-e2e --bench load)
//!   FIBER_LOAD_PROBES=20 FIBER_LOAD_SECS=20 FIBER_LOAD_BATCH=500 FIBER_LOAD_CONSUMERS=2 make bench
//!
//! `FIBER_LOAD_RATE=25000` paces the probes to that many samples/s in all (default 0: each
//! probe sends its next batch as soon as the last one is answered, which measures saturation;
//! a paced run measures latency and freshness at a given load).
//!
//! The ETL writer alone (binary COPY against the conflict-tolerant INSERT, no stream) is
//! fiber-etl's own bench: `cargo bench -p fiber-etl --bench writer`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use fiberstack_e2e::bench::{batch, setting};
use fiberstack_e2e::{
    LocalEnv, ReservedPort, etl, terminate, unique_name, wait_for, workspace_binary,
};
use fiberstack_model::Batch;
use fiberstack_model::stream::{BATCH_FIELD, dead_letter_stream, encode_batch, samples_stream};
use redis::AsyncCommands;
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

#[tokio::main]
async fn main() -> Result<()> {
    let probes = setting("FIBER_LOAD_PROBES", 20) as usize;
    let secs = setting("FIBER_LOAD_SECS", 20);
    let size = setting("FIBER_LOAD_BATCH", 500) as usize;
    let consumers = setting("FIBER_LOAD_CONSUMERS", 2) as usize;
    let rate = setting("FIBER_LOAD_RATE", 0);
    // Each probe's time between batches when paced.
    let period = (rate > 0).then(|| Duration::from_secs_f64((probes * size) as f64 / rate as f64));
    let env = LocalEnv::load()?;
    let url = env.fresh_postgres_database("fs_load").await?;
    etl::migrate(&url, None).await?;
    let region = unique_name("load");
    let client = reqwest::Client::new();
    let mut processes = Processes(Vec::new());

    // The ingest service, on a loopback port, with limits out of the way.
    let ingest = ReservedPort::new()?;
    processes.spawn(
        Command::new(workspace_binary("fiber-ingest")?)
            .args(["--region", &region, "--listen", &ingest.addr().to_string()])
            .args(["--rate-per-node", "1e9", "--rate-burst", "1000000"])
            .args(["--max-backlog", "10000000"])
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
    let etl_ports = start_consumers(&mut processes, &env, &region, &url, consumers)?;
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

    println!(
        "load: {probes} probes × batches of {size} samples for {secs}s, {consumers} fiber-etl workers, PostgreSQL 15, {}",
        match rate {
            0 => "unpaced (saturation)".to_owned(),
            r => format!("paced at {r} samples/s"),
        }
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let accept_log: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut senders = Vec::new();
    for p in 0..probes {
        let (client, url, region) = (client.clone(), ingest_url.clone(), region.clone());
        let (accepted, accept_log, latencies, failures) = (
            accepted.clone(),
            accept_log.clone(),
            latencies.clone(),
            failures.clone(),
        );
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
                let sent_batch = Batch {
                    region: region.clone(),
                    ..batch(p, seq, size, base)
                };
                let body = serde_json::to_vec(&sent_batch).expect("json");
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/json")
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
    stop_tx.send(true)?;
    let _ = poller.await;
    processes.stop().await;

    let mut lat = latencies.lock().await.clone();
    lat.sort_by(f64::total_cmp);
    let timeline = timeline.lock().await;
    let mut fresh: Vec<f64> = accept_log
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
    fresh.sort_by(f64::total_cmp);

    // The ceiling: the same rows, already in a stream, written by the same number of workers
    // into an empty database — the data path without HTTP and ingest.
    let rows = total.min(CEILING_ROWS) as usize;
    let batches: Vec<Batch> = (0..rows.div_ceil(size))
        .map(|s| batch(s % probes, (s / probes) as u64, size, base))
        .collect();
    let ceiling_rows = (batches.len() * size) as u64;
    let ceiling_url = env.fresh_postgres_database("fs_load_etl").await?;
    etl::migrate(&ceiling_url, None).await?;
    let ceiling_region = unique_name("load-etl");
    let mut redis = env.redis().await?;
    for b in &batches {
        let _: String = redis
            .xadd(
                samples_stream(&ceiling_region),
                "*",
                &[(BATCH_FIELD, encode_batch(b))],
            )
            .await?;
    }
    let mut processes = Processes(Vec::new());
    let ports = start_consumers(
        &mut processes,
        &env,
        &ceiling_region,
        &ceiling_url,
        consumers,
    )?;
    wait_landed(&client, &ports, "fiber-etl workers up").await?;
    let etl_start = Instant::now();
    wait_for(
        "the ETL alone to store the pre-filled stream",
        Duration::from_secs(300),
        Duration::from_millis(10),
        || async {
            Ok(match landed(&client, &ports).await {
                Some(n) if n >= ceiling_rows => Ok(()),
                other => Err(format!("{other:?} of {ceiling_rows}")),
            })
        },
    )
    .await?;
    let etl_rate = ceiling_rows as f64 / etl_start.elapsed().as_secs_f64();
    processes.stop().await;
    let _: () = redis
        .del(&[
            samples_stream(&ceiling_region),
            dead_letter_stream(&ceiling_region),
        ])
        .await?;

    let _: () = redis
        .del(&[samples_stream(&region), dead_letter_stream(&region)])
        .await?;

    let e2e_rate = stored as f64 / e2e_secs;
    println!(
        "accepted:        {total} samples in {load_secs:.1}s = {:.0} samples/s ({} refused or failed requests)",
        total as f64 / load_secs,
        failures.load(Ordering::Relaxed)
    );
    println!(
        "http latency:    p50 {:.2} ms, p99 {:.2} ms over {} requests",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
    println!(
        "end to end:      {stored} samples stored in {e2e_secs:.1}s = {e2e_rate:.0} samples/s"
    );
    println!(
        "freshness:       p50 {:.0} ms, p95 {:.0} ms (202 → stored)",
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.95)
    );
    println!(
        "etl alone:       {etl_rate:.0} samples/s ({ceiling_rows} of the same rows from a pre-filled stream, same workers: no HTTP, no ingest)"
    );
    println!("end to end / etl alone: {:.2}", e2e_rate / etl_rate);
    Ok(())
}
