//! The Grafana dashboards and the operator's status queries at fleet scale (issue 17), against
//! the databases of `make env-up`. Generates the dataset server-side in a fresh database
//! (`generate_series`; by default 24 hours of 1,000 targets at a 10 s interval, 8.64M samples:
//! 10 nodes in 3 regions, 20 probes of 50 targets, each probe on one node), refreshes the
//! rollups and vacuums what it wrote (as autovacuum would have by the time a day is stored),
//! then runs every variable and panel query of `charts/fiberstack/dashboards/` with
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
//! For working on a slow panel without generating the dataset each time: FIBER_DASH_KEEP=1
//! keeps the database (or TimescaleDB schema) and prints its name; FIBER_DASH_REUSE=<name>
//! measures a kept one (ending at its newest sample: as now() moves on, more of the range is
//! read from the hourly latency histograms than on a fresh dataset — the six-hour bucket under
//! way is read only by a range that ends in the current hour) and, with FIBER_DASH_KEEP unset,
//! drops it afterwards; FIBER_DASH_ONLY=<text> times only the queries whose name contains the
//! text. FIBER_DASH_RAW_HOURS=<n> keeps the raw samples of the last n hours (whole UTC days)
//! while generating: each day's rollups are refreshed, then its raw samples deleted (plain
//! mode) or its chunks dropped (TimescaleDB), but those of `bench/probe-0`, whose target the
//! Target dashboard shows over the whole range. Panels over more than an hour read raw samples
//! of no other probe, so 7 days (`FIBER_DASH_HOURS=168 FIBER_DASH_RAW_HOURS=24`) fit in the
//! disk a day of raw samples takes — as with a raw retention shorter than the range.
//!
//! Last, the same small workload runs on both engines (PostgreSQL 15 and the PGlite
//! TimescaleDB): index-only range sums and a whole-table aggregate on a plain table, to
//! compare the two. The TimescaleDB here is PostgreSQL compiled to WebAssembly: 1.3–1.7 ×
//! slower than PostgreSQL 15 on that workload (2026-11-30). In that mode the bench also prints
//! the slowest query's p95 divided by those two factors: an estimate of it on a native server,
//! not a measurement (TimescaleDB's own per-scan work stays in it: it is not WebAssembly's).
//! Drop a kept database with `drop database <name>` on DATABASE_URL, a kept schema with
//! FIBER_DASH_REUSE=<name> and no FIBER_DASH_KEEP (TimescaleDB wants its views dropped first).

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

use fiberstack_e2e::bench::{PROBES, fleet_dataset, fleet_dataset_with, timed};

/// With FIBER_DASH_RAW_HOURS, the probe whose raw samples stay for the whole range: the
/// Target dashboard (the first probe of its variable) reads one target's raw samples over
/// its whole range.
const RAW_KEPT_PROBE: &str = "bench/probe-0";

/// The start of the UTC day of `t`.
fn utc_day_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp();
    DateTime::from_timestamp(secs - secs.rem_euclid(86_400), 0).unwrap_or(t)
}

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

