//! The Grafana dashboards in `charts/fiberstack/dashboards/` run every query they hold —
//! template variables and panels — against both storage modes, with Grafana's PostgreSQL
//! macros expanded the way Grafana expands them, on seeded samples: TimescaleDB (PGlite, one
//! connection) and plain PostgreSQL 15. A query that errors, names a column that does not
//! exist, or returns nothing but NULLs on data that should fill it fails the test.

use std::collections::{BTreeMap, BTreeSet};

mod common;
mod grafana;

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Duration, Utc};
use common::TimescaleSchema;
use fiber_etl::migrate::{StorageMode, migrate};
use fiberstack_e2e::LocalEnv;
use fiberstack_plumbing::postgres::DbConfig;
use grafana::{QueryContext, ROLLUPS, VariableValue, load_dashboards, rows};
use sqlx::PgPool;

/// Seeds two regions over the last three hours: an ICMP target with loss on both nodes, an
/// HTTP target with phases in its metadata and a share of failures, a third node that has
/// gone silent, and the ETL's stream stats.
async fn seed(pool: &PgPool, now: DateTime<Utc>) -> Result<()> {
    sqlx::raw_sql(
        "insert into nodes (name, region, country, agent_version, last_seen_at) values
           ('gh-accra-1', 'ghana', 'GH', '0.1.0', now()),
           ('ng-lagos-1', 'nigeria', 'NG', '0.1.0', now()),
           ('ke-nairobi-1', 'kenya', 'KE', '0.1.0', now() - interval '1 hour')",
    )
    .execute(pool)
    .await?;
    // What ETL housekeeping records every 10 s; here one row a minute per region.
    sqlx::raw_sql(
        "insert into stream_stats (time, region, consumer, stream_length, pending, dead_letters)
         select now() - m * interval '1 minute', r, 'etl-0', (m % 13) * 4, m % 3, 2
           from generate_series(0, 179) m, unnest(array['ghana', 'nigeria']) r",
    )
    .execute(pool)
    .await?;
    // The operator's alert history: one episode over, one still firing.
    sqlx::raw_sql(
        "insert into alerts (id, namespace, probe, region, target, state, reason, started_at, ended_at, notified) values
           ('fiberstack/edge/api@1', 'fiberstack', 'edge', 'ghana', 'api', 'resolved',
            'uptime 88 % < 99 %', now() - interval '2 hours', now() - interval '90 minutes', '{pager}'),
           ('fiberstack/edge/gateway@2', 'fiberstack', 'edge', 'nigeria', 'gateway', 'firing',
            'packet loss 20 % > 2 %', now() - interval '20 minutes', null, '{}')",
    )
    .execute(pool)
    .await?;
    let mut values = Vec::new();
    for minute in 0..180 {
        let time = now - Duration::minutes(minute) - Duration::seconds(10);
        let t = time.to_rfc3339();
        for (node, region) in [("gh-accra-1", "ghana"), ("ng-lagos-1", "nigeria")] {
            let latency = 20.0 + (minute % 7) as f64 * 3.0;
            let loss = if minute % 10 == 0 { 20.0 } else { 0.0 };
            values.push(format!(
                "('{t}', '{node}', 'fiberstack/edge', '{region}', 'gateway', 'icmp', '10.0.0.1', true,
                  {latency}, {}, {}, 1.5, {loss}, 5, {}, null, null, '{{}}')",
                latency - 2.0,
                latency + 4.0,
                if loss > 0.0 { 4 } else { 5 },
            ));
            let up = minute % 9 != 0;
            let (status, error) = if up {
                ("200", "null".to_owned())
            } else {
                ("503", "'status 503 not in [200]'".to_owned())
            };
            values.push(format!(
                "('{t}', '{node}', 'fiberstack/edge', '{region}', 'api', 'http', 'http://10.0.0.2/health', {up},
                  {latency}, null, null, null, null, null, null, {status}, {error},
                  '{{\"dns_ms\": 1.0, \"connect_ms\": 2.0, \"tls_ms\": 3.5, \"ttfb_ms\": 9.0, \"total_ms\": 12.0}}')"
            ));
        }
    }
    let sql = format!(
        "insert into metrics (time, node, probe, region, target, kind, address, up,
           latency_ms, latency_min_ms, latency_max_ms, jitter_ms, packet_loss, sent, received,
           status_code, error, metadata) values {}",
        values.join(",\n")
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await?;
    // A traceroute target with its hops: gh-accra-1 moved from router A to router B (whose
    // second hop does not answer) 90 minutes ago; ng-lagos-1 stayed on A.
    sqlx::raw_sql(
        "insert into metrics (time, node, probe, region, target, kind, address, up, latency_ms,
                              path_fingerprint)
         select now() - m * interval '1 minute' - interval '20 seconds', n, 'fiberstack/edge', r,
                'path', 'traceroute', '10.9.0.1', true, 12.5,
                case when n = 'gh-accra-1' and m < 90 then 'bbbbbbbbbbbbbbbb' else 'aaaaaaaaaaaaaaaa' end
           from generate_series(0, 179) m,
                (values ('gh-accra-1', 'ghana'), ('ng-lagos-1', 'nigeria')) v(n, r);
         insert into hops (time, node, probe, target, ttl, address, sent, received, packet_loss,
                           latency_ms, latency_min_ms, latency_max_ms)
         select time, node, probe, target, ttl, address, 3, case when address is null then 0 else 3 end,
                case when address is null then 100 else 0 end,
                case when address is null then null else ttl * 4.0 end,
                case when address is null then null else ttl * 3.5 end,
                case when address is null then null else ttl * 4.5 end
           from (select m.time, m.node, m.probe, m.target, t.ttl,
                        case when m.path_fingerprint = 'aaaaaaaaaaaaaaaa' then ('10.1.0.' || t.ttl)::inet
                             when t.ttl = 2 then null
                             else ('10.2.0.' || t.ttl)::inet end as address
                   from metrics m, generate_series(1, 3) t(ttl)
                  where m.target = 'path') h;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn refresh_rollups(pool: &PgPool, mode: StorageMode, now: DateTime<Utc>) -> Result<()> {
    refresh_rollups_between(pool, mode, now - Duration::days(2), now + Duration::days(1)).await
}

