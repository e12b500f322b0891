//! What the operator's status costs the database, on the fleet the dashboards benchmark
//! generates (`fiberstack_e2e::bench::fleet_dataset`: 20 probes × 50 targets on 10 nodes in 3
//! regions, one round every 10 s): one probe's figures alone, every probe of a region in one
//! batch (what the operator runs once per region and status period), the newest-sample lookup
//! of a target never sampled, spec.slo's counts over a 30-day window (rollups for the
//! days before, generated directly; alone, then with every target's own slo besides), and
//! the status page's long-window figures of every probe (24 h, 7 d from hourly rollups
//! generated for the 7 days before, 30 d and the 90 bars from the daily ones). Prints
//! figures and one JSON line; never fails on time.
//!
//! `cargo bench -p fiberstack-operator --bench status` (FIBER_BENCH_TARGETS overrides 1000,
//! FIBER_BENCH_HOURS the raw hours, 2; FIBER_BENCH_DAYS the SLO window, 30).

use std::time::{Duration as StdDuration, Instant};

use anyhow::Result;
use chrono::Utc;
use fiberstack_e2e::bench::{NODES, PROBES, fleet_dataset, setting, timed};
use fiberstack_operator::slo::{self, SloQuery, TargetSloQuery};
use fiberstack_operator::status;
use sqlx::PgPool;

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Probe p's region, as the dataset places it.
fn region_of(p: u64) -> u64 {
    p % NODES % 3
}

#[tokio::main]
async fn main() -> Result<()> {
    let targets = setting("FIBER_BENCH_TARGETS", 1000);
    let hours = setting("FIBER_BENCH_HOURS", 2).max(1);
    let days = setting("FIBER_BENCH_DAYS", 30).clamp(1, 90);
    let runs = 7;
    anyhow::ensure!(
        targets > 0 && targets.is_multiple_of(PROBES),
        "FIBER_BENCH_TARGETS={targets}: must be a positive multiple of {PROBES}"
    );
    let env = fiberstack_e2e::LocalEnv::load()?;
    let url = env.fresh_postgres_database("fs_status_bench").await?;
    fiberstack_e2e::etl::migrate(&url, None).await?;
    let pool = PgPool::connect(&url).await?;
    let result = run(&pool, targets, hours, days, runs).await;
    pool.close().await;
    env.drop_postgres_database(&url, &[]).await?;
    result
}

