//! The stream consumer: reads batches from `fiber:samples:<region>` as consumer group
//! `fiber-etl`, validates them again, writes them, and acknowledges them only after the
//! database committed. Entries that can never be stored go to `fiber:dlq:<region>` with the
//! reason, then are acknowledged: the samples the validator refuses, and the rows the database
//! still refuses — those alone, never their valid neighbours of the same entry. Entries left
//! pending by a dead worker are reclaimed.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fiberstack_model::stream::{
    BATCH_FIELD, CONSUMER_GROUP, REASON_FIELD, SOURCE_ID_FIELD, TRACEPARENT_FIELD,
    dead_letter_stream, decode_batch, samples_stream,
};
use fiberstack_model::{Batch, Rejection};
use fiberstack_plumbing::backoff::Backoff;
use fiberstack_plumbing::redis::RedisConfig;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;

use crate::writer::{self, is_data_error};

/// Settings of one consumer.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub region: String,
    /// This worker's name in the consumer group (the pod's hostname).
    pub consumer: String,
    /// Most stream entries (batches) taken per read.
    pub read_count: usize,
    /// How long one read waits for new entries.
    pub block: Duration,
    /// After a read that found fewer than `read_count` entries, how long to wait for more
    /// before writing: they are written in the same transaction. Under moderate load each read
    /// finds one entry, and a transaction per entry costs the database (and the machine) about
    /// twice the CPU per sample of a full read; the wait adds at most this to freshness.
    /// Zero writes every read at once.
    pub linger: Duration,
    /// Entries pending this long in any consumer are taken over (their worker is presumed dead).
    pub claim_idle: Duration,
    /// How often acknowledged entries are trimmed from the stream and pending ones reclaimed.
    pub housekeeping_every: Duration,
}

impl ConsumerConfig {
    pub fn new(region: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            consumer: consumer.into(),
            read_count: 50,
            block: Duration::from_secs(1),
            linger: Duration::from_millis(10),
            claim_idle: Duration::from_secs(60),
            housekeeping_every: Duration::from_secs(10),
        }
    }
}

/// The Redis connection of a consumer configured with `config`: its reads block for up to
/// `config.block`, so answers are awaited longer than that (see
/// [`RedisConfig::for_blocking_reads`]).
pub fn redis_config(url: &str, config: &ConsumerConfig) -> RedisConfig {
    RedisConfig {
        connect_timeout: Duration::from_secs(5),
        ..RedisConfig::new(url)
    }
    .for_blocking_reads(config.block)
}

/// The wait before retrying a failed round or database write: from 100 ms to 30 s, full
/// jitter (every worker of a region fails together when the database restarts).
pub const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));

/// Counters of a consumer, shared with whoever reports them.
#[derive(Debug)]
pub struct Stats {
    /// Stream entries received (read or reclaimed).
    pub entries_received: AtomicU64,
    /// Samples in the database after a committed write (new or already there).
    pub samples_written: AtomicU64,
    /// Samples that were new to the database.
    pub samples_inserted: AtomicU64,
    /// Entries or samples sent to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Writes that failed for a reason retrying can fix (database unreachable, …).
    pub retries: AtomicU64,
    /// Entries acknowledged.
    pub entries_acked: AtomicU64,
    /// Entries in the stream at the last housekeeping (acknowledged ones are trimmed, so
    /// about what is not stored yet).
    pub stream_length: AtomicU64,
    /// Entries delivered to some worker and not acknowledged, at the last housekeeping.
    pub pending: AtomicU64,
    /// Entries in the region's dead-letter stream, at the last housekeeping.
    pub dead_letters: AtomicU64,
    /// Duration of each committed database write.
    pub write_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Earliest sample time (Unix seconds) written since the rollups were last refreshed;
    /// `i64::MAX` when nothing was written since.
    pub dirty_since: AtomicI64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            entries_received: AtomicU64::new(0),
            samples_written: AtomicU64::new(0),
            samples_inserted: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            entries_acked: AtomicU64::new(0),
            stream_length: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            write_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14),
            ),
            dirty_since: AtomicI64::new(i64::MAX),
        }
    }
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// An entry that can never be stored, and why.
#[derive(Debug, Clone)]
struct DeadLetter {
    source_id: String,
    reason: String,
    payload: Vec<u8>,
}