async fn refresh_rollups_between(
    pool: &PgPool,
    mode: StorageMode,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<()> {
    let (from, to) = (from.to_rfc3339(), to.to_rfc3339());
    match mode {
        StorageMode::TimescaleDb => {
            // One CALL per statement: PGlite refuses CALL inside a multi-statement batch.
            for view in ROLLUPS {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "call refresh_continuous_aggregate('{view}', '{from}', '{to}')"
                )))
                .execute(pool)
                .await?;
            }
        }
        StorageMode::Postgres => {
            sqlx::query("select fiberstack_refresh_rollups($1::timestamptz, $2::timestamptz)")
                .bind(&from)
                .bind(&to)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// The ranges every query runs over: panels read raw samples up to an hour and the rollups
/// beyond, so both of their branches run; over three days some read whole days from the
/// daily rollups and the ends from the hourly ones.
const RANGES: [Duration; 3] = [Duration::minutes(30), Duration::hours(6), Duration::days(3)];

/// Every query of every dashboard, run on a seeded database for every choice a user can
/// make of its single-value variables (a multi-value one takes all its values). A query must
/// never fail; each panel must draw something (a row with a value) for at least one choice —
/// a loss panel has nothing to show for an HTTP target, but must for an ICMP one. Returns the
/// queries that ran.
async fn run_every_query(
    pool: &PgPool,
    timescaledb: bool,
    range: Duration,
) -> Result<BTreeSet<String>> {
    let now = Utc::now();
    let context = |variables: &BTreeMap<String, VariableValue>| QueryContext {
        from: now - range,
        to: now,
        interval: Duration::minutes(5),
        timescaledb,
        variables: variables.clone(),
    };
    let mut ran = BTreeSet::new();
    for dashboard in load_dashboards()? {
        let file = &dashboard.file;
        let mut choices = vec![BTreeMap::new()];
        // Variables in their order: a later one may use an earlier one's value.
        let variables = dashboard.json["templating"]["list"]
            .as_array()
            .context("templating.list")?;
        for variable in variables {
            let name = variable["name"].as_str().context("variable name")?;
            match variable["type"].as_str() {
                Some("datasource") => continue,
                Some("query") => {}
                // A value the user types: its default, which must be a number (the queries
                // cast it).
                Some("textbox") => {
                    let value = variable["query"].as_str().context("textbox default")?;
                    ensure!(
                        value.parse::<f64>().is_ok(),
                        "{file}: variable {name}: default {value:?} is not a number"
                    );
                    for chosen in &mut choices {
                        chosen.insert(name.to_owned(), VariableValue::Single(value.to_owned()));
                    }
                    ran.insert(format!("{file}: variable {name}"));
                    continue;
                }
                other => bail!("{file}: variable {name} of type {other:?}"),
            }
            let query = variable["query"].as_str().context("variable query")?;
            let multi = variable["multi"].as_bool().unwrap_or(false)
                || variable["includeAll"].as_bool().unwrap_or(false);
            let mut next = Vec::new();
            for chosen in &choices {
                let sql = context(chosen)
                    .expand(query)
                    .with_context(|| format!("{file}: variable {name}"))?;
                let values: Vec<String> = rows(pool, &sql)
                    .await
                    .with_context(|| format!("{file}: variable {name}: {sql}"))?
                    .into_iter()
                    .filter_map(|row| {
                        row.values()
                            .next()
                            .and_then(|v| v.as_str().map(str::to_owned))
                    })
                    .collect();
                ensure!(
                    !values.is_empty(),
                    "{file}: variable {name} offers no value on seeded data: {sql}"
                );
                let mut with = |value| {
                    let mut chosen = chosen.clone();
                    chosen.insert(name.to_owned(), value);
                    next.push(chosen);
                };
                if multi {
                    with(VariableValue::Multi(values));
                } else {
                    values
                        .into_iter()
                        .for_each(|v| with(VariableValue::Single(v)));
                }
            }
            choices = next;
            ran.insert(format!("{file}: variable {name}"));
        }

        for panel in dashboard.json["panels"].as_array().context("panels")? {
            let title = panel["title"].as_str().context("panel title")?;
            let targets = panel["targets"].as_array().context("panel targets")?;
            ensure!(!targets.is_empty(), "{file}: panel {title:?} has no query");
            for target in targets {
                let raw = target["rawSql"].as_str().context("rawSql")?;
                let mut drew = false;
                for chosen in &choices {
                    let sql = context(chosen)
                        .expand(raw)
                        .with_context(|| format!("{file}: panel {title:?}"))?;
                    let result = rows(pool, &sql)
                        .await
                        .with_context(|| format!("{file}: panel {title:?}: {sql}"))?;
                    if target["format"] == "time_series" {
                        ensure!(
                            result.iter().all(|row| row.contains_key("time")),
                            "{file}: time series panel {title:?} has no `time` column"
                        );
                    }
                    // Something to draw: a value besides the time and series name columns.
                    drew |= result.iter().any(|row| {
                        row.iter()
                            .any(|(k, v)| k != "time" && k != "metric" && !v.is_null())
                    });
                }
                ensure!(
                    drew,
                    "{file}: panel {title:?} draws nothing (no rows, or only NULLs) for any \
                     choice of variables on seeded data: {raw}"
                );
                ran.insert(format!("{file}: {title}"));
            }
        }

        // Annotations (alert episodes on the time axis): each must find its seeded rows.
        let annotations = dashboard.json["annotations"]["list"].as_array();
        for annotation in annotations.into_iter().flatten() {
            let name = annotation["name"].as_str().context("annotation name")?;
            let raw = annotation["target"]["rawSql"]
                .as_str()
                .context("annotation rawSql")?;
            let mut found = false;
            for chosen in &choices {
                let sql = context(chosen)
                    .expand(raw)
                    .with_context(|| format!("{file}: annotation {name:?}"))?;
                let result = rows(pool, &sql)
                    .await
                    .with_context(|| format!("{file}: annotation {name:?}: {sql}"))?;
                ensure!(
                    result
                        .iter()
                        .all(|row| row.contains_key("time") && row.contains_key("text")),
                    "{file}: annotation {name:?} needs `time` and `text` columns"
                );
                found |= !result.is_empty();
            }
            ensure!(
                found,
                "{file}: annotation {name:?} finds nothing on seeded data: {raw}"
            );
            ran.insert(format!("{file}: annotation {name}"));
        }
    }
    Ok(ran)
}

#[test]
fn dashboards_are_well_formed() -> Result<()> {
    let dashboards = load_dashboards()?;
    let files: Vec<&str> = dashboards.iter().map(|d| d.file.as_str()).collect();
    assert_eq!(
        files,
        ["datapath.json", "fleet.json", "region.json", "target.json"]
    );
    let mut uids = BTreeSet::new();
    for d in &dashboards {
        let file = &d.file;
        let uid = d.json["uid"].as_str().context("uid")?;
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} used twice");
        let title = d.json["title"].as_str().context("title")?;
        assert!(title.starts_with("FiberStack / "), "{file}: title {title}");
        let mut ids = BTreeSet::new();
        for panel in d.json["panels"].as_array().context("panels")? {
            let id = panel["id"].as_u64().context("panel id")?;
            assert!(ids.insert(id), "{file}: panel id {id} used twice");
            // Provisioned dashboards must not pin a datasource uid of one installation.
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}: panel {id} datasource"
            );
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{file}: panel {id} wider than the grid");
        }
        for annotation in d.json["annotations"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(
                annotation["datasource"]["uid"], "${datasource}",
                "{file}: annotation datasource"
            );
        }
    }
    Ok(())
}

