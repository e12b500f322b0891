//! The Grafana dashboards and the operator's status queries at fleet scale (issue 17), against
//! the databases of `make env-up`. Generates the dataset server-side in a fresh database
//! (`generate_series`; by default 24 hours of 1,000 targets at a 10 s interval, 8.64M samples:
//! 10 nodes in 3 regions, 20 probes of 50 targets, each probe on one node), refreshes the
//! rollups, then runs every variable and panel query of `charts/fiberstack/dashboards/` with
//! Grafana's macros expanded as `tests/dashboards.rs` expands them (range: the last `hours`),
//! and the operator's status queries, warm. Prints the median and p95 of each query, then one
//! JSON line. Prints figures; never fails on time. The database is dropped afterwards.
//!
//!   cargo bench -p fiber-etl --bench dashboards
//!   FIBER_DASH_TARGETS=200 FIBER_DASH_HOURS=6 cargo bench -p fiber-etl --bench dashboards
//!
//! Settings (environment): FIBER_DASH_TARGETS (1000; a multiple of the 20 probes),
//! FIBER_DASH_HOURS (24), FIBER_DASH_RUNS (timed runs per query after one warm-up, 5),
//! FIBER_DASH_MODE (`postgres`, or `timescaledb` for the PGlite TimescaleDB of TIMESCALE_URL).

use std::collections::BTreeMap;
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/grafana/mod.rs"]
mod grafana;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Duration, Utc};
use fiber_etl::migrate::{StorageMode, migrate};
use fiberstack_e2e::LocalEnv;
use fiberstack_e2e::bench::setting;
use fiberstack_plumbing::postgres::DbConfig;
use grafana::{QueryContext, ROLLUPS, VariableValue, load_dashboards, rows};
use sqlx::PgPool;

use fiberstack_e2e::bench::{PROBES, fleet_dataset, timed};

/// The interval Grafana picks for a panel about 1,000 points wide: the range over 1,000,
/// rounded up to one of its steps.
fn grafana_interval_for(range: Duration) -> Duration {
    let wanted = range.num_seconds() / 1000;
    [
        10, 30, 60, 300, 600, 900, 1800, 3600, 10800, 21600, 43200, 86400,
    ]
    .into_iter()
    .find(|s| *s >= wanted)
    .map_or(Duration::days(1), Duration::seconds)
}

async fn refresh_rollups(pool: &PgPool, mode: StorageMode, from: DateTime<Utc>) -> Result<()> {
    // Wide enough for whole daily buckets, which TimescaleDB's refresh requires.
    let (from, to) = (from - Duration::days(2), Utc::now() + Duration::days(1));
    match mode {
        StorageMode::TimescaleDb => {
            for view in ROLLUPS {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "call refresh_continuous_aggregate('{view}', '{}', '{}')",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                )))
                .execute(pool)
                .await?;
            }
        }
        StorageMode::Postgres => {
            sqlx::query("select fiberstack_refresh_rollups($1, $2)")
                .bind(from)
                .bind(to)
                .execute(pool)
                .await?;
        }
    }
    sqlx::raw_sql("analyze").execute(pool).await?;
    Ok(())
}

/// The whole dataset's p95 latency merged from the per-node hourly histograms against the
/// exact one from the raw samples: (merged, exact, relative error in percent).
async fn sketch_error(pool: &PgPool) -> Result<(f64, f64, f64)> {
    let (merged, exact): (f64, f64) = sqlx::query_as(
        "select (select fiberstack_latency_quantile(0.95, array_agg(bin), array_agg(samples))
                   from (select bin, sum(samples) as samples from metrics_latency_node_hourly
                          group by bin) h),
                (select percentile_cont(0.95) within group (order by latency_ms) from metrics)",
    )
    .fetch_one(pool)
    .await?;
    Ok((merged, exact, 100.0 * (merged - exact).abs() / exact))
}