/// The valid part of an entry's batch, still to be written.
#[derive(Debug)]
struct Part {
    /// The entry's id.
    id: String,
    /// When ingest appended the entry: its id's milliseconds, which Redis takes from its clock.
    received_at: Option<DateTime<Utc>>,
    batch: Batch,
    /// Each sample's index in the entry's batch, for naming a refused one.
    indexes: Vec<usize>,
}

impl Part {
    /// The same envelope with only the samples at `positions` (in `self.batch.samples`).
    fn only(&self, positions: impl IntoIterator<Item = usize>) -> Batch {
        Batch {
            probe: self.batch.probe.clone(),
            region: self.batch.region.clone(),
            country: self.batch.country.clone(),
            node: self.batch.node.clone(),
            agent_version: self.batch.agent_version.clone(),
            samples: positions
                .into_iter()
                .map(|p| self.batch.samples[p].clone())
                .collect(),
        }
    }
}

/// Entries taken from the stream and not yet acknowledged.
#[derive(Debug, Default)]
struct InHand {
    ids: Vec<String>,
    batches: Vec<Part>,
    dead: Vec<DeadLetter>,
    /// Trace contexts of the ingest requests that appended the entries (those that have one).
    traceparents: Vec<String>,
}

pub struct Consumer {
    redis: ConnectionManager,
    pool: PgPool,
    config: ConsumerConfig,
    stream: String,
    dlq: String,
    stats: Arc<Stats>,
    last_housekeeping: Option<Instant>,
    last_stats_pruned: Option<Instant>,
}