#[test]
fn macro_expansion_matches_grafana() -> Result<()> {
    let to: DateTime<Utc> = "2026-11-20T12:00:00Z".parse()?;
    let mut context = QueryContext {
        from: to - Duration::hours(1),
        to,
        interval: Duration::minutes(5),
        timescaledb: false,
        variables: BTreeMap::from([
            (
                "region".to_owned(),
                VariableValue::Multi(vec!["gh".into(), "o'k".into()]),
            ),
            (
                "node".to_owned(),
                VariableValue::Single("gh-accra-1".into()),
            ),
        ]),
    };
    let sql = "select $__timeGroupAlias(time, $__interval), x from t \
               where $__timeFilter(time) and region in ($region) and node = '${node}' \
               and $__interval_ms > 0 and time < $__timeTo()";
    assert_eq!(
        context.expand(sql)?,
        "select floor(extract(epoch from time)/300)*300 AS \"time\", x from t \
         where time BETWEEN '2026-11-20T11:00:00.000000000Z' AND '2026-11-20T12:00:00.000000000Z' \
         and region in ('gh','o''k') and node = 'gh-accra-1' \
         and 300000 > 0 and time < '2026-11-20T12:00:00.000000000Z'"
    );
    context.timescaledb = true;
    assert_eq!(
        context.expand("$__timeGroup(bucket, '1h')")?,
        "time_bucket('3600s',bucket)"
    );
    let unknown = context.expand("$__unixEpochGroup(t, 5m)").unwrap_err();
    assert!(unknown.to_string().contains("unixEpochGroup"), "{unknown}");
    let undefined = context.expand("select '$probe'").unwrap_err();
    assert!(format!("{undefined:#}").contains("$probe"), "{undefined:#}");
    Ok(())
}

