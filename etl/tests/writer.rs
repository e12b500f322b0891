//! The database writer's two paths — binary COPY, and the conflict-tolerant UNNEST insert it
//! falls back to when a sample was stored before — store exactly the same rows.

mod common;

use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use common::TimescaleSchema;
use fiber_etl::migrate::migrate;
use fiber_etl::writer::{write, write_conflict_tolerant};
use fiberstack_e2e::LocalEnv;
use fiberstack_e2e::batch;
use fiberstack_model::{CheckKind, Sample};
use fiberstack_plumbing::postgres::DbConfig;
use sqlx::PgPool;

async fn fresh() -> Result<PgPool> {
    let url = LocalEnv::load()?
        .fresh_postgres_database("fs_writer")
        .await?;
    let pool = DbConfig::new(url).connect().await?;
    migrate(&pool).await?;
    Ok(pool)
}

fn base_time() -> DateTime<Utc> {
    // An hour ago on the hour, plus a fraction of a second in microseconds (what PostgreSQL
    // keeps): the fraction must survive both paths.
    let hour = Utc::now().timestamp() / 3600 * 3600 - 3600;
    DateTime::from_timestamp_micros(hour * 1_000_000 + 488_843).unwrap()
}

/// Samples that exercise every column: all set, all absent, odd text, nested metadata.
fn samples() -> Vec<Sample> {
    let t = base_time();
    let full = Sample {
        address: "10.0.0.1".into(),
        latency_ms: Some(12.345_678),
        latency_min_ms: Some(0.001),
        latency_max_ms: Some(9_999.5),
        jitter_ms: Some(0.25),
        packet_loss: Some(33.3),
        sent: Some(6),
        received: Some(4),
        metadata: serde_json::json!({"ttl": 64, "nested": {"a": [1, 2.5, null]}, "s": "é\"'\\"})
            .as_object()
            .unwrap()
            .clone(),
        ..Sample::new(t, "full", CheckKind::Icmp, true)
    };
    let bare = Sample::new(t + Duration::microseconds(1), "bare", CheckKind::Tcp, false);
    let http = Sample {
        address: "https://api.example.com/health?q=1&r=2".into(),
        latency_ms: Some(80.0),
        status_code: Some(503),
        error: Some("status 503 — \"Service Unavailable\"\n\tretry".into()),
        ..Sample::new(t + Duration::seconds(1), "http ✓", CheckKind::Http, true)
    };
    vec![full, bare, http]
}

/// Every column of a node's rows but the node, as JSON text, in a stable order.
async fn rows(pool: &PgPool, node: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "select (to_jsonb(m) - 'node')::text from metrics m where node = $1 order by time, target",
    )
    .bind(node)
    .fetch_all(pool)
    .await?)
}

