//! Writes batches into the database: the nodes registry, `metrics` and the `hops` of
//! traceroute samples, in one transaction.
//!
//! Samples go in by binary `COPY`, the cheapest way into PostgreSQL. `COPY` cannot skip rows
//! that are already stored, so when a write meets a sample stored before (a redelivery after a
//! crash: rare) the whole write is redone conflict-tolerantly, as one `INSERT … SELECT FROM
//! UNNEST(…) ON CONFLICT DO NOTHING` — the approach Promscale measured and DESIGN.md §3 asks
//! to try. Both paths store exactly the same rows, and neither alters a value: one that does
//! not fit its column fails the write as a data error (see [`is_data_error`]), which the
//! consumer narrows down to the row.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fiberstack_model::Batch;
use sqlx::PgPool;

/// Whether a database error is about the data (retrying cannot help) or about the database
/// (retrying later can).
pub fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            // Class 22: data exception; class 23: integrity constraint violation.
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } => true,
        _ => false,
    }
}

/// What one write stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Samples offered to the database.
    pub samples: u64,
    /// Samples that were new (the rest were already stored: a redelivery).
    pub inserted: u64,
    /// The earliest sample time written (rollups from there on are stale).
    pub earliest: Option<DateTime<Utc>>,
}

const INSERT_METRICS: &str = "
insert into metrics (time, node, probe, region, target, kind, address, up, latency_ms,
                     latency_min_ms, latency_max_ms, jitter_ms, packet_loss, sent, received,
                     status_code, error, metadata, path_fingerprint, received_at)
select t, n, p, r, tg, k, a, u, l, lmin, lmax, j, pl, s, rc, sc, e, coalesce(m, '{}'::jsonb), f,
       ra
  from unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
              $6::text[], $7::text[], $8::bool[], $9::float8[], $10::float8[],
              $11::float8[], $12::float8[], $13::float8[], $14::int4[], $15::int4[],
              $16::int2[], $17::text[], $18::jsonb[], $19::text[], $20::timestamptz[])
       as x(t, n, p, r, tg, k, a, u, l, lmin, lmax, j, pl, s, rc, sc, e, m, f, ra)
on conflict (node, probe, target, time) do nothing";

/// Hops already stored (their sample redelivered) are skipped like their sample.
const INSERT_HOPS: &str = "
insert into hops (time, node, probe, target, ttl, address, sent, received, packet_loss,
                  latency_ms, latency_min_ms, latency_max_ms)
select t, n, p, tg, ttl, a::inet, s, rc, pl, l, lmin, lmax
  from unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::text[],
              $7::int4[], $8::int4[], $9::float8[], $10::float8[], $11::float8[], $12::float8[])
       as x(t, n, p, tg, ttl, a, s, rc, pl, l, lmin, lmax)
on conflict (probe, target, node, time, ttl) do nothing";

const UPSERT_NODES: &str = "
insert into nodes (name, region, country, agent_version, last_seen_at)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
on conflict (name) do update
   set region = excluded.region,
       country = excluded.country,
       agent_version = excluded.agent_version,
       last_seen_at = greatest(nodes.last_seen_at, excluded.last_seen_at)";

/// Stores `batches` in one transaction. Samples already stored (same node, probe, target and
/// time) are skipped, so writing a batch twice stores it once. Their `received_at` stays NULL:
/// see [`write_received`].
pub async fn write(
    pool: &PgPool,
    batches: &[Batch],
    now: DateTime<Utc>,
) -> Result<Written, sqlx::Error> {
    write_received(pool, batches, &[], now).await
}

/// [`write`], with the time ingest received each batch (`received[i]` is `batches[i]`'s; None,
/// or a batch beyond the slice, stores NULL): stored as the samples' `received_at`.
pub async fn write_received(
    pool: &PgPool,
    batches: &[Batch],
    received: &[Option<DateTime<Utc>>],
    now: DateTime<Utc>,
) -> Result<Written, sqlx::Error> {
    match write_with(pool, batches, received, now, Path::Copy).await {
        Err(e) if is_unique_violation(&e) => {
            tracing::debug!("a sample was stored before: writing conflict-tolerantly");
            write_with(pool, batches, received, now, Path::ConflictTolerant).await
        }
        other => other,
    }
}