/// Runs `test` on a fresh PostgreSQL database of `make env-up` named after `prefix`, then
/// drops the database (whatever the outcome) before answering the outcome.
async fn on_fresh_postgres<T>(
    prefix: &str,
    test: impl AsyncFnOnce(&PgPool) -> Result<T>,
) -> Result<T> {
    let env = LocalEnv::load()?;
    let url = env.fresh_postgres_database(prefix).await?;
    let pool = DbConfig::new(&url).connect().await?;
    let outcome = test(&pool).await;
    pool.close().await;
    env.drop_postgres_database(&url, &[]).await?;
    outcome
}

#[tokio::test]
async fn every_panel_runs_on_plain_postgres() -> Result<()> {
    let outcome = on_fresh_postgres("fs_dashboards", async |pool| {
        assert_eq!(migrate(pool).await?.mode, StorageMode::Postgres);
        let now = Utc::now();
        seed(pool, now).await?;
        refresh_rollups(pool, StorageMode::Postgres, now).await?;
        let mut ran = Vec::new();
        for range in RANGES {
            ran.push(run_every_query(pool, false, range).await?);
        }
        Ok::<_, anyhow::Error>(ran)
    })
    .await;
    for ran in outcome? {
        assert!(ran.len() >= 30, "only {} queries ran: {ran:?}", ran.len());
    }
    Ok(())
}

#[tokio::test]
async fn every_panel_runs_on_timescaledb() -> Result<()> {
    let schema = TimescaleSchema::create("fs_dashboards").await?;
    let outcome = async {
        let pool = &schema.pool;
        assert_eq!(migrate(pool).await?.mode, StorageMode::TimescaleDb);
        let now = Utc::now();
        seed(pool, now).await?;
        refresh_rollups(pool, StorageMode::TimescaleDb, now).await?;
        let mut ran = Vec::new();
        for range in RANGES {
            ran.push(run_every_query(pool, true, range).await?);
        }
        Ok::<_, anyhow::Error>(ran)
    }
    .await;
    // Clean up before judging.
    schema.drop().await?;
    for ran in outcome? {
        assert!(ran.len() >= 30, "only {} queries ran: {ran:?}", ran.len());
    }
    Ok(())
}

