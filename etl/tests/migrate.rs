//! `fiber-etl migrate` against the real databases of `make env-up`: plain PostgreSQL 15
//! (a fresh database per test) and TimescaleDB (a fresh schema per test).

use std::process::Command;

mod common;

use anyhow::Result;
use common::TimescaleSchema;
use fiber_etl::migrate::{
    Grant, MIGRATOR, Retention, StorageMode, current_retention, ensure_login, migrate,
    set_retention,
};
use fiberstack_e2e::{LocalEnv, unique_name};
use fiberstack_plumbing::postgres::DbConfig;
use sqlx::PgPool;

/// A new, empty PostgreSQL database; returns its URL.
async fn fresh_postgres_database() -> Result<String> {
    LocalEnv::load()?
        .fresh_postgres_database("fs_migrate")
        .await
}

async fn pool(url: &str, schema: Option<&str>) -> Result<PgPool> {
    let config = DbConfig {
        schema: schema.map(str::to_owned),
        max_connections: 1,
        ..DbConfig::new(url)
    };
    Ok(config.connect().await?)
}

async fn tables(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "select table_name::text from information_schema.tables
          where table_schema = current_schema() order by 1",
    )
    .fetch_all(pool)
    .await?)
}

fn all_migrations() -> Vec<String> {
    MIGRATOR
        .iter()
        .map(|m| format!("{}_{}", m.version, m.description))
        .collect()
}

const SEED: &str = "
    insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss) values
      ('2026-11-20T10:01:00Z', 'gh-accra-1', 'fiberstack/accra-edge', 'ghana', 'dns', 'icmp', true, 10, 0),
      ('2026-11-20T10:02:00Z', 'gh-accra-1', 'fiberstack/accra-edge', 'ghana', 'dns', 'icmp', true, 20, 0),
      ('2026-11-20T10:03:00Z', 'gh-accra-1', 'fiberstack/accra-edge', 'ghana', 'dns', 'icmp', true, 30, 20),
      ('2026-11-20T10:04:00Z', 'gh-accra-1', 'fiberstack/accra-edge', 'ghana', 'dns', 'icmp', false, 40, 100),
      ('2026-11-20T11:00:00Z', 'gh-accra-1', 'fiberstack/accra-edge', 'ghana', 'dns', 'icmp', true, 100, 0)";

/// The 10:00 bucket of the seed: samples, uptime %, p50 (from samples: 25, not an average).
async fn hourly_10(pool: &PgPool) -> Result<(i64, f64, f64)> {
    Ok(sqlx::query_as(
        "select samples, uptime_pct::float8, latency_p50_ms from metrics_hourly
          where bucket = '2026-11-20T10:00:00Z' and node = 'gh-accra-1' and target = 'dns'",
    )
    .fetch_one(pool)
    .await?)
}