/// [`write`] without the `COPY` fast path: every write goes through `ON CONFLICT DO NOTHING`.
/// For comparison in benchmarks and tests.
pub async fn write_conflict_tolerant(
    pool: &PgPool,
    batches: &[Batch],
    now: DateTime<Utc>,
) -> Result<Written, sqlx::Error> {
    write_with(pool, batches, &[], now, Path::ConflictTolerant).await
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

#[derive(Clone, Copy)]
enum Path {
    Copy,
    ConflictTolerant,
}

const COPY_METRICS: &str =
    "copy metrics (time, node, probe, region, target, kind, address, up, latency_ms,
                     latency_min_ms, latency_max_ms, jitter_ms, packet_loss, sent, received,
                     status_code, error, metadata, path_fingerprint, received_at)
       from stdin (format binary)";

async fn write_with(
    pool: &PgPool,
    batches: &[Batch],
    received: &[Option<DateTime<Utc>>],
    now: DateTime<Utc>,
    path: Path,
) -> Result<Written, sqlx::Error> {
    let count: usize = batches.iter().map(|b| b.samples.len()).sum();
    // Encoded before the transaction, which is not held open for this CPU work.
    let rows = match (count, path) {
        (0, _) | (_, Path::ConflictTolerant) => None,
        (_, Path::Copy) => Some(copy_binary(batches, received)?),
    };
    let mut tx = pool.begin().await?;
    let inserted = match rows {
        Some(rows) => {
            let mut copy = tx.copy_in_raw(COPY_METRICS).await?;
            copy.send(rows).await?;
            copy.finish().await?
        }
        None if count == 0 => 0,
        None => insert_unnest(&mut tx, batches, received, count).await?,
    };
    insert_hops(&mut tx, batches).await?;
    // Last, just before the commit: the upsert locks the nodes' rows until then, and the
    // writes of other workers (other ETL processes of the region) touch the same nodes.
    // Taken first, it made every other write wait for this one's whole COPY: the workers
    // wrote one at a time.
    upsert_nodes(&mut tx, batches, now).await?;
    tx.commit().await?;
    Ok(Written {
        samples: count as u64,
        inserted,
        earliest: batches
            .iter()
            .flat_map(|b| b.samples.iter().map(|s| s.time))
            .min(),
    })
}