/// 20,000 latencies spread log-uniformly over 2–1,000 ms, one every half second over the
/// last ~2.8 hours (so they fall in 3–4 hourly buckets), in a shuffled order.
async fn seed_latencies(pool: &PgPool) -> Result<()> {
    sqlx::raw_sql(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms)
         select now() - make_interval(secs => i * 0.5), 'gh-accra-' || (i % 2), 'fiberstack/edge',
                'ghana', 'gateway', 'icmp', true, 2 * power(500, ((i * 7919) % 20000) / 20000.0)
           from generate_series(0, 19999) i",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The percentile merged from the histograms of every rollup (per target and per node,
/// hourly and daily) is within 1 % of the exact percentile of the raw samples.
async fn histogram_percentiles_are_within_one_percent(pool: &PgPool) -> Result<()> {
    for q in [0.5, 0.9, 0.95, 0.99] {
        let exact: f64 = sqlx::query_scalar(
            "select percentile_cont($1) within group (order by latency_ms) from metrics",
        )
        .bind(q)
        .fetch_one(pool)
        .await?;
        for rollup in [
            "metrics_latency_hourly",
            "metrics_latency_daily",
            "metrics_latency_node_hourly",
            "metrics_latency_node_daily",
        ] {
            let (merged, buckets): (Option<f64>, i64) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select fiberstack_latency_quantile($1, array_agg(bin), array_agg(samples)),
                            (select count(distinct bucket) from {rollup})
                       from (select bin, sum(samples) as samples from {rollup} group by bin) h"
                )))
                .bind(q)
                .fetch_one(pool)
                .await?;
            let merged = merged.with_context(|| format!("{rollup}: no histogram"))?;
            let error = (merged - exact).abs() / exact;
            ensure!(
                error <= 0.01,
                "{rollup}: p{} {merged:.3} ms against exact {exact:.3} ms: {:.2} % off",
                q * 100.0,
                error * 100.0
            );
            if rollup.ends_with("hourly") {
                ensure!(
                    buckets >= 3,
                    "{rollup}: {buckets} buckets merged, expected 3 or more"
                );
            }
        }
    }
    // Every sample is counted once, in each rollup.
    let counted: Vec<i64> = sqlx::query_scalar(
        "select (select sum(samples) from metrics_latency_hourly)::int8
         union all select (select sum(samples) from metrics_latency_node_daily)::int8",
    )
    .fetch_all(pool)
    .await?;
    ensure!(counted == [20_000, 20_000], "samples counted: {counted:?}");
    Ok(())
}

#[tokio::test]
async fn histogram_percentiles_on_plain_postgres() -> Result<()> {
    on_fresh_postgres("fs_histogram", async |pool| {
        migrate(pool).await?;
        seed_latencies(pool).await?;
        refresh_rollups(pool, StorageMode::Postgres, Utc::now()).await?;
        histogram_percentiles_are_within_one_percent(pool).await
    })
    .await
}

#[tokio::test]
async fn histogram_percentiles_on_timescaledb() -> Result<()> {
    let schema = TimescaleSchema::create("fs_histogram").await?;
    let outcome = async {
        let pool = &schema.pool;
        migrate(pool).await?;
        seed_latencies(pool).await?;
        refresh_rollups(pool, StorageMode::TimescaleDb, Utc::now()).await?;
        histogram_percentiles_are_within_one_percent(pool).await
    }
    .await;
    schema.drop().await?;
    outcome
}

/// Two nodes of region ghana probing the same target, one at 10–20 ms and one at 100–200 ms,
/// 1,500 latencies each, one every 240 s over the last 100 hours, the older the slower (a range
/// that leaves out an hour or a day of them, or takes in another's, has other percentiles);
/// then the rollups of the last 5 days refreshed.
async fn seed_two_nodes(pool: &PgPool, mode: StorageMode) -> Result<()> {
    sqlx::raw_sql(
        "insert into nodes (name, region, country, agent_version, last_seen_at) values
           ('gh-accra-1', 'ghana', 'GH', '0.1.0', now()),
           ('gh-kumasi-1', 'ghana', 'GH', '0.1.0', now());
         insert into metrics (time, node, probe, region, target, kind, up, latency_ms)
         select now() - make_interval(secs => i * 240), n.node, 'fiberstack/edge', 'ghana',
                'gateway', 'icmp', true, n.low * power(2, i / 1500.0)
           from generate_series(0, 1499) i,
                (values ('gh-accra-1', 10.0), ('gh-kumasi-1', 100.0)) n(node, low)",
    )
    .execute(pool)
    .await?;
    let now = Utc::now();
    refresh_rollups_between(pool, mode, now - Duration::days(5), now).await
}

