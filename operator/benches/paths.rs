//! What path-change detection costs the database at fleet scale (issue 14): the traceroute
//! rounds of every target of a region read in one statement per status period
//! (`paths::rounds_many`), on generated rounds — FIBER_BENCH_TARGETS traceroute targets
//! (1,000: 20 probes × 50), each measured from 3 nodes every 60 s for FIBER_BENCH_HOURS
//! (2) with 10 hops a round; every other target switches to another path halfway through the
//! last 15 minutes, so the window holds two paths per node and two hop lists are read.
//! Prints the median of 7 warm runs per region batch and for the whole fleet, and one JSON
//! line; never fails on time.
//!
//! `cargo bench -p fiberstack-operator --bench paths`

use std::time::{Duration as StdDuration, Instant};

use anyhow::Result;
use fiberstack_e2e::bench::{PROBES, setting, timed};
use fiberstack_operator::paths::{self, PathQuery};
use sqlx::PgPool;

const NODES_PER_TARGET: i32 = 3;
const HOPS: i32 = 10;
const INTERVAL_SECS: i32 = 60;

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let targets = setting("FIBER_BENCH_TARGETS", 1000);
    let hours = setting("FIBER_BENCH_HOURS", 2).max(1);
    anyhow::ensure!(
        targets > 0 && targets.is_multiple_of(PROBES),
        "FIBER_BENCH_TARGETS={targets}: must be a positive multiple of {PROBES}"
    );
    let env = fiberstack_e2e::LocalEnv::load()?;
    let url = env.fresh_postgres_database("fs_paths_bench").await?;
    fiberstack_e2e::etl::migrate(&url, None).await?;
    let pool = PgPool::connect(&url).await?;
    let result = run(&pool, targets, hours).await;
    pool.close().await;
    env.drop_postgres_database(&url, &[]).await?;
    result
}

async fn run(pool: &PgPool, targets: u64, hours: u64) -> Result<()> {
    let per_probe = (targets / PROBES) as i32;
    let start = Instant::now();
    // Round r of target t of probe p from node n; the path of the round: route 0, or route 1
    // for odd targets in the last 7 minutes (fingerprints are 16 hex digits per route).
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, address, up, latency_ms,
                              path_fingerprint)
         select date_trunc('minute', now()) - make_interval(secs => r * $3),
                'node-' || ((p + n) % 10), 'bench/probe-' || p, 'region-' || (p % 3),
                'target-' || t, 'traceroute', '10.9.0.1', true, 20,
                case when t % 2 = 1 and r < 7 then 'bbbbbbbbbbbbbbbb' else 'aaaaaaaaaaaaaaaa' end
           from generate_series(0, $1 - 1) p, generate_series(0, $2 - 1) t,
                generate_series(0, $4 - 1) n, generate_series(0, $5 - 1) r",
    )
    .bind(PROBES as i32)
    .bind(per_probe)
    .bind(INTERVAL_SECS)
    .bind(NODES_PER_TARGET)
    .bind((hours * 3600) as i32 / INTERVAL_SECS)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into hops (time, node, probe, target, ttl, address, sent, received, packet_loss,
                           latency_ms)
         select m.time, m.node, m.probe, m.target, h,
                ('10.' || case when m.path_fingerprint = 'aaaaaaaaaaaaaaaa' then 1 else 2 end
                       || '.' || h || '.1')::inet,
                3, 3, 0, h * 2
           from metrics m, generate_series(1, $1) h",
    )
    .bind(HOPS)
    .execute(pool)
    .await?;
    sqlx::raw_sql("analyze").execute(pool).await?;
    let (rounds, hops): (i64, i64) =
        sqlx::query_as("select (select count(*) from metrics), (select count(*) from hops)")
            .fetch_one(pool)
            .await?;
    println!(
        "{targets} traceroute targets × {NODES_PER_TARGET} nodes, {hours} h every {INTERVAL_SECS} s: \
         {rounds} rounds, {hops} hops generated in {:.0} s",
        start.elapsed().as_secs_f64()
    );

    let lookback = paths::lookback(StdDuration::from_secs(INTERVAL_SECS as u64), 3).as_secs_f64();
    let query = |p: u64| {
        (0..per_probe).map(move |t| PathQuery {
            probe: format!("bench/probe-{p}"),
            target: format!("target-{t}"),
            lookback_secs: lookback,
        })
    };
    let runs = 7;
    let mut regions = Vec::new();
    for region in 0..3 {
        let queries: Vec<PathQuery> = (0..PROBES)
            .filter(|p| p % 3 == region)
            .flat_map(query)
            .collect();
        let read = paths::rounds_many(pool, &queries).await?;
        let with_hops = read
            .values()
            .flatten()
            .filter(|r| r.hops.as_ref().is_some_and(|h| h.len() == HOPS as usize))
            .count();
        let ms = median(
            &timed(runs, || async {
                Ok(paths::rounds_many(pool, &queries).await?)
            })
            .await?,
        );
        println!(
            "region-{region}: {} targets in one statement: {ms:.1} ms median ({:.3} ms per target), \
             {} rounds read, {with_hops} with their hops",
            queries.len(),
            ms / queries.len() as f64,
            read.values().map(Vec::len).sum::<usize>()
        );
        regions.push(ms);
    }
    let all: Vec<PathQuery> = (0..PROBES).flat_map(query).collect();
    let fleet = median(&timed(runs, || async { Ok(paths::rounds_many(pool, &all).await?) }).await?);
    println!(
        "the whole fleet, {} targets in one statement: {fleet:.1} ms median",
        all.len()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "paths",
            "targets": targets,
            "rounds": rounds,
            "hops": hops,
            "region_batch_ms": regions,
            "fleet_ms": fleet,
        })
    );
    Ok(())
}