#[tokio::test]
async fn copy_and_conflict_tolerant_paths_store_the_same_rows() -> Result<()> {
    let pool = fresh().await?;
    let copied = write(&pool, &[batch("by-copy", samples())], Utc::now()).await?;
    let inserted =
        write_conflict_tolerant(&pool, &[batch("by-insert", samples())], Utc::now()).await?;
    assert_eq!((copied.samples, copied.inserted), (3, 3));
    assert_eq!((inserted.samples, inserted.inserted), (3, 3));
    let by_copy = rows(&pool, "by-copy").await?;
    assert_eq!(by_copy.len(), 3);
    assert_eq!(by_copy, rows(&pool, "by-insert").await?);
    // And what went in is what was sent (spot checks of the binary encoding).
    let (time, metadata, error): (DateTime<Utc>, serde_json::Value, Option<String>) =
        sqlx::query_as(
            "select time, metadata, error from metrics where node = 'by-copy' and target = 'full'",
        )
        .fetch_one(&pool)
        .await?;
    assert_eq!(time, base_time());
    assert_eq!(
        metadata,
        serde_json::Value::Object(samples()[0].metadata.clone())
    );
    assert_eq!(error, None);
    let empty: serde_json::Value = sqlx::query_scalar(
        "select metadata from metrics where node = 'by-copy' and target = 'bare'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(empty, serde_json::json!({}));
    Ok(())
}

#[tokio::test]
async fn a_partly_stored_write_falls_back_and_stores_the_rest_once() -> Result<()> {
    let pool = fresh().await?;
    let first = batch("gh-accra-1", samples()[..1].to_vec());
    write(&pool, std::slice::from_ref(&first), Utc::now()).await?;
    let both = [first, batch("gh-accra-1", samples()[1..].to_vec())];
    let written = write(&pool, &both, Utc::now()).await?;
    assert_eq!((written.samples, written.inserted), (3, 2));
    let again = write(&pool, &both, Utc::now()).await?;
    assert_eq!((again.samples, again.inserted), (3, 0));
    let count: i64 = sqlx::query_scalar("select count(*) from metrics")
        .fetch_one(&pool)
        .await?;
    assert_eq!(count, 3);
    Ok(())
}

/// Writers of one region (several ETL workers) touch the same nodes' rows: the node upsert
/// locks them until the commit, so it comes last, after the COPY. First, it made each write
/// wait for the whole COPY of any other write of the same nodes: the workers wrote one at a
/// time (the load bench's COPY ceiling went from 240,558 to 368,602 samples/s when it moved).
#[tokio::test]
async fn a_write_waiting_for_a_nodes_row_has_copied_its_samples_already() -> Result<()> {
    let pool = fresh().await?;
    write(
        &pool,
        &[batch("gh-accra-1", samples()[..1].to_vec())],
        Utc::now(),
    )
    .await?;
    // Another write of the same node, in the middle of its transaction.
    let mut other = pool.begin().await?;
    sqlx::query("select 1 from nodes where name = 'gh-accra-1' for update")
        .execute(&mut *other)
        .await?;
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            write(
                &pool,
                &[batch("gh-accra-1", samples()[1..].to_vec())],
                Utc::now(),
            )
            .await
        })
    };
    // The writer's backend once it waits for a lock, and the locks it holds on `metrics`.
    let mut holds = None;
    for _ in 0..500 {
        holds = sqlx::query_scalar::<_, Vec<String>>(
            "select array(select l.mode from pg_locks l
                           where l.pid = a.pid and l.granted and l.relation = 'metrics'::regclass)
               from pg_stat_activity a
              where a.wait_event_type = 'Lock' and a.datname = current_database()",
        )
        .fetch_optional(&pool)
        .await?;
        if holds.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let holds = holds.expect("the write never waited for the node's row");
    assert!(
        holds.iter().any(|m| m == "RowExclusiveLock"),
        "the write waits for the node's row before copying its samples (its locks on metrics: {holds:?})"
    );
    other.rollback().await?;
    let written = writer.await??;
    assert_eq!((written.samples, written.inserted), (2, 2));
    assert_eq!(rows(&pool, "gh-accra-1").await?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_count_beyond_its_column_is_refused_never_stored_altered() -> Result<()> {
    let pool = fresh().await?;
    let mut too_many = samples();
    too_many[0].sent = Some(u32::MAX);
    too_many[0].received = Some(1);
    let refused = write(&pool, &[batch("gh-accra-1", too_many.clone())], Utc::now())
        .await
        .expect_err("COPY refuses it");
    assert!(fiber_etl::writer::is_data_error(&refused), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("sent: 4294967295 is out of range"),
        "{refused}"
    );
    let refused = write_conflict_tolerant(&pool, &[batch("gh-accra-1", too_many)], Utc::now())
        .await
        .expect_err("the insert refuses it");
    assert!(fiber_etl::writer::is_data_error(&refused), "{refused}");
    let count: i64 = sqlx::query_scalar("select count(*) from metrics")
        .fetch_one(&pool)
        .await?;
    assert_eq!(count, 0, "nothing of the refused write is stored");
    Ok(())
}

#[tokio::test]
async fn copy_writes_into_the_timescaledb_hypertable() -> Result<()> {
    let schema = TimescaleSchema::create("fs_writer").await?;
    let outcome = async {
        let pool = &schema.pool;
        migrate(pool).await?;
        let written = write(pool, &[batch("gh-accra-1", samples())], Utc::now()).await?;
        let again = write(pool, &[batch("gh-accra-1", samples())], Utc::now()).await?;
        let stored = rows(pool, "gh-accra-1").await?;
        anyhow::Ok((written.inserted, again.inserted, stored.len()))
    }
    .await;
    schema.drop().await?;
    assert_eq!(outcome?, (3, 0, 3));
    Ok(())
}