/// The region's "Targets by node" over 6 hours and over 4 days (its rollup branch, which
/// merges each row's own histograms; over 4 days a whole day or two of them from the daily
/// ones (3 days from just after midnight UTC hold none: the days end before yesterday) and
/// six-hour ones around it):
/// each node's p50 and p95 within 1 % of the exact percentiles of that node's raw samples in
/// the hours the range holds (those whose hourly bucket starts inside it), not of both nodes'.
async fn targets_by_node_has_each_nodes_percentiles(
    pool: &PgPool,
    timescaledb: bool,
    time_zone: &str,
) -> Result<()> {
    let dashboards = load_dashboards()?;
    let region = dashboards
        .iter()
        .find(|d| d.file == "region.json")
        .context("region.json")?;
    let raw = region.json["panels"]
        .as_array()
        .context("panels")?
        .iter()
        .find(|p| p["title"] == "Targets by node")
        .and_then(|p| p["targets"][0]["rawSql"].as_str())
        .context("Targets by node")?;
    let nodes = ["gh-accra-1", "gh-kumasi-1"];
    let now = Utc::now();
    for range in [Duration::hours(6), Duration::days(4)] {
        let sql = QueryContext {
            from: now - range,
            to: now,
            interval: Duration::minutes(5),
            timescaledb,
            variables: BTreeMap::from([
                (
                    "region".to_owned(),
                    VariableValue::Single("ghana".to_owned()),
                ),
                (
                    "node".to_owned(),
                    VariableValue::Multi(nodes.map(str::to_owned).to_vec()),
                ),
            ]),
        }
        .expand(raw)?;
        let table = rows(pool, &sql).await?;
        ensure!(table.len() == 2, "{range}: rows {table:?}");
        if range > Duration::days(2) {
            // What the panel reads from the daily histograms is there to be read.
            let daily: i64 = sqlx::query_scalar(
                "select count(*) from metrics_latency_daily
                  where bucket >= date_trunc('day', $1::timestamptz) + interval '1 day'
                    and bucket < date_trunc('day', now() - interval '25 hours')",
            )
            .bind(now - range)
            .fetch_one(pool)
            .await?;
            ensure!(daily > 0, "{range}: no daily histogram inside the range");
            // And six-hour ones after the days (from yesterday on), ended 2 hours ago or more.
            let six_hourly: i64 = sqlx::query_scalar(
                "select count(*) from metrics_latency_6h
                  where bucket >= date_trunc('day', now() - interval '25 hours')
                    and bucket + interval '6 hours' <= now() - interval '2 hours'",
            )
            .fetch_one(pool)
            .await?;
            ensure!(
                six_hourly > 0,
                "{range}: no six-hour histogram inside the range"
            );
        }
        for node in nodes {
            let row = table
                .iter()
                .find(|r| r["node"] == node)
                .with_context(|| format!("{range}: no row of {node}: {table:?}"))?;
            // Every latency of the range merged once: none left out, none counted twice
            // (a piece of the range read from two rollups, or from none).
            let mut session = pool.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "set local timezone = '{time_zone}'"
            )))
            .execute(&mut *session)
            .await?;
            let (merged, exact): (Option<i64>, i64) = sqlx::query_as(
                "select (select merged from fiberstack_rows_latency_percentiles(
                                'ghana', array[$1], array['fiberstack/edge'], array['gateway'],
                                $2, $3)),
                        (select count(*) from metrics where node = $1 and latency_ms is not null
                            and date_trunc('hour', time) >= $2)",
            )
            .bind(node)
            .bind(now - range)
            .bind(now)
            .fetch_one(&mut *session)
            .await?;
            session.rollback().await?;
            ensure!(
                merged == Some(exact),
                "{range}: {node}: {merged:?} latencies merged, {exact} in the range"
            );
            for (q, column) in [(0.5, "p50 ms"), (0.95, "p95 ms")] {
                let exact: f64 = sqlx::query_scalar(
                    "select percentile_cont($1) within group (order by latency_ms)
                       from metrics where node = $2 and date_trunc('hour', time) >= $3",
                )
                .bind(q)
                .bind(node)
                .bind(now - range)
                .fetch_one(pool)
                .await?;
                let shown = row[column]
                    .as_f64()
                    .with_context(|| format!("{range}: {node}: {column} {}", row[column]))?;
                let error = (shown - exact).abs() / exact;
                ensure!(
                    error <= 0.01,
                    "{range}: {node}: {column} {shown:.3} against exact {exact:.3} ({:.2} % off)",
                    error * 100.0
                );
            }
        }
    }
    Ok(())
}

