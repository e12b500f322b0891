//! The stream consumer against real Redis and PostgreSQL (a fresh database and a fresh
//! region, so a fresh stream, per test).

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use fiber_etl::consumer::{Consumer, ConsumerConfig, Stats};
use fiber_etl::migrate::migrate;
use fiberstack_e2e::batch;
use fiberstack_e2e::{LocalEnv, ReservedPort, unique_name, wait_for};
use fiberstack_model::stream::{
    BATCH_FIELD, CONSUMER_GROUP, TRACEPARENT_FIELD, dead_letter_stream, encode_batch,
    samples_stream,
};
use fiberstack_model::{Batch, CheckKind, Sample};
use fiberstack_plumbing::postgres::DbConfig;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use sqlx::{PgPool, Row};
use tokio::sync::watch;

struct Fixture {
    region: String,
    url: String,
    pool: PgPool,
    redis: ConnectionManager,
}

async fn fixture() -> Result<Fixture> {
    let env = LocalEnv::load()?;
    let url = env.fresh_postgres_database("fs_etl").await?;
    let pool = DbConfig::new(&url).connect().await?;
    migrate(&pool).await?;
    let redis = redis::Client::open(env.redis_url.as_str())?
        .get_connection_manager()
        .await?;
    Ok(Fixture {
        region: unique_name("test-region"),
        url,
        pool,
        redis,
    })
}

fn at(minute: u32) -> DateTime<Utc> {
    // Within the last few hours, so that retention (7 days from the real clock) keeps them.
    let hour = Utc::now().timestamp() / 3600 * 3600 - 2 * 3600;
    DateTime::from_timestamp(hour + i64::from(minute) * 60, 0).unwrap()
}

fn icmp(minute: u32, latency: f64) -> Sample {
    Sample {
        address: "127.0.0.1".into(),
        latency_ms: Some(latency),
        latency_min_ms: Some(latency - 1.0),
        latency_max_ms: Some(latency + 1.0),
        jitter_ms: Some(0.5),
        packet_loss: Some(20.0),
        sent: Some(5),
        received: Some(4),
        metadata: [("ttl".to_owned(), serde_json::json!(64))]
            .into_iter()
            .collect(),
        ..Sample::new(at(minute), "loopback", CheckKind::Icmp, true)
    }
}

impl Fixture {
    async fn add(&mut self, payload: &[u8]) -> Result<String> {
        Ok(self
            .redis
            .xadd(samples_stream(&self.region), "*", &[(BATCH_FIELD, payload)])
            .await?)
    }

    fn consumer(&self, name: &str) -> Consumer {
        self.consumer_with(name, self.pool.clone(), |_| {})
    }

    /// A consumer of this fixture's stream on `pool`, with `tweak` applied to its settings.
    fn consumer_with(
        &self,
        name: &str,
        pool: sqlx::PgPool,
        tweak: impl FnOnce(&mut ConsumerConfig),
    ) -> Consumer {
        let mut config = ConsumerConfig::new(&self.region, name);
        config.block = Duration::from_millis(100);
        tweak(&mut config);
        Consumer::new(self.redis.clone(), pool, config)
    }

    /// Steps `consumer` until a read finds nothing more.
    async fn drain(&self, consumer: &mut Consumer) -> Result<()> {
        let (_tx, mut rx) = watch::channel(false);
        for _ in 0..100 {
            if consumer.step(&mut rx).await? == 0 {
                return Ok(());
            }
        }
        anyhow::bail!("stream not drained after 100 steps")
    }