/// The value at quantile `q` of sorted `values` (nearest rank).
fn quantile(values: &[f64], q: f64) -> f64 {
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

struct Measured {
    name: String,
    median: f64,
    p95: f64,
}

/// Every variable and panel of every dashboard: a single-value variable takes its first
/// value, a multi-value one all of them (Grafana's "All").
async fn measure_dashboards(
    pool: &PgPool,
    timescaledb: bool,
    hours: u64,
    runs: usize,
) -> Result<Vec<Measured>> {
    let now = Utc::now();
    let range = Duration::hours(hours as i64);
    let context = |variables: &BTreeMap<String, VariableValue>| QueryContext {
        from: now - range,
        to: now,
        interval: grafana_interval_for(range),
        timescaledb,
        variables: variables.clone(),
    };
    let mut measured = Vec::new();
    let mut record = |name: String, ms: Vec<f64>| {
        let m = Measured {
            median: quantile(&ms, 0.5),
            p95: quantile(&ms, 0.95),
            name,
        };
        println!("{:>10.1} {:>10.1}  {}", m.median, m.p95, m.name);
        measured.push(m);
    };
    println!("{:>10} {:>10}  query", "median ms", "p95 ms");
    for dashboard in load_dashboards()? {
        let file = dashboard.file.trim_end_matches(".json").to_owned();
        let mut chosen = BTreeMap::new();
        for variable in dashboard.json["templating"]["list"]
            .as_array()
            .context("templating.list")?
        {
            if variable["type"] != "query" {
                continue;
            }
            let name = variable["name"].as_str().context("variable name")?;
            let sql = context(&chosen).expand(variable["query"].as_str().context("query")?)?;
            let ms = timed(runs, || rows(pool, &sql)).await?;
            let values: Vec<String> = rows(pool, &sql)
                .await?
                .into_iter()
                .filter_map(|row| row.values().next()?.as_str().map(str::to_owned))
                .collect();
            let Some(first) = values.first().cloned() else {
                bail!("{file}: variable {name} offers no value: {sql}");
            };
            let multi = variable["multi"].as_bool().unwrap_or(false)
                || variable["includeAll"].as_bool().unwrap_or(false);
            chosen.insert(
                name.to_owned(),
                if multi {
                    VariableValue::Multi(values)
                } else {
                    VariableValue::Single(first)
                },
            );
            record(format!("{file}: variable {name}"), ms);
        }
        for panel in dashboard.json["panels"].as_array().context("panels")? {
            let title = panel["title"].as_str().context("panel title")?;
            for target in panel["targets"].as_array().context("targets")? {
                let sql = context(&chosen).expand(target["rawSql"].as_str().context("rawSql")?)?;
                let ms = timed(runs, || async {
                    rows(pool, &sql)
                        .await
                        .with_context(|| format!("{file}: {title}: {sql}"))
                })
                .await?;
                record(format!("{file}: {title}"), ms);
            }
        }
    }
    Ok(measured)
}

/// Where the dataset lives: a database of its own on PostgreSQL 15, or a schema of its own
/// on the TimescaleDB (PGlite) server, which serves one database.
enum Database {
    Postgres(LocalEnv, String),
    Timescale(common::TimescaleSchema),
}

impl Database {
    async fn drop(self) -> Result<()> {
        match self {
            Self::Postgres(env, url) => env.drop_postgres_database(&url, &[]).await,
            Self::Timescale(schema) => schema.drop().await,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let targets = setting("FIBER_DASH_TARGETS", 1000);
    let hours = setting("FIBER_DASH_HOURS", 24);
    let runs = setting("FIBER_DASH_RUNS", 5).max(1) as usize;
    let mode = std::env::var("FIBER_DASH_MODE").unwrap_or_else(|_| "postgres".to_owned());
    if targets == 0 || !targets.is_multiple_of(PROBES) {
        bail!("FIBER_DASH_TARGETS={targets}: must be a positive multiple of {PROBES} (the probes)");
    }
    if hours == 0 {
        bail!("FIBER_DASH_HOURS=0: must be at least 1");
    }
    let database = match mode.as_str() {
        "postgres" => {
            let env = LocalEnv::load()?;
            let url = env.fresh_postgres_database("bench_dashboards").await?;
            Database::Postgres(env, url)
        }
        "timescaledb" => {
            Database::Timescale(common::TimescaleSchema::create("bench_dashboards").await?)
        }
        other => bail!("FIBER_DASH_MODE={other:?}: must be postgres or timescaledb"),
    };
    let pool = match &database {
        Database::Postgres(_, url) => DbConfig::new(url).connect().await?,
        Database::Timescale(schema) => schema.pool.clone(),
    };
    let outcome = async {
        let storage = migrate(&pool).await?.mode;
        let now = Utc::now();
        println!(
            "dashboards: {targets} targets x {hours} h at 10 s ({} samples), {storage}",
            targets * hours * 360
        );
        let start = Instant::now();
        fleet_dataset(&pool, targets, hours, now).await?;
        println!("generated in {:.0} s", start.elapsed().as_secs_f64());
        let start = Instant::now();
        refresh_rollups(&pool, storage, now - Duration::hours(hours as i64 + 1)).await?;
        println!(
            "rollups refreshed in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        let sketch_error = sketch_error(&pool).await?;
        println!(
            "fleet p95 from the node histograms: {:.3} ms, exact {:.3} ms ({:.3} % off)",
            sketch_error.0, sketch_error.1, sketch_error.2
        );
        let measured =
            measure_dashboards(&pool, storage == StorageMode::TimescaleDb, hours, runs).await?;
        Ok::<_, anyhow::Error>((storage, measured, sketch_error.2))
    }
    .await;
    // The TimescaleDB schema is dropped through the same pool.
    if matches!(database, Database::Postgres(..)) {
        pool.close().await;
    }
    let dropped = database.drop().await;
    if let Err(e) = &outcome {
        eprintln!("failed: {e:#}");
    }
    dropped?;
    let (storage, measured, sketch_error_pct) = outcome?;

    let mut p95s: Vec<f64> = measured.iter().map(|m| m.p95).collect();
    p95s.sort_by(f64::total_cmp);
    let slowest = measured
        .iter()
        .max_by(|a, b| a.median.total_cmp(&b.median))
        .context("no query ran")?;
    let fleet_refresh: f64 = measured
        .iter()
        .filter(|m| m.name.starts_with("fleet:"))
        .map(|m| m.median)
        .sum();
    println!(
        "over {} queries: p95 of the per-query p95s {:.1} ms; {} over 100 ms; Fleet refresh {:.0} ms (sum of medians)",
        measured.len(),
        quantile(&p95s, 0.95),
        measured.iter().filter(|m| m.p95 > 100.0).count(),
        fleet_refresh
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "dashboards",
            "mode": storage.to_string(),
            "targets": targets,
            "hours": hours,
            "panel_p95_ms": (quantile(&p95s, 0.95) * 10.0).round() / 10.0,
            "slowest_panel": slowest.name,
            "slowest_ms": (slowest.median * 10.0).round() / 10.0,
            "fleet_refresh_ms": fleet_refresh.round(),
            "sketch_p95_error_pct": (sketch_error_pct * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