/// [`targets_by_node_has_each_nodes_percentiles`] on a fresh PostgreSQL database, the
/// latencies counted by a row's percentiles in a session of `time_zone`.
async fn targets_by_node_on_plain_postgres(time_zone: &str) -> Result<()> {
    on_fresh_postgres("fs_by_node", async |pool| {
        migrate(pool).await?;
        seed_two_nodes(pool, StorageMode::Postgres).await?;
        targets_by_node_has_each_nodes_percentiles(pool, false, time_zone).await
    })
    .await
}

#[tokio::test]
async fn targets_by_node_percentiles_on_plain_postgres() -> Result<()> {
    targets_by_node_on_plain_postgres("UTC").await
}

/// Grafana's database sessions run in the server's time zone (fiber-etl's in UTC): a row's
/// whole days are the UTC days its daily histograms hold whatever the session's zone — with
/// days taken at New York's midnight (05:00 UTC), the pieces of a range no longer lined up
/// with the histograms' buckets: 1,523 latencies merged of the 1,500 in the range.
#[tokio::test]
async fn targets_by_node_percentiles_in_a_session_not_on_utc() -> Result<()> {
    targets_by_node_on_plain_postgres("America/New_York").await
}

#[tokio::test]
async fn targets_by_node_percentiles_on_timescaledb() -> Result<()> {
    let schema = TimescaleSchema::create("fs_by_node").await?;
    let outcome = async {
        let pool = &schema.pool;
        migrate(pool).await?;
        seed_two_nodes(pool, StorageMode::TimescaleDb).await?;
        targets_by_node_has_each_nodes_percentiles(pool, true, "UTC").await
    }
    .await;
    schema.drop().await?;
    outcome
}