async fn run(pool: &PgPool, targets: u64, hours: u64, days: u64, runs: usize) -> Result<()> {
    let now = Utc::now();
    let start = Instant::now();
    fleet_dataset(pool, targets, hours, now).await?;
    sqlx::query("select fiberstack_refresh_rollups($1 - make_interval(hours => $2 + 1), $1)")
        .bind(now)
        .bind(hours as i32)
        .execute(pool)
        .await?;
    // The SLO window's earlier days, as the daily rollups would hold them: 8,640 rounds a
    // day per target, 20 latency bins.
    for sql in [
        "insert into metrics_daily (bucket, node, probe, target, samples, up_samples, uptime_pct)
         select d, 'bench-node-' || (p % 10), 'bench/probe-' || p, 'target-' || t, 8640, 8597, 99.5
           from generate_series(0, 19) p, generate_series(0, $1 - 1) t,
                generate_series(date_trunc('day', now()) - make_interval(days => $2),
                                date_trunc('day', now()) - interval '1 day', interval '1 day') d",
        "insert into metrics_latency_daily (bucket, region, node, probe, target, kind, bin, samples)
         select d, 'region-' || (p % 10 % 3), 'bench-node-' || (p % 10), 'bench/probe-' || p,
                'target-' || t, 'icmp', 250 + 8 * k, 430
           from generate_series(0, 19) p, generate_series(0, $1 - 1) t, generate_series(0, 19) k,
                generate_series(date_trunc('day', now()) - make_interval(days => $2),
                                date_trunc('day', now()) - interval '1 day', interval '1 day') d",
        // The status page's 24 h and 7 d windows read the hourly rollups of the 7 days before
        // the raw hours.
        "insert into metrics_hourly (bucket, node, probe, target, samples, up_samples, uptime_pct)
         select h, 'bench-node-' || (p % 10), 'bench/probe-' || p, 'target-' || t, 360, 358, 99.4
           from generate_series(0, 19) p, generate_series(0, $1 - 1) t,
                generate_series(date_trunc('hour', now()) - interval '7 days',
                                date_trunc('hour', now()) - interval '3 hours', interval '1 hour') h
          where $2 > 0",
        "insert into metrics_latency_hourly (bucket, region, node, probe, target, kind, bin, samples)
         select h, 'region-' || (p % 10 % 3), 'bench-node-' || (p % 10), 'bench/probe-' || p,
                'target-' || t, 'icmp', 250 + 8 * k, 18
           from generate_series(0, 19) p, generate_series(0, $1 - 1) t, generate_series(0, 19) k,
                generate_series(date_trunc('hour', now()) - interval '7 days',
                                date_trunc('hour', now()) - interval '3 hours', interval '1 hour') h
          where $2 > 0",
    ] {
        sqlx::query(sql)
            .bind((targets / PROBES) as i32)
            .bind(days as i32)
            .execute(pool)
            .await?;
    }
    sqlx::raw_sql("analyze").execute(pool).await?;
    println!(
        "{targets} targets: {hours} h of rounds and {days} days of rollups generated in {:.0} s",
        start.elapsed().as_secs_f64()
    );

    let per_probe = targets / PROBES;
    let names: Vec<String> = (0..per_probe).map(|t| format!("target-{t}")).collect();
    let interval = StdDuration::from_secs(10);
    let mut each = Vec::new();
    for p in 0..PROBES {
        let probe = format!("bench/probe-{p}");
        let ms = timed(runs, || async {
            Ok(status::probe_figures(pool, &probe, &names, interval).await?)
        })
        .await?;
        each.push(median(&ms));
    }
    // The operator's fan-out: every probe of a region in one call.
    let (mut batched, mut slo_window, mut slo_burn) = (0.0, 0.0, 0.0);
    let (mut target_window, mut target_burn) = (0.0, 0.0);
    for region in 0..3 {
        let probes: Vec<u64> = (0..PROBES).filter(|p| region_of(*p) == region).collect();
        let queries: Vec<status::ProbeQuery> = probes
            .iter()
            .map(|p| status::ProbeQuery {
                probe: format!("bench/probe-{p}"),
                targets: names.clone(),
                interval,
            })
            .collect();
        batched += median(
            &timed(runs, || async {
                Ok(status::probe_figures_many(pool, &queries).await?)
            })
            .await?,
        );
        let slos: Vec<SloQuery> = probes
            .iter()
            .map(|p| SloQuery {
                probe: format!("bench/probe-{p}"),
                window_days: days as u32,
                threshold_ms: Some(150.0),
            })
            .collect();
        slo_window += median(
            &timed(runs, || async {
                Ok(slo::window_counts_many(pool, &slos).await?)
            })
            .await?,
        );
        slo_burn += median(
            &timed(runs, || async {
                Ok(slo::burn_counts_many(pool, &slos).await?)
            })
            .await?,
        );
        // Every target with an slo of its own besides its probe's, in the same queries.
        let own: Vec<TargetSloQuery> = probes
            .iter()
            .flat_map(|p| {
                names.iter().map(move |t| TargetSloQuery {
                    probe: format!("bench/probe-{p}"),
                    target: t.clone(),
                    window_days: days as u32,
                    threshold_ms: Some(100.0),
                })
            })
            .collect();
        target_window += median(
            &timed(runs, || async {
                Ok(slo::window_counts_all(pool, &slos, &own).await?)
            })
            .await?,
        );
        target_burn += median(
            &timed(runs, || async {
                Ok(slo::burn_counts_all(pool, &slos, &own).await?)
            })
            .await?,
        );
    }
    let mut with_new = names.clone();
    with_new.push("target-new".to_owned());
    let lookup = median(
        &timed(runs, || async {
            Ok(status::newest_sample(pool, "bench/probe-0", &with_new).await?)
        })
        .await?,
    );
    // The status page's refresh: every probe's 24 h / 7 d / 30 d figures and 90 daily bars.
    let all: Vec<String> = (0..PROBES).map(|p| format!("bench/probe-{p}")).collect();
    let page = median(
        &timed(runs, || async {
            Ok(fiberstack_operator::statuspage::figures::rollups(pool, &all, Utc::now()).await?)
        })
        .await?,
    );
    let p95s = median(
        &timed(runs, || async {
            Ok(
                fiberstack_operator::statuspage::figures::read_percentiles(pool, &all, Utc::now())
                    .await?,
            )
        })
        .await?,
    );
    let alone = median(&each);
    let probes = PROBES as f64;
    println!(
        "status figures: {alone:.1} ms per probe alone, {:.1} ms per probe batched per region ({batched:.0} ms for all 3 regions); newest-sample lookup with a target never sampled {lookup:.2} ms",
        batched / probes
    );
    println!(
        "spec.slo: {days}-day window counts {slo_window:.0} ms for all {PROBES} probes ({:.1} ms per probe; the operator reads them every 5 minutes), burn-rate windows {slo_burn:.0} ms ({:.1} ms per probe, every status period)",
        slo_window / probes,
        slo_burn / probes
    );
    println!(
        "spec.slo and every target's own slo ({targets} targets): window counts {target_window:.0} ms, burn-rate windows {target_burn:.0} ms, for all {PROBES} probes"
    );
    println!(
        "status page: 24 h / 7 d / 30 d uptime and loss and 90 bars of all {targets} targets in {page:.0} ms per background refresh; their p95s from the merged histograms {p95s:.0} ms (read every 5 minutes)"
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "status", "targets": targets, "hours": hours, "slo_days": days,
            "status_per_probe_ms": alone, "status_batched_per_probe_ms": batched / probes,
            "new_target_lookup_ms": lookup,
            "slo_window_ms_all": slo_window, "slo_burn_ms_all": slo_burn,
            "slo_with_targets_window_ms_all": target_window,
            "slo_with_targets_burn_ms_all": target_burn,
            "status_page_rollups_ms": page, "status_page_p95s_ms": p95s,
        })
    );
    Ok(())
}
