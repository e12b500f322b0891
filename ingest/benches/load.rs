//! Load benchmark of the data path, on this machine, against the real parts of `make env-up`:
//! N simulated probes POST batches over HTTP to an in-process fiber-ingest for a fixed time;
//! in-process fiber-etl consumers write them into a fresh PostgreSQL database. Prints
//! accepted samples/s, HTTP latency p50/p99, end-to-end samples/s landed, freshness (202 →
//! stored) p50/p95, and — in the same run — the rate of writing the same rows straight into
//! the same table, as the ceiling. Prints figures; never fails on time.
//!
//!   cargo bench -p fiber-ingest --bench load
//!   FIBER_LOAD_PROBES=20 FIBER_LOAD_SECS=20 FIBER_LOAD_BATCH=500 FIBER_LOAD_CONSUMERS=2 cargo bench ...
//!
//! `FIBER_LOAD_RATE=25000` paces the probes to that many samples/s in all (default 0: each
//! probe sends its next batch as soon as the last one is answered, which measures saturation;
//! a paced run measures latency and freshness at a given load).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use fiber_etl::consumer::{Consumer, ConsumerConfig, Stats};
use fiber_etl::db::DbConfig;
use fiber_ingest::api::{AppState, router};
use fiber_ingest::auth::Token;
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiberstack_e2e::{LocalEnv, unique_name};
use fiberstack_model::{Batch, CheckKind, Sample};
use tokio::sync::{Mutex, watch};

const TOKEN: &str = "load-test-token-0123456789";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn batch(probe: usize, seq: u64, size: usize, base: DateTime<Utc>) -> Batch {
    let samples = (0..size)
        .map(|i| {
            let n = seq * size as u64 + i as u64;
            Sample {
                address: "127.0.0.1".into(),
                latency_ms: Some(1.0 + (n % 97) as f64),
                latency_min_ms: Some(1.0),
                latency_max_ms: Some(100.0),
                jitter_ms: Some(0.3),
                packet_loss: Some(0.0),
                sent: Some(5),
                received: Some(5),
                // Unique per probe: one target of 20, one millisecond each.
                ..Sample::new(
                    base + chrono::Duration::milliseconds((n / 20) as i64),
                    format!("target-{}", n % 20),
                    CheckKind::Icmp,
                    true,
                )
            }
        })
        .collect();
    Batch {
        probe: "load/bench".into(),
        region: "load".into(),
        country: "GH".into(),
        node: format!("load-node-{probe}"),
        agent_version: "bench".into(),
        samples,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
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
    let pool = DbConfig {
        max_connections: consumers as u32 + 1,
        ..DbConfig::new(&url)
    }
    .connect()
    .await?;
    fiber_etl::migrate::migrate(&pool).await?;
    let region = unique_name("load");
    let redis = fiber_ingest::stream::connect(&env.redis_url).await?;

    // The ingest service, in process, on a loopback port.
    let writer = StreamWriter::new(redis.clone(), &region, 10_000_000);
    let limiter = RateLimiter::new(1e9, 1_000_000);
    let state = Arc::new(AppState::new(
        &region,
        Token::new(TOKEN).unwrap(),
        limiter,
        writer,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ingest_url = format!("http://{}/api/v1/samples", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    // ETL consumers, in process.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut stats: Vec<Arc<Stats>> = Vec::new();
    let mut handles = Vec::new();
    for i in 0..consumers {
        let mut config = ConsumerConfig::new(&region, format!("bench-{i}"));
        config.read_count = 20;
        config.block = Duration::from_millis(50);
        let consumer_redis =
            fiber_etl::consumer::connect_redis(&env.redis_url, config.block).await?;
        let mut consumer = Consumer::new(consumer_redis, pool.clone(), config);
        stats.push(consumer.stats());
        let rx = stop_rx.clone();
        handles.push(tokio::spawn(async move { consumer.run(rx).await }));
    }
    let landed = {
        let stats = stats.clone();
        move || {
            stats
                .iter()
                .map(|s| Stats::get(&s.samples_inserted))
                .sum::<u64>()
        }
    };

    // Landed-count timeline, for freshness.
    let timeline: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let poller = {
        let timeline = timeline.clone();
        let landed = landed.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            while !*rx.borrow() {
                timeline.lock().await.push((Instant::now(), landed()));
                let _ = tokio::time::timeout(Duration::from_millis(10), rx.changed()).await;
            }
        })
    };

    println!(
        "load: {probes} probes × batches of {size} samples for {secs}s, {consumers} ETL consumers, PostgreSQL 15, {}",
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
    let client = reqwest::Client::new();
    let mut senders = Vec::new();
    for p in 0..probes {
        let (client, url) = (client.clone(), ingest_url.clone());
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
                let body = serde_json::to_vec(&batch(p, seq, size, base)).expect("json");
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
    while landed() < total && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e2e_secs = start.elapsed().as_secs_f64();
    let stored = landed();
    stop_tx.send(true)?;
    for h in handles {
        let _ = h.await;
    }
    let _ = poller.await;

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

    // The ceiling: the same rows written straight into the same table (no HTTP, no Redis),
    // by the writer the ETL uses (binary COPY), and by its conflict-tolerant fallback
    // (UNNEST … ON CONFLICT DO NOTHING) for comparison; each into an empty database.
    let rows = total.min(1_000_000) as usize;
    let batches: Vec<Batch> = (0..rows.div_ceil(size))
        .map(|s| batch(s % probes, (s / probes) as u64, size, base))
        .collect();
    let mut bare_rates = Vec::new();
    for conflict_tolerant in [false, true] {
        let ceiling_url = env.fresh_postgres_database("fs_load_bare").await?;
        let bare_pool = DbConfig::new(&ceiling_url).connect().await?;
        fiber_etl::migrate::migrate(&bare_pool).await?;
        let bare_start = Instant::now();
        for chunk in batches.chunks(20) {
            if conflict_tolerant {
                fiber_etl::writer::write_conflict_tolerant(&bare_pool, chunk, Utc::now()).await?;
            } else {
                fiber_etl::writer::write(&bare_pool, chunk, Utc::now()).await?;
            }
        }
        bare_rates.push((batches.len() * size) as f64 / bare_start.elapsed().as_secs_f64());
        bare_pool.close().await;
    }
    let (bare_rate, unnest_rate) = (bare_rates[0], bare_rates[1]);

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
        "bare insert:     {bare_rate:.0} samples/s (same rows, same writer: binary COPY, no HTTP/Redis)"
    );
    println!(
        "bare UNNEST:     {unnest_rate:.0} samples/s (same rows, INSERT … ON CONFLICT DO NOTHING)"
    );
    println!("end to end / bare insert: {:.2}", e2e_rate / bare_rate);
    Ok(())
}