#[tokio::test]
async fn plain_postgres_mode_applies_once_and_rolls_up() -> Result<()> {
    let url = fresh_postgres_database().await?;
    let pool = pool(&url, None).await?;
    let first = migrate(&pool).await?;
    assert_eq!(first.mode, StorageMode::Postgres);
    assert_eq!(first.applied, all_migrations());
    let second = migrate(&pool).await?;
    assert!(
        second.applied.is_empty(),
        "second run is a no-op: {second:?}"
    );
    assert_eq!(
        tables(&pool).await?,
        [
            "_sqlx_migrations",
            "alerts",
            "fiberstack_meta",
            "hops",
            "metrics",
            "metrics_daily",
            "metrics_hourly",
            "metrics_latency_6h",
            "metrics_latency_daily",
            "metrics_latency_hourly",
            "metrics_latency_node_daily",
            "metrics_latency_node_hourly",
            "nodes",
            "stream_stats"
        ]
    );

    sqlx::raw_sql(SEED).execute(&pool).await?;
    sqlx::query(
        "select fiberstack_refresh_rollups('2026-11-20T00:00:00Z', '2026-11-21T00:00:00Z')",
    )
    .execute(&pool)
    .await?;
    assert_eq!(hourly_10(&pool).await?, (4, 75.0, 25.0));
    let daily: (i64, f64) = sqlx::query_as("select samples, latency_max_ms from metrics_daily")
        .fetch_one(&pool)
        .await?;
    assert_eq!(daily, (5, 100.0));

    // Refreshing again recomputes, it does not add.
    sqlx::query(
        "select fiberstack_refresh_rollups('2026-11-20T00:00:00Z', '2026-11-21T00:00:00Z')",
    )
    .execute(&pool)
    .await?;
    assert_eq!(hourly_10(&pool).await?, (4, 75.0, 25.0));

    // Two indexes to maintain on insert: the natural key (probe, target and time first, so it
    // also serves per-target queries and the newest sample of a target) and time (retention,
    // rollups).
    let indexes: Vec<String> = sqlx::query_scalar(
        "select indexname::text from pg_indexes where tablename = 'metrics'
            and schemaname = current_schema() order by 1",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(indexes, ["metrics_natural_key_pttn", "metrics_time"]);

    // The natural key refuses a second copy of a sample.
    let dup = sqlx::raw_sql(SEED).execute(&pool).await.unwrap_err();
    assert!(
        dup.to_string().contains("metrics_natural_key_pttn"),
        "{dup}"
    );

    // Retention: 7 days of raw samples, 90 of hourly, 365 of daily.
    sqlx::query("select fiberstack_apply_retention('2026-11-27T10:03:30Z')")
        .execute(&pool)
        .await?;
    let left: i64 = sqlx::query_scalar("select count(*) from metrics")
        .fetch_one(&pool)
        .await?;
    assert_eq!(left, 2, "samples older than 7 days are gone");
    assert_eq!(hourly_10(&pool).await?.0, 4, "hourly rollups stay");
    Ok(())
}

#[tokio::test]
async fn database_checks_refuse_out_of_range_values() -> Result<()> {
    let url = fresh_postgres_database().await?;
    let pool = pool(&url, None).await?;
    migrate(&pool).await?;
    for (column, value) in [
        ("latency_ms", "10001"),
        ("packet_loss", "101"),
        ("status_code", "99"),
    ] {
        let sql = format!(
            "insert into metrics (time, node, probe, region, target, kind, up, {column})
             values (now(), 'n', 'ns/p', 'r', 't', 'http', false, {value})"
        );
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("check constraint"),
            "{column}: {err}"
        );
    }
    let err = sqlx::raw_sql("insert into nodes (name, region, country) values ('n', 'r', 'gh')")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nodes_country_check"), "{err}");
    Ok(())
}

#[tokio::test]
async fn two_migrators_at_once_apply_each_migration_once() -> Result<()> {
    let url = fresh_postgres_database().await?;
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_fiber-etl"))
            .args(["migrate", "--database-url", &url])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().expect("thread"), b.join().expect("thread"))
    });
    for out in [a?, b?] {
        assert!(
            out.status.success(),
            "fiber-etl migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pool = pool(&url, None).await?;
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(&pool)
        .await?;
    assert_eq!(applied as usize, MIGRATOR.iter().count());
    Ok(())
}

#[tokio::test]
async fn migrate_command_names_the_unreachable_database_without_its_password() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_fiber-etl"))
        .args([
            "migrate",
            "--database-url",
            "postgres://etl:hunter2@127.0.0.1:1/fiber",
        ])
        .env("FIBER_LOG", "off")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("postgres://etl:***@127.0.0.1:1/fiber"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Connection refused"),
        "the cause is named: {stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_fiber-etl"))
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database-url"));
    Ok(())
}

/// TimescaleDB's policy jobs of this test's schema: (procedure, relation, period), with
/// continuous aggregates named by their view.
async fn policy_jobs(pool: &PgPool) -> Result<Vec<(String, String, String)>> {
    let mut jobs: Vec<(String, String, String)> = sqlx::query_as(
        "select j.proc_name::text, j.hypertable_name::text,
                coalesce(j.config->>'drop_after', j.config->>'compress_after', j.config->>'start_offset')
           from timescaledb_information.jobs j
          where j.hypertable_schema = current_schema() or j.hypertable_name in (
                select materialization_hypertable_name from timescaledb_information.continuous_aggregates
                 where view_schema = current_schema())",
    )
    .fetch_all(pool)
    .await?;
    let mat_names: Vec<(String, String)> = sqlx::query_as(
        "select materialization_hypertable_name::text, view_name::text
           from timescaledb_information.continuous_aggregates where view_schema = current_schema()",
    )
    .fetch_all(pool)
    .await?;
    for job in &mut jobs {
        if let Some((_, view)) = mat_names.iter().find(|(mat, _)| *mat == job.1) {
            job.1 = view.clone();
        }
    }
    jobs.sort();
    Ok(jobs)
}

