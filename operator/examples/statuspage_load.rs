//! Load figures of the status page: a snapshot of 1,000 targets (10 regions × 10 probes × 10
//! targets, 90 daily bars each) is rendered and served over real HTTP on localhost, then the
//! page and badges are requested and the latencies printed. The target is p95 < 50 ms.
//!
//!   cargo run --release -p fiberstack-operator --example statuspage_load
//!
//! The page is requested as a browser asks for it (gzip) and without compression.
//!
//! STATUS_PAGE_TARGETS (default 1000, a multiple of 100), STATUS_PAGE_REQUESTS (page
//! requests, default 300; badges get ten times as many) and STATUS_PAGE_CONCURRENCY (default
//! 8) change the load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fiberstack_operator::crd::{Summary, Thresholds};
use fiberstack_operator::statuspage::figures::{self, Day, Window, Windows};
use fiberstack_operator::statuspage::{
    self, Mode, ProbeView, RegionView, Snapshot, StatusPage, TargetView, Visibility,
};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn snapshot(targets: usize) -> Snapshot {
    let now = Utc::now();
    let window = |up: f64| Window {
        samples: 8_640,
        uptime_pct: Some(up),
        latency_p95_ms: Some(42.5),
        packet_loss_pct: Some(0.1),
    };
    let per_probe = 10;
    let probes = targets.div_ceil(per_probe);
    let regions = probes.div_ceil(10);
    let mut n = 0;
    Snapshot {
        generated_at: now,
        mode: Some(Mode::Internal),
        refresh_every: Duration::from_secs(30),
        problems: vec![],
        regions: (0..regions)
            .map(|r| RegionView {
                namespace: "fiberstack".into(),
                name: format!("region-{r}"),
                display_name: Some(format!("Region {r}")),
                country: Some("GH".into()),
                exists: true,
                messages: vec![],
                ingest_url: Some(format!(
                    "http://fiber-ingest-region-{r}.fiberstack.svc:8080"
                )),
                probes: (0..10)
                    .map(|p| ProbeView {
                        namespace: "fiberstack".into(),
                        name: format!("probe-{r}-{p}"),
                        health: "Healthy".into(),
                        visibility: Some(Visibility::Public),
                        ready: "3/3".into(),
                        reporting_probes: 3,
                        last_sample: Some(now.to_rfc3339()),
                        windows: Windows {
                            day: window(99.95),
                            week: window(99.9),
                            month: window(99.8),
                            newest_bucket: Some(now),
                        },
                        targets: (0..per_probe)
                            .map(|t| {
                                n += 1;
                                TargetView {
                                    name: format!("target-{t}"),
                                    kind: "http".into(),
                                    address: Some(format!("https://svc-{n}.example/health")),
                                    state: if n % 97 == 0 { "Breaching" } else { "Healthy" }.into(),
                                    reason: (n % 97 == 0)
                                        .then(|| "latency p95 412 ms > 150 ms".to_owned()),
                                    now: Summary {
                                        samples: 90,
                                        latency_p50_ms: Some(20.0),
                                        latency_p95_ms: Some(42.5),
                                        packet_loss_pct: Some(0.0),
                                        uptime_pct: Some(100.0),
                                        late_samples: None,
                                    },
                                    windows: Windows {
                                        day: window(99.95),
                                        week: window(99.9),
                                        month: window(99.8),
                                        newest_bucket: Some(now),
                                    },
                                    days: figures::bars(
                                        &(0..90)
                                            .map(|d| Day {
                                                date: now.date_naive() - chrono::TimeDelta::days(d),
                                                // Varied per day and target, so that
                                                // gzip meets realistic text.
                                                samples: 25_000
                                                    + ((d as usize * 7_919 + n * 104_729) % 1_000)
                                                        as i64,
                                                uptime_pct: Some(
                                                    100.0
                                                        - ((d as usize * 7_919 + n * 31) % 800)
                                                            as f64
                                                            / 97.0,
                                                ),
                                            })
                                            .rev()
                                            .collect::<Vec<_>>(),
                                        now,
                                    ),
                                    thresholds: Thresholds::default(),
                                    ..Default::default()
                                }
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .take(probes - r * 10)
                    .collect(),
            })
            .collect(),
    }
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "{what}: {} requests, p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.95).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}

/// Requests every URL (`gzip`: as a browser does, accepting a gzipped body), `concurrency`
/// at a time; each request's time to the last byte.
async fn load(urls: Vec<String>, concurrency: usize, gzip: bool) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let urls = Arc::new(std::sync::Mutex::new(urls));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, urls) = (client.clone(), urls.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let Some(url) = urls.lock().unwrap().pop() else {
                        return times;
                    };
                    let start = Instant::now();
                    let mut request = client.get(&url);
                    if gzip {
                        request = request.header("accept-encoding", "gzip");
                    }
                    let response = request.send().await.expect("request");
                    assert!(
                        response.status().is_success(),
                        "{url}: {}",
                        response.status()
                    );
                    response.bytes().await.expect("body");
                    times.push(start.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let targets = setting("STATUS_PAGE_TARGETS", 1000);
    let requests = setting("STATUS_PAGE_REQUESTS", 300);
    let concurrency = setting("STATUS_PAGE_CONCURRENCY", 8);

    let page = StatusPage::new(statuspage::Settings {
        mode: Mode::Public,
        refresh_every: Duration::from_secs(30),
        namespace: None,
    });
    let snap = snapshot(targets);
    let mut renders = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        page.publish(snap.clone());
        renders.push(start.elapsed());
    }
    report(
        &format!("publish (trim, render, gzip) of {targets} targets, in the refresh task"),
        renders,
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, statuspage::router(page)).await });

    let client = reqwest::Client::new();
    let size = client
        .get(format!("{base}/"))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let gzipped = client
        .get(format!("{base}/"))
        .header("accept-encoding", "gzip")
        .send()
        .await?
        .bytes()
        .await?
        .len();
    println!(
        "page size: {:.1} MiB, gzipped {:.2} MiB",
        size as f64 / (1024.0 * 1024.0),
        gzipped as f64 / (1024.0 * 1024.0)
    );
    report(
        &format!("GET / gzip ({targets} targets, concurrency {concurrency})"),
        load(vec![format!("{base}/"); requests], concurrency, true).await,
    );
    report(
        &format!("GET / identity ({targets} targets, concurrency {concurrency})"),
        load(vec![format!("{base}/"); requests / 3], concurrency, false).await,
    );
    let badges: Vec<String> = (0..requests * 10)
        .map(|i| {
            let (r, p, t) = (i % 10, (i / 10) % 10, (i / 100) % 10);
            format!(
                "{base}/badges/fiberstack/probe-{}-{p}/target-{t}/{}.svg?window=7d",
                r % targets.div_ceil(100),
                if i % 2 == 0 { "uptime" } else { "latency" }
            )
        })
        .collect();
    report(
        &format!("GET badge (concurrency {concurrency})"),
        load(badges, concurrency, false).await,
    );
    Ok(())
}
