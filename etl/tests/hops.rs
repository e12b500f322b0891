//! Traceroute samples in the database: the path fingerprint on the sample's row and the hops
//! in `hops`, written in the sample's transaction by both writer paths, stored once on
//! redelivery, kept as long as raw samples in both storage modes.

mod common;

use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use common::TimescaleSchema;
use fiber_etl::migrate::{Retention, RetentionPeriod, migrate, set_retention};
use fiber_etl::writer::{write, write_conflict_tolerant};
use fiberstack_e2e::{LocalEnv, batch};
use fiberstack_model::{CheckKind, Hop, Sample, path_fingerprint};
use fiberstack_plumbing::postgres::DbConfig;
use sqlx::PgPool;

async fn fresh() -> Result<PgPool> {
    let url = LocalEnv::load()?.fresh_postgres_database("fs_hops").await?;
    let pool = DbConfig::new(url).connect().await?;
    migrate(&pool).await?;
    Ok(pool)
}

fn hop(ttl: u8, address: Option<&str>, rtts: &[f64]) -> Hop {
    let received = rtts.len() as u32;
    Hop {
        ttl,
        address: address.map(str::to_owned),
        sent: 3,
        received,
        packet_loss: f64::from(3 - received) * 100.0 / 3.0,
        latency_ms: (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64),
        latency_min_ms: rtts.iter().copied().reduce(f64::min),
        latency_max_ms: rtts.iter().copied().reduce(f64::max),
    }
}

/// A traceroute round over a router, a silent hop and the host (IPv6), and an ICMP sample
/// beside it.
fn samples(time: DateTime<Utc>) -> Vec<Sample> {
    let hops = vec![
        hop(1, Some("10.1.1.1"), &[4.1, 4.25, 4.3]),
        hop(2, None, &[]),
        hop(3, Some("2001:db8::9"), &[8.5, 9.5]),
    ];
    let trace = Sample {
        address: "2001:db8::9".into(),
        latency_ms: Some(9.0),
        latency_min_ms: Some(8.5),
        latency_max_ms: Some(9.5),
        packet_loss: Some(100.0 / 3.0),
        sent: Some(3),
        received: Some(2),
        path_fingerprint: Some(path_fingerprint(&hops)),
        hops,
        ..Sample::new(time, "path", CheckKind::Traceroute, true)
    };
    let icmp = Sample {
        latency_ms: Some(3.0),
        ..Sample::new(time, "ping", CheckKind::Icmp, true)
    };
    for s in [&trace, &icmp] {
        s.validate(Utc::now()).unwrap();
    }
    vec![trace, icmp]
}

/// The stored hops of `node`, as text, in TTL order.
async fn stored_hops(pool: &PgPool, node: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "select concat_ws(' ', ttl, coalesce(host(address), '*'), sent, received,
                          round(packet_loss::numeric, 3), latency_ms, latency_min_ms, latency_max_ms)
           from hops where node = $1 order by time, target, ttl",
    )
    .bind(node)
    .fetch_all(pool)
    .await?)
}

async fn fingerprints(pool: &PgPool, node: &str) -> Result<Vec<(String, Option<String>)>> {
    Ok(sqlx::query_as(
        "select target, path_fingerprint from metrics where node = $1 order by target",
    )
    .bind(node)
    .fetch_all(pool)
    .await?)
}

fn expected_hops() -> Vec<&'static str> {
    vec![
        "1 10.1.1.1 3 3 0.000 4.216666666666666 4.1 4.3",
        "2 * 3 0 100.000",
        "3 2001:db8::9 3 2 33.333 9 8.5 9.5",
    ]
}

/// Writes the samples twice (the second time is a redelivery) through `writer`; the hops and
/// the fingerprint are stored once.
async fn round_trip(pool: &PgPool, node: &str, conflict_tolerant: bool) -> Result<()> {
    let time = Utc::now() - Duration::minutes(5);
    let b = batch(node, samples(time));
    for attempt in 0..2 {
        let written = if conflict_tolerant {
            write_conflict_tolerant(pool, std::slice::from_ref(&b), Utc::now()).await?
        } else {
            write(pool, std::slice::from_ref(&b), Utc::now()).await?
        };
        assert_eq!(written.inserted, if attempt == 0 { 2 } else { 0 });
    }
    assert_eq!(stored_hops(pool, node).await?, expected_hops());
    assert_eq!(
        fingerprints(pool, node).await?,
        [
            ("path".to_owned(), b.samples[0].path_fingerprint.clone()),
            ("ping".to_owned(), None)
        ]
    );
    Ok(())
}

#[tokio::test]
async fn plain_postgres_stores_hops_once_and_drops_them_with_their_sample() -> Result<()> {
    let pool = fresh().await?;
    round_trip(&pool, "gh-copy", false).await?;
    round_trip(&pool, "gh-unnest", true).await?;

    // A hop the database refuses (more answers than probes) fails the whole write: not the
    // sample without its hops, nor hops without the sample.
    let mut broken = samples(Utc::now() - Duration::minutes(1));
    broken[0].hops[0].received = 4;
    let e = write(&pool, &[batch("gh-broken", broken)], Utc::now())
        .await
        .unwrap_err();
    assert!(fiber_etl::writer::is_data_error(&e), "{e}");
    let rows: i64 = sqlx::query_scalar(
        "select (select count(*) from metrics where node = 'gh-broken')
              + (select count(*) from hops where node = 'gh-broken')",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(rows, 0);

    // Retention of raw samples takes their hops along.
    sqlx::query("select fiberstack_apply_retention(now() + interval '30 days')")
        .execute(&pool)
        .await?;
    let left: i64 = sqlx::query_scalar("select count(*) from hops")
        .fetch_one(&pool)
        .await?;
    assert_eq!(left, 0);
    Ok(())
}

#[tokio::test]
async fn timescaledb_keeps_hops_in_a_hypertable_retained_like_raw_samples() -> Result<()> {
    let schema = TimescaleSchema::create("fs_hops").await?;
    let outcome = async {
        let pool = &schema.pool;
        migrate(pool).await?;
        round_trip(pool, "gh-copy", false).await?;
        let hypertable: bool = sqlx::query_scalar(
            "select exists (select 1 from timescaledb_information.hypertables
                             where hypertable_schema = current_schema() and hypertable_name = 'hops')",
        )
        .fetch_one(pool)
        .await?;
        assert!(hypertable);
        let retention = || async {
            sqlx::query_scalar::<_, String>(
                "select config->>'drop_after' from timescaledb_information.jobs
                  where proc_name = 'policy_retention' and hypertable_schema = current_schema()
                    and hypertable_name = 'hops'",
            )
            .fetch_all(pool)
            .await
        };
        assert_eq!(retention().await?, ["7 days"]);
        set_retention(
            pool,
            Retention {
                raw: Some(RetentionPeriod::days(14)),
                hourly: None,
                daily: None,
            },
        )
        .await?;
        assert_eq!(retention().await?, ["14 days"]);
        anyhow::Ok(())
    }
    .await;
    schema.drop().await?;
    outcome
}