/// The rollups of [from, to) computed from the raw samples (in plain mode exactly that
/// window: the raw samples before `from` may be gone, see FIBER_DASH_RAW_HOURS).
async fn refresh_rollups(
    pool: &PgPool,
    mode: StorageMode,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<()> {
    match mode {
        StorageMode::TimescaleDb => {
            // Wide enough for whole daily buckets, which TimescaleDB's refresh requires, and
            // no wider: a window over days whose raw chunks were dropped (FIBER_DASH_RAW_HOURS)
            // empties their rollups.
            let (from, to) = (utc_day_start(from), to + Duration::days(1));
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
    // What autovacuum has done to a day of stored samples by the time it is read: statistics,
    // and the visibility map that lets an index-only scan skip the table (Region "Targets by
    // node" reads each row's histograms that way; on pages never marked it fetches every row
    // from the table: 358–770 ms instead of ~80).
    let tables: Vec<String> = match mode {
        // The samples and the aggregates' materialized hypertables of this schema alone (the
        // database holds other schemas), and each of their chunks by name, as autovacuum
        // takes them. Vacuumed only through their hypertable, the chunks left Targets by node
        // at 203-262 ms (PGlite) where one `vacuum analyze` of the two it reads, by name, gave
        // 120-128 ms on the same data; their page counts, tuples, all-visible pages and column
        // statistics were the same before and after, and vacuuming through the hypertable
        // again did not undo it (cause not found). It was the "fresh run slower than a reuse"
        // of earlier notes: a reuse followed a manual database-wide vacuum.
        StorageMode::TimescaleDb => sqlx::query_scalar(
            "with hypertables (s, t) as (
                 select current_schema()::text, 'metrics'::text
                 union all
                 select materialization_hypertable_schema::text, materialization_hypertable_name::text
                   from timescaledb_information.continuous_aggregates
                  where view_schema = current_schema())
             select format('%I.%I', s, t) from hypertables
             union all
             select format('%I.%I', k.chunk_schema, k.chunk_name)
               from timescaledb_information.chunks k
               join hypertables h on k.hypertable_schema = h.s and k.hypertable_name = h.t",
        )
        .fetch_all(pool)
        .await?,
        StorageMode::Postgres => Vec::new(),
    };
    // Vacuum marks a page all-visible only when no transaction still open could miss its rows:
    // autovacuum's own work on the samples just written (an ANALYZE holds a snapshot) kept the
    // hourly histograms unmarked when vacuumed right after they were written. So: wait for
    // other snapshots to end, vacuum, and again until it took.
    let started = std::time::Instant::now();
    let mut rounds = 0;
    let (visible, pages) = loop {
        rounds += 1;
        while started.elapsed() < std::time::Duration::from_secs(300) {
            let holders: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                  where datname = current_database() and backend_xmin is not null
                    and pid <> pg_backend_pid()",
            )
            .fetch_one(pool)
            .await?;
            if holders == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "vacuum analyze {}",
            tables.join(", ")
        )))
        .execute(pool)
        .await?;
        let (visible, pages): (i64, i64) = sqlx::query_as(match mode {
            StorageMode::Postgres => {
                "select relallvisible::int8, relpages::int8 from pg_class
                  where oid = 'metrics_latency_hourly'::regclass"
            }
            // The materialized hypertable's chunks hold the rows.
            StorageMode::TimescaleDb => {
                "select coalesce(sum(c.relallvisible), 0)::int8, coalesce(sum(c.relpages), 0)::int8
                   from timescaledb_information.chunks k
                   join timescaledb_information.continuous_aggregates a
                     on a.materialization_hypertable_schema = k.hypertable_schema
                    and a.materialization_hypertable_name = k.hypertable_name
                   join pg_class c on c.oid = format('%I.%I', k.chunk_schema, k.chunk_name)::regclass
                  where a.view_schema = current_schema() and a.view_name = 'metrics_latency_hourly'"
            }
        })
        .fetch_one(pool)
        .await?;
        if visible * 10 >= pages * 9 || rounds >= 10 {
            break (visible, pages);
        }
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    };
    println!(
        "vacuumed ({rounds} rounds, {:.1} s): hourly histograms {visible} of {pages} pages all-visible",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// With FIBER_DASH_RAW_HOURS: the raw samples before `cut` (a UTC day's start) go, but
/// those of [`RAW_KEPT_PROBE`], once their rollups are refreshed (no later refresh may cover
/// those days: it would empty their rollups). Plain mode deletes them. TimescaleDB drops the
/// day's chunks (its retention's way, and far cheaper in PGlite than deleting 8.6M rows) after
/// copying the kept probe's samples to `bench_raw_kept`, which go back into `metrics` after
/// the last refresh; and checkpoints, as the generating session holds the server's one
/// connection for the whole run and PGlite recycles its WAL only at a checkpoint.
async fn drop_raw_before(pool: &PgPool, mode: StorageMode, cut: DateTime<Utc>) -> Result<()> {
    match mode {
        StorageMode::Postgres => {
            sqlx::query("delete from metrics where time < $1 and probe <> $2")
                .bind(cut)
                .bind(RAW_KEPT_PROBE)
                .execute(pool)
                .await?;
            sqlx::raw_sql("vacuum metrics").execute(pool).await?;
        }
        StorageMode::TimescaleDb => {
            sqlx::raw_sql("create table if not exists bench_raw_kept (like metrics)")
                .execute(pool)
                .await?;
            sqlx::query(
                "insert into bench_raw_kept select * from metrics where time < $1 and probe = $2",
            )
            .bind(cut)
            .bind(RAW_KEPT_PROBE)
            .execute(pool)
            .await?;
            sqlx::query("select drop_chunks('metrics', older_than => $1)")
                .bind(cut)
                .execute(pool)
                .await?;
            sqlx::raw_sql("checkpoint").execute(pool).await?;
        }
    }
    Ok(())
}

/// One workload, the same on both engines, to compare their speed: a table of 280,000 rows
/// (700 for each of 400 keys) with an index holding what is summed, then (a) 400 index-only
/// range sums of 400 rows, one per key through a lateral join — the shape of Region "Targets
/// by node", whose function reads each row's histograms by index ranges — and (b) one
/// aggregate of the whole table. Median of `runs` after a warm-up, in ms: (index, scan).
async fn calibration(pool: &PgPool, runs: usize) -> Result<(f64, f64)> {
    sqlx::raw_sql(
        "drop table if exists bench_calibration;
         create table bench_calibration as
           select g % 400 as k, g / 400 as b, g % 698 as bin, 1::int8 as samples
             from generate_series(0, 279999) g;
         create index bench_calibration_k_b on bench_calibration (k, b) include (bin, samples)",
    )
    .execute(pool)
    .await?;
    // Its own statement: vacuum refuses to run in the implicit transaction of a batch.
    sqlx::raw_sql("vacuum analyze bench_calibration")
        .execute(pool)
        .await?;
    let index = timed(runs, || async {
        sqlx::raw_sql(
            "select sum(s) from generate_series(0, 399) k(k)
               cross join lateral (select sum(samples) as s from bench_calibration c
                                    where c.k = k.k and c.b >= 100 and c.b < 500) x",
        )
        .execute(pool)
        .await
        .map_err(anyhow::Error::from)
    })
    .await?;
    let scan = timed(runs, || async {
        sqlx::raw_sql("select bin, sum(samples) from bench_calibration group by bin")
            .execute(pool)
            .await
            .map_err(anyhow::Error::from)
    })
    .await?;
    sqlx::raw_sql("drop table bench_calibration")
        .execute(pool)
        .await?;
    Ok((quantile(&index, 0.5), quantile(&scan, 0.5)))
}

/// [`calibration`] on PostgreSQL 15 (a scratch database) and on the TimescaleDB (PGlite)
/// server (a scratch schema) of `make env-up`, one after the other in this run.
async fn calibrate_engines(runs: usize) -> Result<((f64, f64), (f64, f64))> {
    let env = LocalEnv::load()?;
    let url = env.fresh_postgres_database("bench_calibration").await?;
    let pool = DbConfig::new(&url).connect().await?;
    let postgres = calibration(&pool, runs).await;
    pool.close().await;
    env.drop_postgres_database(&url, &[]).await?;
    let schema = common::TimescaleSchema::create("bench_calibration").await?;
    let timescale = calibration(&schema.pool, runs).await;
    schema.drop().await?;
    Ok((postgres?, timescale?))
}

/// The p95 latency of every sample since `since` (whole hours) merged from the per-node
/// hourly histograms against the exact one from the raw samples: (merged, exact, relative
/// error in percent).
async fn sketch_error(pool: &PgPool, since: DateTime<Utc>) -> Result<(f64, f64, f64)> {
    let (merged, exact): (f64, f64) = sqlx::query_as(
        "select (select fiberstack_latency_quantile(0.95, array_agg(bin), array_agg(samples))
                   from (select bin, sum(samples) as samples from metrics_latency_node_hourly
                          where bucket >= $1 group by bin) h),
                (select percentile_cont(0.95) within group (order by latency_ms) from metrics
                  where time >= $1)",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok((merged, exact, 100.0 * (merged - exact).abs() / exact))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
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
    now: DateTime<Utc>,
    hours: u64,
    runs: usize,
    only: &str,
) -> Result<Vec<Measured>> {
    let range = Duration::hours(hours as i64);
    let context = |variables: &BTreeMap<String, VariableValue>| QueryContext {
        from: now - range,
        to: now,
        interval: grafana_interval_for(range),
        timescaledb,
        variables: variables.clone(),
    };
    let mut measured = Vec::new();
    let wanted = |name: &str| name.contains(only);
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
            let name = variable["name"].as_str().context("variable name")?;
            // A value the user types: its default.
            if variable["type"] == "textbox" {
                let value = variable["query"].as_str().context("textbox default")?;
                chosen.insert(name.to_owned(), VariableValue::Single(value.to_owned()));
                continue;
            }
            if variable["type"] != "query" {
                continue;
            }
            let sql = context(&chosen).expand(variable["query"].as_str().context("query")?)?;
            let measured_name = format!("{file}: variable {name}");
            let ms = if wanted(&measured_name) {
                timed(runs, || rows(pool, &sql)).await?
            } else {
                Vec::new()
            };
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
            if !ms.is_empty() {
                record(measured_name, ms);
            }
        }
        for panel in dashboard.json["panels"].as_array().context("panels")? {
            let title = panel["title"].as_str().context("panel title")?;
            if !wanted(&format!("{file}: {title}")) {
                continue;
            }
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
    /// A database (or schema) kept by an earlier run with FIBER_DASH_KEEP=1.
    async fn reuse(mode: &str, name: &str) -> Result<Self> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("FIBER_DASH_REUSE={name:?}: a database or schema name");
        }
        let env = LocalEnv::load()?;
        Ok(match mode {
            "postgres" => {
                let (base, query) = env
                    .database_url
                    .split_once('?')
                    .unwrap_or((&env.database_url, ""));
                let (server, _) = base.rsplit_once('/').context("DATABASE_URL")?;
                let url = if query.is_empty() {
                    format!("{server}/{name}")
                } else {
                    format!("{server}/{name}?{query}")
                };
                Self::Postgres(env, url)
            }
            _ => {
                let pool = DbConfig {
                    schema: Some(name.to_owned()),
                    max_connections: 1,
                    ..DbConfig::new(&env.timescale_url)
                }
                .connect()
                .await?;
                Self::Timescale(common::TimescaleSchema {
                    pool,
                    name: name.to_owned(),
                })
            }
        })
    }

    fn name(&self) -> String {
        match self {
            Self::Postgres(_, url) => {
                let base = url.split_once('?').map_or(url.as_str(), |(base, _)| base);
                base.rsplit_once('/').map_or(base, |(_, n)| n).to_owned()
            }
            Self::Timescale(schema) => schema.name.clone(),
        }
    }

    async fn drop(self) -> Result<()> {
        match self {
            Self::Postgres(env, url) => env.drop_postgres_database(&url, &[]).await,
            Self::Timescale(schema) => schema.drop().await,
        }
    }
}