    async fn count(&self, sql: &'static str) -> Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }

    async fn pending(&mut self) -> Result<usize> {
        let reply: redis::streams::StreamPendingReply = self
            .redis
            .xpending(samples_stream(&self.region), CONSUMER_GROUP)
            .await?;
        Ok(reply.count())
    }
}

#[tokio::test]
async fn batches_land_field_for_field_exactly_once_and_are_acked() -> Result<()> {
    let mut f = fixture().await?;
    let first = batch("gh-accra-1", vec![icmp(1, 20.0), icmp(2, 30.0)]);
    let first_id = f.add(&encode_batch(&first)).await?;
    let second_id = f
        .add(&encode_batch(&batch("gh-accra-2", vec![icmp(1, 40.0)])))
        .await?;
    f.add(&encode_batch(&first)).await?; // delivered twice: stored once
    let mut consumer = f.consumer("worker-1");
    let stats = consumer.stats();
    f.drain(&mut consumer).await?;

    assert_eq!(f.count("select count(*) from metrics").await?, 3);
    assert_eq!(Stats::get(&stats.samples_written), 5);
    assert_eq!(Stats::get(&stats.samples_inserted), 3);
    assert_eq!(Stats::get(&stats.entries_acked), 3);
    assert_eq!(f.pending().await?, 0);

    let row = sqlx::query(
        "select time, node, probe, region, target, kind, address, up, latency_ms, latency_min_ms,
                latency_max_ms, jitter_ms, packet_loss, sent, received, status_code, error, metadata,
                path_fingerprint
           from metrics where node = 'gh-accra-1' and time = $1",
    )
    .bind(at(2))
    .fetch_one(&f.pool)
    .await?;
    let stored = Sample {
        time: row.get("time"),
        target: row.get("target"),
        kind: row.get::<String, _>("kind").parse()?,
        address: row.get("address"),
        up: row.get("up"),
        latency_ms: row.get("latency_ms"),
        latency_min_ms: row.get("latency_min_ms"),
        latency_max_ms: row.get("latency_max_ms"),
        jitter_ms: row.get("jitter_ms"),
        packet_loss: row.get("packet_loss"),
        sent: row.get::<Option<i32>, _>("sent").map(|v| v as u32),
        received: row.get::<Option<i32>, _>("received").map(|v| v as u32),
        status_code: row.get::<Option<i16>, _>("status_code").map(|v| v as u16),
        error: row.get("error"),
        metadata: match row.get::<serde_json::Value, _>("metadata") {
            serde_json::Value::Object(m) => m,
            other => anyhow::bail!("metadata is not an object: {other}"),
        },
        // An ICMP sample has no hops (the hops table holds a traceroute's).
        hops: Vec::new(),
        path_fingerprint: row.get("path_fingerprint"),
    };
    assert_eq!(
        stored,
        icmp(2, 30.0),
        "the stored sample equals the sent one, field for field"
    );
    let envelope: (String, String, String) = (row.get("node"), row.get("probe"), row.get("region"));
    assert_eq!(
        envelope,
        (
            "gh-accra-1".into(),
            "fiberstack/accra-edge".into(),
            "ghana".into()
        )
    );
    let node: (String, String, String, DateTime<Utc>) = sqlx::query_as(
        "select region, country, agent_version, last_seen_at from nodes where name = 'gh-accra-1'",
    )
    .fetch_one(&f.pool)
    .await?;
    assert_eq!(node, ("ghana".into(), "GH".into(), "0.1.0".into(), at(2)));

    // Each sample carries when ingest appended it: its entry id's milliseconds (Redis's clock
    // at XADD); the redelivered batch keeps its first delivery's.
    let id_time = |id: &str| -> Result<DateTime<Utc>> {
        let millis: i64 = id.split_once('-').context("an entry id")?.0.parse()?;
        DateTime::from_timestamp_millis(millis).context("a time")
    };
    let received: Vec<(String, Option<DateTime<Utc>>)> =
        sqlx::query_as("select node, received_at from metrics order by node, time")
            .fetch_all(&f.pool)
            .await?;
    assert_eq!(
        received,
        [
            ("gh-accra-1".to_owned(), Some(id_time(&first_id)?)),
            ("gh-accra-1".to_owned(), Some(id_time(&first_id)?)),
            ("gh-accra-2".to_owned(), Some(id_time(&second_id)?)),
        ]
    );
    Ok(())
}

/// One step of a consumer with `linger`, started with one entry in the stream while two more
/// arrive 300 ms into the step: how many entries the step handled (written in one
/// transaction), and how many samples are stored after it.
async fn step_with_entries_arriving(linger: Duration) -> Result<(usize, i64)> {
    let mut f = fixture().await?;
    let mut consumer = f.consumer_with("worker-1", f.pool.clone(), |c| c.linger = linger);
    let (_tx, mut rx) = watch::channel(false);
    // The first step does the housekeeping (creating the group) and finds nothing; the next
    // one reads at once.
    assert_eq!(consumer.step(&mut rx).await?, 0);
    f.add(&encode_batch(&batch("gh-accra-1", vec![icmp(1, 20.0)])))
        .await?;
    let step = tokio::spawn(async move { consumer.step(&mut rx).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in ["gh-accra-2", "gh-accra-3"] {
        f.add(&encode_batch(&batch(node, vec![icmp(1, 30.0)])))
            .await?;
    }
    let handled = step.await??;
    let stored = f.count("select count(*) from metrics").await?;
    Ok((handled, stored))
}

#[tokio::test]
async fn entries_arriving_within_the_linger_are_written_with_the_first() -> Result<()> {
    let (handled, stored) = step_with_entries_arriving(Duration::from_secs(2)).await?;
    assert_eq!((handled, stored), (3, 3), "one write of the three entries");
    // Without the wait the step writes the one entry it read.
    let (handled, stored) = step_with_entries_arriving(Duration::ZERO).await?;
    assert_eq!((handled, stored), (1, 1), "the first entry alone");
    Ok(())
}

#[tokio::test]
async fn entries_with_trace_context_are_stored_like_those_without() -> Result<()> {
    let mut f = fixture().await?;
    let stream = samples_stream(&f.region);
    let payload = |node: &str| encode_batch(&batch(node, vec![icmp(1, 20.0)]));
    let _: String = f
        .redis
        .xadd(
            &stream,
            "*",
            &[
                (BATCH_FIELD, payload("traced").as_slice()),
                (
                    TRACEPARENT_FIELD,
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".as_slice(),
                ),
            ],
        )
        .await?;
    // Trace context is advisory: a malformed one must not cost the samples.
    let _: String = f
        .redis
        .xadd(
            &stream,
            "*",
            &[
                (BATCH_FIELD, payload("garbled").as_slice()),
                (TRACEPARENT_FIELD, b"not-a-traceparent".as_slice()),
            ],
        )
        .await?;
    f.add(&payload("untraced")).await?;
    let mut consumer = f.consumer("worker-1");
    let stats = consumer.stats();
    f.drain(&mut consumer).await?;

    let nodes: Vec<String> = sqlx::query_scalar("select node from metrics order by node")
        .fetch_all(&f.pool)
        .await?;
    assert_eq!(nodes, ["garbled", "traced", "untraced"]);
    assert_eq!(Stats::get(&stats.entries_acked), 3);
    assert_eq!(Stats::get(&stats.dead_lettered), 0);
    assert_eq!(f.pending().await?, 0);
    Ok(())
}

#[tokio::test]
async fn what_can_never_be_stored_is_dead_lettered_with_the_reason() -> Result<()> {
    let mut f = fixture().await?;
    let garbage = f.add(b"{not json").await?;
    let mut bad_country = batch("gh-accra-1", vec![icmp(1, 20.0)]);
    bad_country.country = "Ghana".into();
    let envelope = f.add(&encode_batch(&bad_country)).await?;
    let mut one_bad = batch("gh-accra-1", vec![icmp(3, 20.0), icmp(4, 20.0)]);
    one_bad.samples[1].packet_loss = Some(250.0);
    let partial = f.add(&encode_batch(&one_bad)).await?;
    let mut consumer = f.consumer("worker-1");
    f.drain(&mut consumer).await?;

    assert_eq!(
        f.count("select count(*) from metrics").await?,
        1,
        "the valid sample is stored"
    );
    assert_eq!(f.pending().await?, 0, "everything is acknowledged");
    let dlq: redis::streams::StreamRangeReply =
        f.redis.xrange_all(dead_letter_stream(&f.region)).await?;
    let letters: Vec<(String, String)> = dlq
        .ids
        .iter()
        .map(|e| {
            (
                e.get::<String>("source_id").unwrap(),
                e.get::<String>("reason").unwrap(),
            )
        })
        .collect();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert_eq!(letters[0].0, garbage);
    assert!(letters[0].1.starts_with("not a batch:"), "{}", letters[0].1);
    assert_eq!(letters[1].0, envelope);
    assert!(
        letters[1].1.contains("country: \"Ghana\""),
        "{}",
        letters[1].1
    );
    assert_eq!(letters[2].0, partial);
    assert!(
        letters[2].1.starts_with("samples[1].packet_loss: 250"),
        "{}",
        letters[2].1
    );
    let refused: Batch = serde_json::from_slice(&dlq.ids[2].get::<Vec<u8>>("batch").unwrap())?;
    assert_eq!(
        refused.samples,
        vec![one_bad.samples[1].clone()],
        "only the refused sample is dead-lettered"
    );

    // Housekeeping records the data path's state for dashboards and the operator.
    let mut observer = f.consumer_with("worker-2", f.pool.clone(), |c| {
        c.housekeeping_every = Duration::ZERO;
    });
    let (_tx, mut rx) = watch::channel(false);
    observer.step(&mut rx).await?;
    let (region, stream_length, pending, dead_letters): (String, i64, i64, i64) = sqlx::query_as(
        "select region, stream_length, pending, dead_letters from stream_stats
          where consumer = 'worker-2' order by time desc limit 1",
    )
    .fetch_one(&f.pool)
    .await?;
    assert_eq!(region, f.region);
    assert_eq!((pending, dead_letters), (0, 3));
    assert!(
        stream_length <= 3,
        "acknowledged entries are trimmed: {stream_length}"
    );
    // And as a gauge, for the DeadLettersPresent alert.
    assert_eq!(observer.stats().dead_letters.load(Ordering::Relaxed), 3);
    Ok(())
}

#[tokio::test]
async fn a_row_the_database_refuses_is_dead_lettered_alone() -> Result<()> {
    let mut f = fixture().await?;
    // A rule the validator does not know (as under a migration newer than this worker):
    // the database refuses rows the validator lets through.
    sqlx::query("alter table metrics add constraint no_poison check (target <> 'poison')")
        .execute(&f.pool)
        .await?;
    let poison = |minute| Sample {
        target: "poison".into(),
        ..icmp(minute, 20.0)
    };
    let mut five = batch("gh-accra-1", (1..=5).map(|m| icmp(m, 20.0)).collect());
    five.samples[3] = poison(4);
    let refused_row = f.add(&encode_batch(&five)).await?;
    // The validator refuses samples[0]; the database samples[2] (named by its index in the
    // entry, not in the part left after validation) and samples[4].
    let mut mixed = batch(
        "gh-accra-2",
        vec![
            icmp(1, 20.0),
            icmp(2, 20.0),
            poison(3),
            icmp(4, 20.0),
            poison(5),
        ],
    );
    mixed.samples[0].packet_loss = Some(250.0);
    let both = f.add(&encode_batch(&mixed)).await?;
    f.add(&encode_batch(&batch("gh-accra-3", vec![icmp(1, 30.0)])))
        .await?;
    let mut consumer = f.consumer("worker-1");
    f.drain(&mut consumer).await?;

    let stored: Vec<(String, i64)> = sqlx::query_as(
        "select node, count(*) from metrics where target <> 'poison' group by node order by node",
    )
    .fetch_all(&f.pool)
    .await?;
    assert_eq!(
        stored,
        [
            ("gh-accra-1".to_owned(), 4),
            ("gh-accra-2".to_owned(), 2),
            ("gh-accra-3".to_owned(), 1)
        ],
        "every valid neighbour is stored"
    );
    assert_eq!(f.pending().await?, 0, "everything is acknowledged");
    let dlq: redis::streams::StreamRangeReply =
        f.redis.xrange_all(dead_letter_stream(&f.region)).await?;
    let letters: Vec<(String, String, Batch)> = dlq
        .ids
        .iter()
        .map(|e| {
            (
                e.get::<String>("source_id").unwrap(),
                e.get::<String>("reason").unwrap(),
                serde_json::from_slice(&e.get::<Vec<u8>>("batch").unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(letters.len(), 3, "{letters:?}");
    // Validation's letters are written as entries are read, the database's after the write.
    let (id, reason, refused) = &letters[0];
    assert_eq!(id, &both);
    assert!(
        reason.starts_with("samples[0].packet_loss: 250"),
        "{reason}"
    );
    assert_eq!(refused.samples, [mixed.samples[0].clone()]);
    let (id, reason, refused) = &letters[1];
    assert_eq!(id, &refused_row);
    assert!(
        reason.starts_with("samples[3]: the database refused the row:")
            && reason.contains("no_poison"),
        "{reason}"
    );
    assert_eq!(refused.samples, [five.samples[3].clone()], "the row alone");
    assert_eq!(refused.node, "gh-accra-1");
    let (id, reason, refused) = &letters[2];
    assert_eq!(id, &both);
    let reasons: Vec<&str> = reason.split("; ").collect();
    assert_eq!(reasons.len(), 2, "{reason}");
    assert!(
        reasons[0].starts_with("samples[2]: the database refused the row:"),
        "{reason}"
    );
    assert!(
        reasons[1].starts_with("samples[4]: the database refused the row:"),
        "{reason}"
    );
    assert_eq!(
        refused.samples,
        [mixed.samples[2].clone(), mixed.samples[4].clone()]
    );
    assert_eq!(Stats::get(&consumer.stats().dead_lettered), 3);
    assert_eq!(Stats::get(&consumer.stats().samples_written), 7);
    Ok(())
}

#[tokio::test]
async fn database_errors_ack_nothing_and_another_worker_reclaims() -> Result<()> {
    let mut f = fixture().await?;
    f.add(&encode_batch(&batch("gh-accra-1", vec![icmp(1, 20.0)])))
        .await?;

    // A worker whose database is gone: it reads the entry, cannot write, acknowledges nothing.
    let dead_pool = DbConfig::new(&f.url).connect().await?;
    dead_pool.close().await;
    let mut dying = f.consumer_with("worker-dying", dead_pool, |_| {});
    let (tx, mut rx) = watch::channel(false);
    tx.send(true)?; // shutting down: give up after the first failed write
    assert!(dying.step(&mut rx).await.is_err());
    assert_eq!(f.pending().await?, 1, "read but not acknowledged");
    assert_eq!(f.count("select count(*) from metrics").await?, 0);

    // A healthy worker takes the entry over once it has been idle long enough.
    let mut healthy = f.consumer_with("worker-2", f.pool.clone(), |c| {
        c.claim_idle = Duration::from_millis(200);
        c.housekeeping_every = Duration::ZERO;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.drain(&mut healthy).await?;
    assert_eq!(f.count("select count(*) from metrics").await?, 1);
    assert_eq!(f.pending().await?, 0);
    Ok(())
}

#[tokio::test]
async fn acknowledged_entries_are_trimmed_pending_ones_kept() -> Result<()> {
    let mut f = fixture().await?;
    for minute in 0..5 {
        f.add(&encode_batch(&batch(
            "gh-accra-1",
            vec![icmp(minute, 20.0)],
        )))
        .await?;
    }
    let mut consumer = f.consumer("worker-1");
    f.drain(&mut consumer).await?;
    // Two more: one read and left pending by another worker, one not yet read.
    f.add(&encode_batch(&batch("gh-accra-1", vec![icmp(10, 20.0)])))
        .await?;
    let opts = redis::streams::StreamReadOptions::default()
        .group(CONSUMER_GROUP, "slow")
        .count(1);
    let _: redis::streams::StreamReadReply = f
        .redis
        .xread_options(&[samples_stream(&f.region)], &[">"], &opts)
        .await?;
    f.add(&encode_batch(&batch("gh-accra-1", vec![icmp(11, 20.0)])))
        .await?;

    let mut trimmer = f.consumer_with("worker-1", f.pool.clone(), |c| {
        c.housekeeping_every = Duration::ZERO;
    });
    let (_tx, mut rx) = watch::channel(false);
    trimmer.step(&mut rx).await?; // trims, then reads the last entry
    trimmer.step(&mut rx).await?; // trims again
    let len: usize = f.redis.xlen(samples_stream(&f.region)).await?;
    assert_eq!(
        len, 2,
        "the pending entry and the one after it remain; acknowledged ones are gone"
    );
    assert_eq!(f.pending().await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_stream_drained_to_the_end_is_trimmed_to_nothing() -> Result<()> {
    let mut f = fixture().await?;
    for minute in 0..3 {
        f.add(&encode_batch(&batch(
            "gh-accra-1",
            vec![icmp(minute, 20.0)],
        )))
        .await?;
    }
    let mut consumer = f.consumer_with("worker-1", f.pool.clone(), |c| {
        c.housekeeping_every = Duration::ZERO;
    });
    f.drain(&mut consumer).await?;
    let (_tx, mut rx) = watch::channel(false);
    consumer.step(&mut rx).await?; // housekeeping with nothing pending
    let len: usize = f.redis.xlen(samples_stream(&f.region)).await?;
    assert_eq!(len, 0, "every entry was stored and acknowledged");
    assert_eq!(f.count("select count(*) from metrics").await?, 3);
    Ok(())
}

#[tokio::test]
async fn run_command_consumes_and_stops_cleanly_on_sigterm() -> Result<()> {
    let mut f = fixture().await?;
    let env = LocalEnv::load()?;
    let metrics = ReservedPort::new()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fiber-etl"))
        .args(["run", "--region", &f.region, "--consumer", "worker-cli"])
        .args(["--metrics-listen", &metrics.addr().to_string()])
        .env("REDIS_URL", &env.redis_url)
        .env("DATABASE_URL", &f.url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // Let the worker sit in blocking reads first, then feed it slowly: every entry must be
    // read at once, none handed to a read the client had given up on (it would stay
    // pending for the 60 s claim time).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for minute in 0..3 {
        f.add(&encode_batch(&batch(
            "gh-accra-1",
            vec![icmp(minute, 20.0)],
        )))
        .await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let pool = f.pool.clone();
    wait_for(
        "3 samples stored by fiber-etl run",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar("select count(*) from metrics")
                    .fetch_one(&pool)
                    .await?;
                Ok(if n == 3 {
                    Ok(())
                } else {
                    Err(format!("{n} rows"))
                })
            }
        },
    )
    .await?;
    let metrics = reqwest::get(format!("{}/metrics", metrics.url()))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("fiber_etl_sent_new_samples_total 3"),
        "{metrics}"
    );
    fiberstack_e2e::promtool::check_metrics(&metrics)?;
    let status = fiberstack_e2e::terminate(&mut child, Duration::from_secs(30)).await?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)?;
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert_eq!(f.pending().await?, 0);
    Ok(())
}

#[tokio::test]
async fn plain_mode_maintenance_refreshes_rollups_of_what_was_written() -> Result<()> {
    let mut f = fixture().await?;
    f.add(&encode_batch(&batch(
        "gh-accra-1",
        vec![icmp(1, 10.0), icmp(2, 20.0), icmp(3, 60.0)],
    )))
    .await?;
    let mut consumer = f.consumer("worker-1");
    let stats = consumer.stats();
    f.drain(&mut consumer).await?;
    assert_eq!(
        f.count("select count(*) from metrics_hourly").await?,
        0,
        "not refreshed yet"
    );

    let done = fiber_etl::maintenance::maintain_once(&f.pool, &stats).await?;
    assert_eq!(done.refreshed_from, Some(at(1)));
    let hourly: (i64, f64, f64) = sqlx::query_as(
        "select samples, latency_p50_ms, latency_max_ms from metrics_hourly where bucket = $1",
    )
    .bind(at(0))
    .fetch_one(&f.pool)
    .await?;
    assert_eq!(hourly, (3, 20.0, 61.0));
    assert_eq!(f.count("select count(*) from metrics_daily").await?, 1);

    // A late sample of the same hour: the next round recomputes that hour from the samples.
    f.add(&encode_batch(&batch("gh-accra-1", vec![icmp(4, 100.0)])))
        .await?;
    f.drain(&mut consumer).await?;
    let done = fiber_etl::maintenance::maintain_once(&f.pool, &stats).await?;
    assert_eq!(done.refreshed_from, Some(at(4)));
    let samples: i64 = sqlx::query_scalar("select samples from metrics_hourly where bucket = $1")
        .bind(at(0))
        .fetch_one(&f.pool)
        .await?;
    assert_eq!(samples, 4);
    // Nothing written since: nothing to refresh.
    assert_eq!(
        fiber_etl::maintenance::maintain_once(&f.pool, &stats)
            .await?
            .refreshed_from,
        None
    );
    Ok(())
}

/// The worker and its metrics port, to hold while it runs.
fn spawn_run(
    f: &Fixture,
    redis_url: &str,
    consumer: &str,
) -> Result<(std::process::Child, ReservedPort)> {
    let metrics = ReservedPort::new()?;
    let child = Command::new(env!("CARGO_BIN_EXE_fiber-etl"))
        .args(["run", "--region", &f.region, "--consumer", consumer])
        .args(["--claim-idle-secs", "1", "--read-count", "5"])
        .args(["--metrics-listen", &metrics.addr().to_string()])
        .env("REDIS_URL", redis_url)
        .env("DATABASE_URL", &f.url)
        .env("FIBER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((child, metrics))
}

#[tokio::test]
async fn kill_9_mid_stream_then_restart_stores_every_sample_once() -> Result<()> {
    let mut f = fixture().await?;
    let env = LocalEnv::load()?;
    let (mut worker, _worker_metrics) = spawn_run(&f, &env.redis_url, "worker-a")?;
    let batch_n = |n: u32| {
        let samples = (0..10u32).map(|i| Sample {
            time: at(0) + chrono::Duration::milliseconds(i64::from(n * 10 + i)),
            ..icmp(0, 20.0 + f64::from(i))
        });
        encode_batch(&batch("gh-accra-1", samples.collect()))
    };
    for n in 0..50 {
        f.add(&batch_n(n)).await?;
    }
    // Hold the table so the worker is caught between reading entries and committing them.
    let mut lock = f.pool.begin().await?;
    sqlx::query("lock table metrics in exclusive mode")
        .execute(&mut *lock)
        .await?;
    for n in 50..100 {
        f.add(&batch_n(n)).await?;
    }
    let mut redis = f.redis.clone();
    let stream = samples_stream(&f.region);
    let pending_at_kill = wait_for(
        "worker-a holding unacknowledged entries",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let mut redis = redis.clone();
            let stream = stream.clone();
            async move {
                let reply: redis::streams::StreamPendingReply =
                    redis.xpending(&stream, CONSUMER_GROUP).await?;
                Ok(if reply.count() > 0 {
                    Ok(reply.count())
                } else {
                    Err("nothing pending yet".to_owned())
                })
            }
        },
    )
    .await?;
    worker.kill()?; // SIGKILL: no chance to finish or acknowledge
    worker.wait()?;
    lock.rollback().await?;
    for n in 100..200 {
        f.add(&batch_n(n)).await?;
    }
    let expected = 2000i64;
    let (mut restarted, _restarted_metrics) = spawn_run(&f, &env.redis_url, "worker-b")?;
    let pool = f.pool.clone();
    let result = wait_for(
        "every sample stored after the restart",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar("select count(*) from metrics")
                    .fetch_one(&pool)
                    .await?;
                Ok(if n == expected {
                    Ok(n)
                } else {
                    Err(format!("{n} of {expected} rows"))
                })
            }
        },
    )
    .await;
    restarted.kill()?;
    restarted.wait()?;
    assert!(pending_at_kill > 0);
    assert_eq!(result?, expected);
    let distinct: i64 = f
        .count("select count(*) from (select distinct node, probe, target, time from metrics) d")
        .await?;
    assert_eq!(distinct, expected, "no duplicates");
    let pending: redis::streams::StreamPendingReply = redis
        .xpending(samples_stream(&f.region), CONSUMER_GROUP)
        .await?;
    assert_eq!(
        pending.count(),
        0,
        "everything acknowledged, the dead worker's entries included"
    );
    Ok(())
}

#[tokio::test]
async fn a_vanished_stream_and_group_are_recreated() -> Result<()> {
    let mut f = fixture().await?;
    f.add(&encode_batch(&batch("gh-accra-1", vec![icmp(1, 20.0)])))
        .await?;
    let mut consumer = f.consumer("worker-1");
    f.drain(&mut consumer).await?;
    // Redis lost the stream (flushed, or restarted without its data).
    let _: () = f.redis.del(samples_stream(&f.region)).await?;
    let (_tx, mut rx) = watch::channel(false);
    let err = consumer.step(&mut rx).await.unwrap_err();
    assert!(err.to_string().contains("NOGROUP"), "{err}");
    f.add(&encode_batch(&batch("gh-accra-1", vec![icmp(2, 20.0)])))
        .await?;
    f.drain(&mut consumer).await?;
    assert_eq!(f.count("select count(*) from metrics").await?, 2);
    assert_eq!(f.pending().await?, 0);
    Ok(())
}