/// The panels that take whole days from the daily rollups answer the same whatever the time
/// zone of Grafana's database session: the rollups hold UTC days (TimescaleDB's time_bucket,
/// fiber-etl's UTC session in plain mode), so the panels take UTC days too. With days taken
/// at the session's midnight, a New York session merged days five hours off.
#[tokio::test]
async fn day_split_panels_answer_the_same_in_any_session_time_zone() -> Result<()> {
    on_fresh_postgres("fs_zones", async |pool| {
        migrate(pool).await?;
        seed_two_nodes(pool, StorageMode::Postgres).await?;
        let now = Utc::now();
        let dashboards = load_dashboards()?;
        let mut compared = Vec::new();
        for dashboard in &dashboards {
            for panel in dashboard.json["panels"].as_array().context("panels")? {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    let raw = target["rawSql"].as_str().context("rawSql")?;
                    if !raw.contains("'1 day'") {
                        continue;
                    }
                    let title = format!("{}: {}", dashboard.file, panel["title"]);
                    let sql = QueryContext {
                        from: now - Duration::days(3),
                        to: now,
                        interval: Duration::hours(1),
                        timescaledb: false,
                        variables: BTreeMap::from([
                            (
                                "region".to_owned(),
                                VariableValue::Multi(vec!["ghana".to_owned()]),
                            ),
                            (
                                "node".to_owned(),
                                VariableValue::Multi(vec![
                                    "gh-accra-1".to_owned(),
                                    "gh-kumasi-1".to_owned(),
                                ]),
                            ),
                            (
                                "objective".to_owned(),
                                VariableValue::Single("99.9".to_owned()),
                            ),
                        ]),
                    }
                    .expand(raw)?;
                    let utc = rows(pool, &sql).await?;
                    let mut session = pool.begin().await?;
                    sqlx::raw_sql("set local timezone = 'America/New_York'")
                        .execute(&mut *session)
                        .await?;
                    let new_york = rows(&mut *session, &sql).await?;
                    session.rollback().await?;
                    ensure!(!utc.is_empty(), "{title}: no rows");
                    ensure!(
                        utc == new_york,
                        "{title}: in UTC {utc:?}, in New York {new_york:?}"
                    );
                    compared.push(title);
                }
            }
        }
        ensure!(compared.len() >= 3, "panels compared: {compared:?}");
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// A hand-made histogram's bin: (hours after the range's start, bin, latencies in it).
type HourBin = (i64, i16, i64);

/// A row's p50, p95 and latencies merged, then the quantile reader's p50, p95 and the
/// latencies stored.
type PickedRow = (
    String,
    Option<f64>,
    Option<f64>,
    Option<i64>,
    Option<f64>,
    Option<f64>,
    i64,
);

/// The rows' percentiles pick the bin that `fiberstack_latency_quantile` (the read API's and
/// the other panels' reader) picks from the same merged histogram, at the edges of the rank
/// too: a single latency, a rank falling exactly on a running count, all in one bin, and
/// bins spread over the hourly and six-hour pieces of the range (merged per bin). Hand-made
/// histograms in plain mode's tables, no raw samples behind them.
#[tokio::test]
async fn rows_percentiles_pick_the_bin_the_quantile_reader_picks() -> Result<()> {
    on_fresh_postgres("fs_rows_pick", async |pool| {
        migrate(pool).await?;
        // A range of two days ending at the start of the current hour (whole hours and
        // six-hour buckets inside it), and each target's (bucket offset in hours, bin, count).
        let to: DateTime<Utc> = sqlx::query_scalar("select date_trunc('hour', now())")
            .fetch_one(pool)
            .await?;
        let from = to - Duration::hours(48);
        let histograms: [(&str, &[HourBin]); 5] = [
            ("one", &[(30, 100, 1)]),
            // 3 latencies: p50's rank 1 and p95's 1.9 fall on and between running counts.
            ("three", &[(30, 10, 1), (31, 20, 1), (32, 30, 1)]),
            ("same-bin", &[(1, 250, 7), (40, 250, 5)]),
            // The same bins in several hours (merged), a tail in the last hour.
            (
                "spread",
                &[
                    (2, 200, 40),
                    (3, 200, 30),
                    (3, 201, 20),
                    (20, 205, 9),
                    (21, 199, 1),
                    (47, 400, 6),
                ],
            ),
            // p95's rank (0.95 × 19 = 18.05) just past the running count 18.
            ("edge", &[(5, 50, 18), (6, 60, 1), (7, 70, 1)]),
        ];
        for (target, bins) in histograms {
            for (hour, bin, count) in bins {
                sqlx::query(
                    "insert into metrics_latency_hourly
                         (bucket, region, node, probe, target, kind, bin, samples)
                     values ($1, 'ghana', 'edge-1', 'fiberstack/edge', $2, 'icmp', $3, $4)",
                )
                .bind(from + Duration::hours(*hour))
                .bind(target)
                .bind(bin)
                .bind(count)
                .execute(pool)
                .await?;
            }
        }
        sqlx::query("select fiberstack_refresh_latency_6h($1, $2)")
            .bind(from - Duration::hours(6))
            .bind(to + Duration::hours(1))
            .execute(pool)
            .await?;
        let targets: Vec<&str> = histograms.iter().map(|(t, _)| *t).collect();
        let rows: Vec<PickedRow> = sqlx::query_as(
            "select p.target, p.p50, p.p95, p.merged,
                        fiberstack_latency_quantile(0.5, e.bins, e.counts),
                        fiberstack_latency_quantile(0.95, e.bins, e.counts), e.total
                   from fiberstack_rows_latency_percentiles(
                            'ghana', array_fill('edge-1'::text, array[cardinality($1::text[])]),
                            array_fill('fiberstack/edge'::text, array[cardinality($1::text[])]),
                            $1, $2, $3) p
                   join (select target, array_agg(bin order by bin) as bins,
                                array_agg(samples order by bin) as counts,
                                sum(samples)::int8 as total
                           from (select target, bin, sum(samples) as samples
                                   from metrics_latency_hourly
                                  where bucket >= $2 and bucket <= $3
                                  group by 1, 2) b
                          group by target) e on e.target = p.target
                  order by p.target",
        )
        .bind(&targets)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
        ensure!(
            rows.len() == targets.len(),
            "{} rows answered for {} targets: {rows:?}",
            rows.len(),
            targets.len()
        );
        for (target, p50, p95, merged, q50, q95, total) in rows {
            ensure!(
                merged == Some(total),
                "{target}: {merged:?} latencies merged, {total} stored"
            );
            ensure!(
                p50.is_some() && p50 == q50 && p95 == q95,
                "{target}: p50/p95 {p50:?}/{p95:?}, the quantile reader {q50:?}/{q95:?}"
            );
        }
        Ok(())
    })
    .await
}