#[tokio::test]
async fn timescaledb_mode_builds_hypertable_aggregates_and_policies() -> Result<()> {
    let schema = TimescaleSchema::create("fs_migrate").await?;
    let pool = schema.pool.clone();
    let first = migrate(&pool).await?;
    assert_eq!(first.mode, StorageMode::TimescaleDb);
    assert_eq!(first.applied, all_migrations());
    assert!(
        migrate(&pool).await?.applied.is_empty(),
        "second run is a no-op"
    );

    let hypertable: i64 = sqlx::query_scalar(
        "select count(*) from timescaledb_information.hypertables
          where hypertable_schema = current_schema() and hypertable_name = 'metrics' and compression_enabled",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        hypertable, 1,
        "metrics is a hypertable with compression enabled"
    );
    let segmentby: Vec<String> = sqlx::query_scalar(
        "select attname::text from timescaledb_information.compression_settings
          where hypertable_schema = current_schema() and hypertable_name = 'metrics'
            and segmentby_column_index is not null
          order by segmentby_column_index",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(segmentby, ["node", "probe", "target"]);
    let caggs: Vec<String> = sqlx::query_scalar(
        "select view_name::text from timescaledb_information.continuous_aggregates
          where view_schema = current_schema() order by 1",
    )
    .fetch_all(&pool)
    .await?;
    // The summaries (0002) and the latency histograms (0007, 0011).
    assert_eq!(
        caggs,
        [
            "metrics_daily",
            "metrics_hourly",
            "metrics_latency_6h",
            "metrics_latency_daily",
            "metrics_latency_hourly",
            "metrics_latency_node_daily",
            "metrics_latency_node_hourly"
        ]
    );
    let jobs = policy_jobs(&pool).await?;
    let mut expected = vec![
        ("policy_compression", "metrics", "3 days"),
        ("policy_retention", "metrics", "7 days"),
        ("policy_compression", "hops", "3 days"),
        ("policy_retention", "hops", "7 days"),
    ];
    for daily in [
        "metrics_daily",
        "metrics_latency_daily",
        "metrics_latency_node_daily",
    ] {
        expected.push(("policy_refresh_continuous_aggregate", daily, "3 days"));
        expected.push(("policy_retention", daily, "365 days"));
    }
    for hourly in [
        "metrics_hourly",
        "metrics_latency_hourly",
        "metrics_latency_node_hourly",
    ] {
        expected.push(("policy_refresh_continuous_aggregate", hourly, "1 day"));
        expected.push(("policy_retention", hourly, "90 days"));
    }
    expected.push((
        "policy_refresh_continuous_aggregate",
        "metrics_latency_6h",
        "3 days",
    ));
    expected.push(("policy_retention", "metrics_latency_6h", "90 days"));
    let mut expected: Vec<(String, String, String)> = expected
        .into_iter()
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
        .collect();
    expected.sort();
    assert_eq!(jobs, expected);

    // Retention is a setting: new periods replace the policies, the others stay.
    let retention = Retention {
        raw: Some("14d".parse().unwrap()),
        daily: Some("400d".parse().unwrap()),
        ..Retention::default()
    };
    let now = set_retention(&pool, retention).await?;
    assert_eq!(now, ["14 days", "90 days", "400 days"]);
    let retention_jobs: Vec<(String, String)> = policy_jobs(&pool)
        .await?
        .into_iter()
        .filter(|(proc, _, _)| proc == "policy_retention")
        .map(|(_, relation, period)| (relation, period))
        .collect();
    assert_eq!(
        retention_jobs,
        [
            ("hops", "14 days"),
            ("metrics", "14 days"),
            ("metrics_daily", "400 days"),
            ("metrics_hourly", "90 days"),
            ("metrics_latency_6h", "90 days"),
            ("metrics_latency_daily", "400 days"),
            ("metrics_latency_hourly", "90 days"),
            ("metrics_latency_node_daily", "400 days"),
            ("metrics_latency_node_hourly", "90 days"),
        ]
        .map(|(r, p)| (r.to_owned(), p.to_owned()))
    );

    sqlx::raw_sql(SEED).execute(&pool).await?;
    sqlx::raw_sql(
        "call refresh_continuous_aggregate('metrics_hourly', '2026-11-20', '2026-11-21')",
    )
    .execute(&pool)
    .await?;
    assert_eq!(hourly_10(&pool).await?, (4, 75.0, 25.0));
    // Inserting the same samples again adds nothing with the ETL's conflict-tolerant insert.
    let again = format!("{SEED} on conflict do nothing");
    let inserted = sqlx::raw_sql(sqlx::AssertSqlSafe(again))
        .execute(&pool)
        .await?;
    assert_eq!(inserted.rows_affected(), 0);

    schema.drop().await?;
    Ok(())
}

#[tokio::test]
async fn tls_to_postgresql_is_verified_against_the_given_ca() -> Result<()> {
    let url = fresh_postgres_database().await?;
    let plain = url.replace("sslmode=disable", "");
    let ca = fiberstack_e2e::ca_certificate();
    let verified = format!("{plain}sslmode=verify-full&sslrootcert={}", ca.display());
    let pool = pool(&verified, None).await?;
    let (ssl, version): (bool, String) =
        sqlx::query_as("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await?;
    assert!(ssl, "the connection is encrypted");
    assert!(version.starts_with("TLS"), "{version}");
    assert_eq!(migrate(&pool).await?.mode, StorageMode::Postgres);

    // Without the CA, the server's certificate is not trusted: refused, and the error says so.
    let untrusted = format!("{plain}sslmode=verify-full");
    let error = pool_error(&untrusted).await;
    assert!(
        error.contains("certificate") || error.contains("Certificate"),
        "{error}"
    );
    Ok(())
}

async fn pool_error(url: &str) -> String {
    match DbConfig::new(url).connect().await {
        Ok(_) => panic!("connected to {url}"),
        Err(e) => format!("{e:#} {:?}", std::error::Error::source(&e)),
    }
}

#[tokio::test]
async fn plain_retention_follows_the_settings() -> Result<()> {
    let url = fresh_postgres_database().await?;
    let pool = pool(&url, None).await?;
    migrate(&pool).await?;
    assert_eq!(
        current_retention(&pool).await?,
        ["7 days", "90 days", "365 days"],
        "the defaults"
    );
    sqlx::raw_sql(
        "insert into metrics (time, node, probe, region, target, kind, up) values
           ('2026-11-19T12:00:00Z', 'n', 'ns/p', 'r', 'day-old', 'tcp', true),
           ('2026-11-17T12:00:00Z', 'n', 'ns/p', 'r', 'three-days-old', 'tcp', true)",
    )
    .execute(&pool)
    .await?;
    let retention = Retention {
        raw: Some("2d".parse().unwrap()),
        ..Retention::default()
    };
    assert_eq!(
        set_retention(&pool, retention).await?,
        ["2 days", "90 days", "365 days"]
    );
    sqlx::query("select fiberstack_apply_retention('2026-11-20T12:00:00Z')")
        .execute(&pool)
        .await?;
    let kept: Vec<String> = sqlx::query_scalar("select target from metrics order by 1")
        .fetch_all(&pool)
        .await?;
    assert_eq!(kept, ["day-old"]);

    // The database refuses a period under an hour, naming which, and changes nothing.
    let refused =
        sqlx::query("select fiberstack_set_retention('10 minutes', '90 days', '365 days')")
            .execute(&pool)
            .await
            .unwrap_err()
            .to_string();
    assert!(
        refused.contains("retention of raw samples: 00:10:00 is shorter than 1 hour"),
        "{refused}"
    );
    assert_eq!(current_retention(&pool).await?[0], "2 days");

    // So does the command line, before touching the database.
    let out = Command::new(env!("CARGO_BIN_EXE_fiber-etl"))
        .args([
            "migrate",
            "--database-url",
            &url,
            "--retain-hourly",
            "3 weeks",
        ])
        .env("FIBER_LOG", "off")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--retain-hourly"), "{stderr}");
    assert!(stderr.contains("such as 7d or 36h"), "{stderr}");
    // And accepts a good one.
    let out = Command::new(env!("CARGO_BIN_EXE_fiber-etl"))
        .args(["migrate", "--database-url", &url, "--retain-hourly", "30d"])
        .env("FIBER_LOG", "off")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        current_retention(&pool).await?,
        ["2 days", "30 days", "365 days"]
    );
    Ok(())
}

#[tokio::test]
async fn login_users_get_exactly_their_roles_rights() -> Result<()> {
    let url = fresh_postgres_database().await?;
    let admin = pool(&url, None).await?;
    migrate(&admin).await?;
    let reader = unique_name("fs_reader").replace('-', "_");
    let writer = unique_name("fs_writer").replace('-', "_");
    let as_user = |user: &str, password: &str| {
        let mut parsed = url::Url::parse(&url).unwrap();
        parsed.set_username(user).unwrap();
        parsed.set_password(Some(password)).unwrap();
        parsed.to_string()
    };
    let outcome = async {
        ensure_login(&admin, &reader, "first 'pass\\word", Grant::Reader).await?;
        // Again, with another password: updated, not duplicated.
        ensure_login(&admin, &reader, "second-password", Grant::Reader).await?;
        ensure_login(&admin, &writer, "writer-password", Grant::Writer).await?;

        let read = pool(&as_user(&reader, "second-password"), None).await?;
        let count: i64 = sqlx::query_scalar("select count(*) from metrics")
            .fetch_one(&read)
            .await?;
        assert_eq!(count, 0);
        let refused = sqlx::raw_sql(
            "insert into metrics (time, node, probe, region, target, kind, up)
             values (now(), 'n', 'ns/p', 'r', 't', 'tcp', true)",
        )
        .execute(&read)
        .await
        .unwrap_err()
        .to_string();
        assert!(refused.contains("permission denied"), "{refused}");
        read.close().await;
        assert!(
            DbConfig::new(as_user(&reader, "first 'pass\\word"))
                .connect()
                .await
                .is_err(),
            "the old password no longer works"
        );

        let write = pool(&as_user(&writer, "writer-password"), None).await?;
        sqlx::raw_sql(
            "insert into metrics (time, node, probe, region, target, kind, up)
             values (now(), 'n', 'ns/p', 'r', 't', 'tcp', true)",
        )
        .execute(&write)
        .await?;
        let dropped = sqlx::raw_sql("drop table metrics").execute(&write).await;
        assert!(dropped.is_err(), "the writer cannot drop tables");
        write.close().await;
        anyhow::Ok(())
    }
    .await;
    admin.close().await;
    let env = LocalEnv::load()?;
    env.drop_postgres_database(&url, &[&reader, &writer])
        .await?;
    outcome
}

/// An installation upgraded to migration 0007 keeps its latency history: the migrator fills
/// the new continuous aggregates from the raw samples once (and 0011's six-hour ones from
/// the hourly ones), so after their refresh policies run (which cover the last days only and
/// move the real-time watermark) a percentile of five days ago is still there.
#[tokio::test]
async fn an_upgrade_to_the_latency_histograms_fills_them_from_the_kept_samples() -> Result<()> {
    let schema = TimescaleSchema::create("fs_migrate_upgrade").await?;
    let pool = schema.pool.clone();
    let outcome = async {
        // The database as 0006 left it, with samples of five days ago.
        let before_histograms = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(
                MIGRATOR.iter().filter(|m| m.version < 7).cloned().collect(),
            ),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before_histograms.run(&pool).await?;
        sqlx::raw_sql(
            "insert into nodes (name, region, country, agent_version, last_seen_at)
             values ('gh-accra-1', 'ghana', 'GH', '0.1.0', now());
             insert into metrics (time, node, probe, region, target, kind, up, latency_ms)
             select date_trunc('hour', now()) - interval '5 days' + make_interval(secs => g * 10),
                    'gh-accra-1', 'ns/edge', 'ghana', 'api', 'tcp', true, 40
               from generate_series(1, 30) g",
        )
        .execute(&pool)
        .await?;

        let report = migrate(&pool).await?;
        assert!(report.applied.iter().any(|m| m == "7_fleet scale"), "{:?}", report.applied);
        // What the policies do: refresh the last day (hourly) or three (daily), moving the
        // real-time watermark past the old samples.
        for (view, days) in [
            ("metrics_latency_hourly", 1),
            ("metrics_latency_6h", 3),
            ("metrics_latency_daily", 3),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "call refresh_continuous_aggregate('{view}', now() - interval '{days} days', now())"
            )))
            .execute(&pool)
            .await?;
        }
        let old: (i64, Option<f64>) = sqlx::query_as(
            "select sum(samples)::int8,
                    fiberstack_latency_quantile(0.95, array_agg(bin), array_agg(samples::numeric))
               from metrics_latency_hourly
              where probe = 'ns/edge' and bucket < now() - interval '4 days'",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(old.0, 30, "the five-day-old samples in the hourly histograms");
        let p95 = old.1.unwrap_or_default();
        assert!((p95 - 40.0).abs() < 40.0 * 0.02, "p95 {p95} ms, 40 ms stored");
        let daily: i64 = sqlx::query_scalar(
            "select coalesce(sum(samples), 0)::int8 from metrics_latency_daily where probe = 'ns/edge'",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(daily, 30, "and in the daily ones");
        // The six-hour ones (0011) are filled from the hourly ones.
        let six_hourly: i64 = sqlx::query_scalar(
            "select coalesce(sum(samples), 0)::int8 from metrics_latency_6h
              where probe = 'ns/edge' and bucket < now() - interval '4 days'",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(six_hourly, 30, "and in the six-hour ones");
        // Once: a second run finds it recorded.
        let filled: i64 = sqlx::query_scalar(
            "select count(*) from fiberstack_meta
              where key in ('latency_histograms_filled', 'latency_6h_filled')",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(filled, 2);
        assert!(migrate(&pool).await?.applied.is_empty());
        anyhow::Ok(())
    }
    .await;
    schema.drop().await?;
    outcome
}