/// How many rows the samples and each rollup hold.
async fn row_counts(pool: &PgPool) -> Result<()> {
    let mut counts = Vec::new();
    for table in ["metrics", "metrics_hourly", "metrics_daily"]
        .into_iter()
        .chain(ROLLUPS.into_iter().skip(2))
    {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
                .fetch_one(pool)
                .await?;
        counts.push(format!("{table} {n}"));
    }
    println!("rows: {}", counts.join(", "));
    Ok(())
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
    let raw_hours = setting("FIBER_DASH_RAW_HOURS", 0);
    let keep = setting("FIBER_DASH_KEEP", 0) != 0;
    let reuse = std::env::var("FIBER_DASH_REUSE").unwrap_or_default();
    let only = std::env::var("FIBER_DASH_ONLY").unwrap_or_default();
    let database = match mode.as_str() {
        "postgres" | "timescaledb" if !reuse.is_empty() => Database::reuse(&mode, &reuse).await?,
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
        println!(
            "dashboards: {targets} targets x {hours} h at 10 s ({} samples), {storage}",
            targets * hours * 360
        );
        let (now, sketch_error) = if reuse.is_empty() {
            let now = Utc::now();
            let start = Instant::now();
            // Raw samples of every probe are kept from here on (all of them without
            // FIBER_DASH_RAW_HOURS).
            let mut kept_from = now - Duration::hours(hours as i64 + 1);
            if raw_hours == 0 {
                fleet_dataset(&pool, targets, hours, now).await?;
            } else {
                kept_from = utc_day_start(kept_from);
                fleet_dataset_with(&pool, targets, hours, now, async |to| {
                    let cut = utc_day_start(to - Duration::hours(raw_hours as i64));
                    if cut > kept_from {
                        // The rollups of what goes first, then the raw samples but those
                        // of the probe the Target dashboard shows.
                        refresh_rollups(&pool, storage, kept_from, cut).await?;
                        drop_raw_before(&pool, storage, cut).await?;
                        kept_from = cut;
                    }
                    Ok(())
                })
                .await?;
                println!(
                    "raw samples kept for {raw_hours} h and whole UTC days (from {kept_from}), and {RAW_KEPT_PROBE}'s for all {hours} h; rollups for all {hours} h"
                );
            }
            println!("generated in {:.0} s", start.elapsed().as_secs_f64());
            let start = Instant::now();
            refresh_rollups(&pool, storage, kept_from, Utc::now()).await?;
            if raw_hours != 0 && storage == StorageMode::TimescaleDb {
                // The Target dashboard's probe back, once no refresh will read its days.
                sqlx::raw_sql(
                    "insert into metrics select * from bench_raw_kept; drop table bench_raw_kept",
                )
                .execute(&pool)
                .await?;
            }
            println!(
                "rollups refreshed in {:.0} s",
                start.elapsed().as_secs_f64()
            );
            row_counts(&pool).await?;
            let sketch_error = sketch_error(&pool, kept_from).await?;
            println!(
                "fleet p95 from the node histograms: {:.3} ms, exact {:.3} ms ({:.3} % off)",
                sketch_error.0, sketch_error.1, sketch_error.2
            );
            // The range ends when the dashboards are read, as in Grafana.
            (Utc::now(), sketch_error.2)
        } else {
            // The range ends at the kept dataset's newest sample.
            let newest: Option<DateTime<Utc>> = sqlx::query_scalar("select max(time) from metrics")
                .fetch_one(&pool)
                .await?;
            (
                newest.context("the kept dataset holds no samples")?,
                f64::NAN,
            )
        };
        let measured = measure_dashboards(
            &pool,
            storage == StorageMode::TimescaleDb,
            now,
            hours,
            runs,
            &only,
        )
        .await?;
        Ok::<_, anyhow::Error>((storage, measured, sketch_error))
    }
    .await;
    if let Err(e) = &outcome {
        eprintln!("failed: {e:#}");
    }
    if keep {
        println!(
            "kept {mode} dataset {}: FIBER_DASH_REUSE={} to measure it again",
            database.name(),
            database.name()
        );
    } else {
        // The TimescaleDB schema is dropped through the same pool.
        if matches!(database, Database::Postgres(..)) {
            pool.close().await;
        }
        database.drop().await?;
    }
    // PGlite serves one connection at a time: the calibration's comes after this one.
    pool.close().await;
    let (storage, measured, sketch_error_pct) = outcome?;
    let (postgres_speed, timescale_speed) = calibrate_engines(runs).await?;
    let (index_ratio, scan_ratio) = (
        timescale_speed.0 / postgres_speed.0,
        timescale_speed.1 / postgres_speed.1,
    );
    println!(
        "engines on one workload (median ms): 400 index-only range sums PostgreSQL {:.1}, TimescaleDB (PGlite) {:.1} ({index_ratio:.1}x); a 280,000-row aggregate {:.1} and {:.1} ({scan_ratio:.1}x)",
        postgres_speed.0, timescale_speed.0, postgres_speed.1, timescale_speed.1
    );

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
    // PGlite is PostgreSQL compiled to WebAssembly: the same plans run slower than on a
    // native server by the factors above. Scaled by them, the slowest query at PostgreSQL's
    // speed lies between the two (index probes, whole scans).
    let native = (storage == StorageMode::TimescaleDb).then(|| {
        let (low, high) = (
            slowest.p95 / index_ratio.max(scan_ratio),
            slowest.p95 / index_ratio.min(scan_ratio),
        );
        println!(
            "slowest at PostgreSQL's speed: {:.0}-{:.0} ms (its p95 {:.1} ms over the engine factors {:.1}x and {:.1}x)",
            low, high, slowest.p95, index_ratio, scan_ratio
        );
        [low.round(), high.round()]
    });
    println!(
        "{}",
        serde_json::json!({
            "bench": "dashboards",
            "mode": storage.to_string(),
            "targets": targets,
            "hours": hours,
            "panel_p95_ms": round1(quantile(&p95s, 0.95)),
            "slowest_panel": slowest.name,
            "slowest_ms": round1(slowest.median),
            "fleet_refresh_ms": fleet_refresh.round(),
            "sketch_p95_error_pct": (sketch_error_pct * 1000.0).round() / 1000.0,
            "raw_hours": (raw_hours != 0).then_some(raw_hours),
            "calibration_ms": {
                "postgres": { "index": round1(postgres_speed.0), "scan": round1(postgres_speed.1) },
                "timescaledb": { "index": round1(timescale_speed.0), "scan": round1(timescale_speed.1) },
            },
            "slowest_p95_at_postgres_speed_ms": native,
            "commit": fiberstack_e2e::bench::commit(),
        })
    );
    Ok(())
}