/// How long `stream_stats` rows are kept, and how often a worker deletes older ones.
const STREAM_STATS_KEPT_DAYS: i32 = 7;
const STREAM_STATS_PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Consumer {
    pub fn new(redis: ConnectionManager, pool: PgPool, config: ConsumerConfig) -> Self {
        Self {
            stream: samples_stream(&config.region),
            dlq: dead_letter_stream(&config.region),
            redis,
            pool,
            config,
            stats: Arc::default(),
            last_housekeeping: None,
            last_stats_pruned: None,
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Creates the consumer group (and the stream) unless they exist.
    pub async fn ensure_group(&mut self) -> Result<(), ConsumerError> {
        let created: Result<(), redis::RedisError> = self
            .redis
            .xgroup_create_mkstream(&self.stream, CONSUMER_GROUP, "0")
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Runs until `shutdown` turns true: the batch in hand is finished and acknowledged first.
    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), ConsumerError> {
        let mut failures = 0u32;
        while !*shutdown.borrow() {
            match self.step(&mut shutdown).await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let wait = BACKOFF.delay(failures);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "consumer step failed");
                    let _ = tokio::time::timeout(wait, shutdown.changed()).await;
                }
            }
        }
        tracing::info!("consumer stopped");
        Ok(())
    }

    /// One round: housekeeping when due, then one read; returns how many entries it handled.
    pub async fn step(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<usize, ConsumerError> {
        let mut handled = 0;
        let due = self
            .last_housekeeping
            .is_none_or(|at| at.elapsed() >= self.config.housekeeping_every);
        if due {
            // Not on every read: the group exists after the first round, and a read that
            // finds it gone (NOGROUP) makes the next round recreate it.
            self.ensure_group().await?;
            handled += self.reclaim(shutdown).await?;
            self.trim().await?;
            self.record_stream_stats().await;
            self.last_housekeeping = Some(Instant::now());
        }
        let mut entries = match self
            .read_new(self.config.read_count, Some(self.config.block))
            .await
        {
            Ok(entries) => entries,
            Err(e) => {
                if e.code() == Some("NOGROUP") {
                    self.last_housekeeping = None;
                }
                return Err(e.into());
            }
        };
        if !entries.is_empty()
            && entries.len() < self.config.read_count
            && !self.config.linger.is_zero()
        {
            match self.linger(entries.len(), shutdown).await {
                Ok(more) => entries.extend(more),
                // Those in hand are written now rather than left pending until reclaimed.
                Err(e) => {
                    tracing::warn!(error = %e, "reading more entries after the linger failed")
                }
            }
        }
        handled += entries.len();
        if !entries.is_empty() {
            self.handle(entries, shutdown).await?;
        }
        Ok(handled)
    }

    /// Waits `linger` (less if shutdown comes), then takes what arrived meanwhile, up to
    /// `read_count` entries with the `have` in hand, without blocking.
    async fn linger(
        &mut self,
        have: usize,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Vec<StreamId>, redis::RedisError> {
        if !*shutdown.borrow() {
            let _ = tokio::time::timeout(self.config.linger, shutdown.changed()).await;
        }
        self.read_new(self.config.read_count - have, None).await
    }

    /// Up to `count` entries never delivered to the group, waiting up to `block` for the
    /// first when there is none (without `block`, answers at once).
    async fn read_new(
        &mut self,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<StreamId>, redis::RedisError> {
        let mut opts = StreamReadOptions::default()
            .group(CONSUMER_GROUP, &self.config.consumer)
            .count(count);
        if let Some(block) = block {
            opts = opts.block(block.as_millis() as usize);
        }
        let reply: StreamReadReply = self
            .redis
            .xread_options(&[&self.stream], &[">"], &opts)
            .await?;
        Ok(reply.keys.into_iter().flat_map(|k| k.ids).collect())
    }

    /// Takes over entries idle longer than `claim_idle` in any consumer, and handles them.
    async fn reclaim(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<usize, ConsumerError> {
        let mut start = "0-0".to_owned();
        let mut total = 0;
        loop {
            let opts = StreamAutoClaimOptions::default().count(self.config.read_count);
            let reply: StreamAutoClaimReply = self
                .redis
                .xautoclaim_options(
                    &self.stream,
                    CONSUMER_GROUP,
                    &self.config.consumer,
                    self.config.claim_idle.as_millis() as u64,
                    &start,
                    opts,
                )
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(
                    entries = reply.claimed.len(),
                    "reclaimed entries idle in another consumer"
                );
                total += reply.claimed.len();
                self.handle(reply.claimed, shutdown).await?;
            }
            if reply.next_stream_id == "0-0" {
                return Ok(total);
            }
            start = reply.next_stream_id;
        }
    }

    /// Validates, writes, dead-letters and acknowledges `entries`. A database outage is
    /// retried here, entries in hand, until it ends or shutdown is asked (then nothing is
    /// acknowledged and the entries stay pending for the next worker).
    async fn handle(
        &mut self,
        entries: Vec<StreamId>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ConsumerError> {
        self.stats
            .entries_received
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let hand = sort(entries);
        // One write serves batches of many probes, hence many traces: the span links to each
        // rather than pretending to belong to one.
        let span = tracing::info_span!("store_entries", entries = hand.ids.len());
        for tp in &hand.traceparents {
            fiberstack_telemetry::add_link(&span, tp);
        }
        self.store(hand, shutdown).instrument(span).await
    }

    async fn store(
        &mut self,
        mut hand: InHand,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ConsumerError> {
        let mut failures = 0u32;
        loop {
            match self.write(&mut hand).await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    if *shutdown.borrow() {
                        tracing::warn!(error = %e, entries = hand.ids.len(), "shutting down during a database error; entries stay pending");
                        return Err(e.into());
                    }
                    let wait = BACKOFF.delay(failures);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "database write failed, nothing acknowledged");
                    let _ = tokio::time::timeout(wait, shutdown.changed()).await;
                }
            }
        }
        for dead in &hand.dead {
            let _: String = self
                .redis
                .xadd(
                    &self.dlq,
                    "*",
                    &[
                        (SOURCE_ID_FIELD, dead.source_id.as_bytes()),
                        (REASON_FIELD, dead.reason.as_bytes()),
                        (BATCH_FIELD, dead.payload.as_slice()),
                    ],
                )
                .await?;
            tracing::warn!(source_id = %dead.source_id, reason = %dead.reason, "dead-lettered");
        }
        self.stats
            .dead_lettered
            .fetch_add(hand.dead.len() as u64, Ordering::Relaxed);
        let acked: u64 = self
            .redis
            .xack(&self.stream, CONSUMER_GROUP, &hand.ids)
            .await?;
        self.stats.entries_acked.fetch_add(acked, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the valid batches in hand in one transaction. When the database refuses the
    /// data itself, writes entry by entry, narrows each refused entry down to the rows the
    /// database refuses (see [`Self::write_rows`]) and dead-letters those rows only.
    async fn write(&mut self, hand: &mut InHand) -> Result<(), sqlx::Error> {
        if hand.batches.is_empty() {
            return Ok(());
        }
        // The batches are moved out of their parts for the writer, and back if it fails: no
        // copy of each write's (up to 10,000) samples.
        let (batches, envelopes): (Vec<Batch>, Vec<_>) = std::mem::take(&mut hand.batches)
            .into_iter()
            .map(|p| (p.batch, (p.id, p.received_at, p.indexes)))
            .unzip();
        let received: Vec<_> = envelopes.iter().map(|(_, at, _)| *at).collect();
        let started = Instant::now();
        let written = writer::write_received(&self.pool, &batches, &received, Utc::now()).await;
        if written.is_err() {
            hand.batches = batches
                .into_iter()
                .zip(envelopes)
                .map(|(batch, (id, received_at, indexes))| Part {
                    id,
                    received_at,
                    batch,
                    indexes,
                })
                .collect();
        }
        match written {
            Ok(w) => {
                self.stats
                    .write_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.count(w);
                Ok(())
            }
            Err(e) if is_data_error(&e) => {
                tracing::warn!(error = %e, "database refused a write; retrying entry by entry");
                let mut left = std::mem::take(&mut hand.batches).into_iter();
                while let Some(part) = left.next() {
                    match self.write_rows(&part).await {
                        Ok(refused) if refused.is_empty() => {}
                        Ok(refused) => hand.dead.push(refused_rows(&part, &refused)),
                        Err(e) => {
                            // Those written so far are committed (writing them again stores
                            // nothing twice); keep this entry and the rest for the retry.
                            hand.batches.push(part);
                            hand.batches.extend(left);
                            return Err(e);
                        }
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the samples of one entry, narrowing a data error down to the rows the database
    /// refuses: the entry whole, then each half of what was refused, down to single rows —
    /// about 2·log2(n) extra writes per refused row, and none while nothing is refused.
    /// Returns the refused rows (positions in `part.batch.samples`) with the database's
    /// reason; any other error stops the write.
    async fn write_rows(&self, part: &Part) -> Result<Vec<(usize, String)>, sqlx::Error> {
        let mut refused = Vec::new();
        // Ranges of positions still to write, the next one last.
        let whole = 0..part.batch.samples.len();
        let mut todo = vec![whole];
        while let Some(range) = todo.pop() {
            let rows = part.only(range.clone());
            let received = [part.received_at];
            let written = writer::write_received(
                &self.pool,
                std::slice::from_ref(&rows),
                &received,
                Utc::now(),
            );
            match written.await {
                Ok(w) => self.count(w),
                Err(e) if is_data_error(&e) && range.len() == 1 => {
                    refused.push((range.start, e.to_string()));
                }
                Err(e) if is_data_error(&e) => {
                    let middle = range.start + range.len() / 2;
                    todo.push(middle..range.end);
                    todo.push(range.start..middle);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(refused)
    }

    fn count(&self, w: writer::Written) {
        self.stats
            .samples_written
            .fetch_add(w.samples, Ordering::Relaxed);
        self.stats
            .samples_inserted
            .fetch_add(w.inserted, Ordering::Relaxed);
        if let Some(earliest) = w.earliest {
            self.stats
                .dirty_since
                .fetch_min(earliest.timestamp(), Ordering::Relaxed);
        }
    }

    /// Writes the stream's length, pending count and dead-letter count to `stream_stats`, so
    /// dashboards and the operator see the data path's state with database access alone.
    /// Best effort: during a database outage the write path's own retries say what is wrong,
    /// and a missing row is a gap in a graph, not lost data.
    async fn record_stream_stats(&mut self) {
        let dead_letters: u64 = match self.redis.xlen(&self.dlq).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "dead-letter stream length unknown");
                return;
            }
        };
        self.stats
            .dead_letters
            .store(dead_letters, Ordering::Relaxed);
        let recorded = sqlx::query(
            "insert into stream_stats (time, region, consumer, stream_length, pending, dead_letters)
             values (now(), $1, $2, $3, $4, $5)",
        )
        .bind(&self.config.region)
        .bind(&self.config.consumer)
        .bind(Stats::get(&self.stats.stream_length) as i64)
        .bind(Stats::get(&self.stats.pending) as i64)
        .bind(dead_letters as i64)
        .execute(&self.pool)
        .await;
        if let Err(e) = recorded {
            tracing::debug!(error = %e, "stream stats not recorded");
            return;
        }
        if self
            .last_stats_pruned
            .is_none_or(|at| at.elapsed() >= STREAM_STATS_PRUNE_EVERY)
        {
            let pruned = sqlx::query(
                "delete from stream_stats where region = $1 and time < now() - make_interval(days => $2)",
            )
            .bind(&self.config.region)
            .bind(STREAM_STATS_KEPT_DAYS)
            .execute(&self.pool)
            .await;
            match pruned {
                Ok(_) => self.last_stats_pruned = Some(Instant::now()),
                Err(e) => tracing::debug!(error = %e, "old stream stats not pruned"),
            }
        }
    }

    /// Removes acknowledged entries from the stream (XTRIM MINID), never pending ones: the
    /// cut is at the oldest pending entry, or at the last delivered one when none is pending.
    async fn trim(&mut self) -> Result<(), ConsumerError> {
        let pending: redis::streams::StreamPendingReply =
            self.redis.xpending(&self.stream, CONSUMER_GROUP).await?;
        self.stats
            .pending
            .store(pending.count() as u64, Ordering::Relaxed);
        let length: u64 = self.redis.xlen(&self.stream).await?;
        self.stats.stream_length.store(length, Ordering::Relaxed);
        let min_id = match pending {
            redis::streams::StreamPendingReply::Data(data) => data.start_id,
            _ => {
                let groups: redis::streams::StreamInfoGroupsReply =
                    self.redis.xinfo_groups(&self.stream).await?;
                // Nothing pending: everything up to the last delivered entry is acknowledged,
                // that entry included (MINID keeps the ID it is given, so a stream drained to
                // the end would otherwise always keep its last entry and never read 0).
                match groups.groups.into_iter().find(|g| g.name == CONSUMER_GROUP) {
                    Some(g) => next_id(&g.last_delivered_id),
                    None => return Ok(()),
                }
            }
        };
        if min_id == "0-0" {
            return Ok(());
        }
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(&self.stream)
            .arg("MINID")
            .arg(&min_id)
            .query_async(&mut self.redis)
            .await?;
        if trimmed > 0 {
            tracing::debug!(trimmed, min_id = %min_id, "trimmed acknowledged entries");
        }
        Ok(())
    }
}

/// The smallest stream ID after `id` (`<ms>-<seq>` → `<ms>-<seq+1>`); `id` itself when it
/// is not a stream ID.
fn next_id(id: &str) -> String {
    match id.split_once('-').map(|(ms, seq)| (ms, seq.parse::<u64>())) {
        Some((ms, Ok(seq))) if seq < u64::MAX => format!("{ms}-{}", seq + 1),
        Some((ms, Ok(_))) => match ms.parse::<u64>() {
            Ok(ms) => format!("{}-0", ms + 1),
            Err(_) => id.to_owned(),
        },
        _ => id.to_owned(),
    }
}

/// The time in a stream entry's id (`<milliseconds>-<sequence>`, Redis's clock at XADD).
fn entry_time(id: &str) -> Option<DateTime<Utc>> {
    let millis: i64 = id.split_once('-')?.0.parse().ok()?;
    DateTime::from_timestamp_millis(millis)
}

/// Decodes and validates entries into what to write and what to dead-letter.
fn sort(entries: Vec<StreamId>) -> InHand {
    let now = Utc::now();
    let mut hand = InHand::default();
    for entry in entries {
        hand.ids.push(entry.id.clone());
        if let Some(tp) = entry.get::<String>(TRACEPARENT_FIELD) {
            hand.traceparents.push(tp);
        }
        let payload: Option<Vec<u8>> = entry.get(BATCH_FIELD);
        let Some(payload) = payload else {
            hand.dead.push(DeadLetter {
                source_id: entry.id,
                reason: format!("entry has no {BATCH_FIELD:?} field"),
                payload: Vec::new(),
            });
            continue;
        };
        let mut batch = match decode_batch(&payload) {
            Ok(batch) => batch,
            Err(e) => {
                hand.dead.push(DeadLetter {
                    source_id: entry.id,
                    reason: format!("not a batch: {e}"),
                    payload,
                });
                continue;
            }
        };
        // Judged and split in place: the batch as decoded is what is written, not a copy.
        let rejections = match batch.validate(now) {
            Err(e) => {
                hand.dead.push(DeadLetter {
                    source_id: entry.id,
                    reason: format!("invalid batch: {e}"),
                    payload,
                });
                continue;
            }
            Ok(rejections) => rejections,
        };
        if !rejections.is_empty() {
            hand.dead
                .push(rejected_samples(&entry.id, &batch, &rejections));
        }
        let indexes = batch.remove_rejected(&rejections);
        if !batch.samples.is_empty() {
            hand.batches.push(Part {
                received_at: entry_time(&entry.id),
                id: entry.id,
                batch,
                indexes,
            });
        }
    }
    hand
}

/// A dead letter holding only the rows of `part` the database refused, each reason naming
/// the sample's index in the entry's batch.
fn refused_rows(part: &Part, refused: &[(usize, String)]) -> DeadLetter {
    DeadLetter {
        source_id: part.id.clone(),
        reason: refused
            .iter()
            .map(|(p, e)| {
                format!(
                    "samples[{}]: the database refused the row: {e}",
                    part.indexes[*p]
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        payload: dead_letter_json(&part.only(refused.iter().map(|(p, _)| *p))),
    }
}

/// A dead letter's batch of refused samples, as JSON: a dead letter is read by people (with
/// `redis-cli XRANGE`), and the ETL reads JSON entries too.
fn dead_letter_json(batch: &Batch) -> Vec<u8> {
    serde_json::to_vec(batch).expect("a Batch always serializes")
}

/// A dead letter holding only the refused samples of a batch, with every reason.
fn rejected_samples(id: &str, batch: &Batch, rejections: &[Rejection]) -> DeadLetter {
    let samples = rejections
        .iter()
        .map(|r| batch.samples[r.index].clone())
        .collect();
    let refused = Batch {
        samples,
        ..batch.clone()
    };
    DeadLetter {
        source_id: id.to_owned(),
        reason: rejections
            .iter()
            .map(|r| r.error.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        payload: dead_letter_json(&refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for failures in 0..40 {
            let cap = (100u64 << failures.min(9)).min(30_000);
            let d = BACKOFF.delay(failures);
            assert!(d.as_millis() as u64 <= cap, "{failures}: {d:?}");
            assert!(d >= Duration::from_millis(1));
        }
    }

    #[test]
    fn next_id_is_the_smallest_id_after() {
        assert_eq!(next_id("1700000000000-0"), "1700000000000-1");
        assert_eq!(next_id("5-41"), "5-42");
        assert_eq!(next_id(&format!("5-{}", u64::MAX)), "6-0");
        assert_eq!(next_id("0-0"), "0-1");
        assert_eq!(next_id("garbage"), "garbage");
    }
}