/// Upserts each node of the write once, with its newest sample time (not after `now`).
async fn upsert_nodes(
    tx: &mut sqlx::PgTransaction<'_>,
    batches: &[Batch],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut nodes: BTreeMap<&str, (&Batch, DateTime<Utc>)> = BTreeMap::new();
    for batch in batches {
        let newest = batch
            .samples
            .iter()
            .map(|s| s.time)
            .max()
            .unwrap_or(now)
            .min(now);
        nodes
            .entry(batch.node.as_str())
            .and_modify(|(b, seen)| {
                if newest >= *seen {
                    *b = batch;
                    *seen = newest;
                }
            })
            .or_insert((batch, newest));
    }
    if nodes.is_empty() {
        return Ok(());
    }
    let (mut name, mut region, mut country, mut version, mut seen) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (node, (batch, at)) in &nodes {
        name.push(node.to_string());
        region.push(batch.region.clone());
        country.push(batch.country.clone());
        version.push(batch.agent_version.clone());
        seen.push(*at);
    }
    sqlx::query(UPSERT_NODES)
        .bind(name)
        .bind(region)
        .bind(country)
        .bind(version)
        .bind(seen)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_unnest(
    tx: &mut sqlx::PgTransaction<'_>,
    batches: &[Batch],
    received: &[Option<DateTime<Utc>>],
    count: usize,
) -> Result<u64, sqlx::Error> {
    let mut c = Columns::with_capacity(count);
    for (i, batch) in batches.iter().enumerate() {
        for s in &batch.samples {
            c.received_at.push(received.get(i).copied().flatten());
            c.time.push(s.time);
            c.node.push(batch.node.clone());
            c.probe.push(batch.probe.clone());
            c.region.push(batch.region.clone());
            c.target.push(s.target.clone());
            c.kind.push(s.kind.as_str().to_owned());
            c.address.push(s.address.clone());
            c.up.push(s.up);
            c.latency_ms.push(s.latency_ms);
            c.latency_min_ms.push(s.latency_min_ms);
            c.latency_max_ms.push(s.latency_max_ms);
            c.jitter_ms.push(s.jitter_ms);
            c.packet_loss.push(s.packet_loss);
            c.sent.push(s.sent.map(|v| int4("sent", v)).transpose()?);
            c.received
                .push(s.received.map(|v| int4("received", v)).transpose()?);
            c.status_code
                .push(s.status_code.map(|v| int2("status_code", v)).transpose()?);
            c.error.push(s.error.clone());
            c.metadata.push(
                (!s.metadata.is_empty()).then(|| serde_json::Value::Object(s.metadata.clone())),
            );
            c.path_fingerprint.push(s.path_fingerprint.clone());
        }
    }
    Ok(sqlx::query(INSERT_METRICS)
        .bind(c.time)
        .bind(c.node)
        .bind(c.probe)
        .bind(c.region)
        .bind(c.target)
        .bind(c.kind)
        .bind(c.address)
        .bind(c.up)
        .bind(c.latency_ms)
        .bind(c.latency_min_ms)
        .bind(c.latency_max_ms)
        .bind(c.jitter_ms)
        .bind(c.packet_loss)
        .bind(c.sent)
        .bind(c.received)
        .bind(c.status_code)
        .bind(c.error)
        .bind(c.metadata)
        .bind(c.path_fingerprint)
        .bind(c.received_at)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// Inserts the hops of the write's traceroute samples (after their samples: in plain
/// PostgreSQL a hop refers to its sample).
async fn insert_hops(
    tx: &mut sqlx::PgTransaction<'_>,
    batches: &[Batch],
) -> Result<(), sqlx::Error> {
    let n: usize = batches
        .iter()
        .flat_map(|b| &b.samples)
        .map(|s| s.hops.len())
        .sum();
    if n == 0 {
        return Ok(());
    }
    let mut time = Vec::with_capacity(n);
    let (mut node, mut probe, mut target) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut ttl, mut address, mut sent, mut received) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut loss, mut latency, mut min, mut max) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for batch in batches {
        for s in &batch.samples {
            for hop in &s.hops {
                time.push(s.time);
                node.push(batch.node.clone());
                probe.push(batch.probe.clone());
                target.push(s.target.clone());
                ttl.push(i16::from(hop.ttl));
                address.push(hop.address.clone());
                sent.push(int4("hops.sent", hop.sent)?);
                received.push(int4("hops.received", hop.received)?);
                loss.push(hop.packet_loss);
                latency.push(hop.latency_ms);
                min.push(hop.latency_min_ms);
                max.push(hop.latency_max_ms);
            }
        }
    }
    sqlx::query(INSERT_HOPS)
        .bind(time)
        .bind(node)
        .bind(probe)
        .bind(target)
        .bind(ttl)
        .bind(address)
        .bind(sent)
        .bind(received)
        .bind(loss)
        .bind(latency)
        .bind(min)
        .bind(max)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `v` as an `integer` column's value. Validation keeps counts within it; a value beyond is
/// refused as a data error, never stored altered.
fn int4(column: &str, v: u32) -> Result<i32, sqlx::Error> {
    i32::try_from(v).map_err(|_| out_of_range(column, v.into(), i32::MAX.into()))
}

/// `v` as a `smallint` column's value (see [`int4`]).
fn int2(column: &str, v: u16) -> Result<i16, sqlx::Error> {
    i16::try_from(v).map_err(|_| out_of_range(column, v.into(), i16::MAX.into()))
}

fn out_of_range(column: &str, v: i64, max: i64) -> sqlx::Error {
    sqlx::Error::Encode(
        format!("{column}: {v} is out of range of its column (at most {max})").into(),
    )
}

/// The samples in PostgreSQL's binary `COPY` format, in the column order of [`COPY_METRICS`];
/// a value that does not fit its column is an error.
fn copy_binary(
    batches: &[Batch],
    received: &[Option<DateTime<Utc>>],
) -> Result<Vec<u8>, sqlx::Error> {
    /// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
    const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    fn null(out: &mut Vec<u8>) {
        out.extend_from_slice(&(-1i32).to_be_bytes());
    }
    fn float(out: &mut Vec<u8>, v: Option<f64>) {
        match v {
            Some(v) => field(out, &v.to_be_bytes()),
            None => null(out),
        }
    }
    let timestamp = |t: DateTime<Utc>| (t.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes();
    for (i, batch) in batches.iter().enumerate() {
        let received_at = received.get(i).copied().flatten().map(timestamp);
        for s in &batch.samples {
            out.extend_from_slice(&20i16.to_be_bytes());
            field(&mut out, &timestamp(s.time));
            field(&mut out, batch.node.as_bytes());
            field(&mut out, batch.probe.as_bytes());
            field(&mut out, batch.region.as_bytes());
            field(&mut out, s.target.as_bytes());
            field(&mut out, s.kind.as_str().as_bytes());
            field(&mut out, s.address.as_bytes());
            field(&mut out, &[u8::from(s.up)]);
            float(&mut out, s.latency_ms);
            float(&mut out, s.latency_min_ms);
            float(&mut out, s.latency_max_ms);
            float(&mut out, s.jitter_ms);
            float(&mut out, s.packet_loss);
            match s.sent {
                Some(v) => field(&mut out, &int4("sent", v)?.to_be_bytes()),
                None => null(&mut out),
            }
            match s.received {
                Some(v) => field(&mut out, &int4("received", v)?.to_be_bytes()),
                None => null(&mut out),
            }
            match s.status_code {
                Some(v) => field(&mut out, &int2("status_code", v)?.to_be_bytes()),
                None => null(&mut out),
            }
            match &s.error {
                Some(e) => field(&mut out, e.as_bytes()),
                None => null(&mut out),
            }
            // jsonb's binary form: a version byte, then the JSON text, written in place (its
            // length is filled in after). COPY does not apply the column default, so an empty
            // object is sent as `{}`.
            let length_at = out.len();
            out.extend_from_slice(&[0; 4]);
            out.push(1);
            if s.metadata.is_empty() {
                out.extend_from_slice(b"{}");
            } else {
                serde_json::to_writer(&mut out, &s.metadata).expect("a JSON map serializes");
            }
            let length = (out.len() - length_at - 4) as i32;
            out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
            match &s.path_fingerprint {
                Some(f) => field(&mut out, f.as_bytes()),
                None => null(&mut out),
            }
            match &received_at {
                Some(t) => field(&mut out, t),
                None => null(&mut out),
            }
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes()); // trailer
    Ok(out)
}

/// The samples of a write, column by column.
struct Columns {
    time: Vec<DateTime<Utc>>,
    node: Vec<String>,
    probe: Vec<String>,
    region: Vec<String>,
    target: Vec<String>,
    kind: Vec<String>,
    address: Vec<String>,
    up: Vec<bool>,
    latency_ms: Vec<Option<f64>>,
    latency_min_ms: Vec<Option<f64>>,
    latency_max_ms: Vec<Option<f64>>,
    jitter_ms: Vec<Option<f64>>,
    packet_loss: Vec<Option<f64>>,
    sent: Vec<Option<i32>>,
    received: Vec<Option<i32>>,
    status_code: Vec<Option<i16>>,
    error: Vec<Option<String>>,
    /// `None` for an empty object: the database fills in `{}` without parsing JSON.
    metadata: Vec<Option<serde_json::Value>>,
    path_fingerprint: Vec<Option<String>>,
    received_at: Vec<Option<DateTime<Utc>>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            time: Vec::with_capacity(n),
            node: Vec::with_capacity(n),
            probe: Vec::with_capacity(n),
            region: Vec::with_capacity(n),
            target: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            address: Vec::with_capacity(n),
            up: Vec::with_capacity(n),
            latency_ms: Vec::with_capacity(n),
            latency_min_ms: Vec::with_capacity(n),
            latency_max_ms: Vec::with_capacity(n),
            jitter_ms: Vec::with_capacity(n),
            packet_loss: Vec::with_capacity(n),
            sent: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            status_code: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            path_fingerprint: Vec::with_capacity(n),
            received_at: Vec::with_capacity(n),
        }
    }
}
