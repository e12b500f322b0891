//! Writes batches into the database: the nodes registry and `metrics`, in one transaction,
//! with one statement per table (arrays bound as parameters and UNNESTed).

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
                     status_code, error, metadata)
select t, n, p, r, tg, k, a, u, l, lmin, lmax, j, pl, s, rc, sc, e, coalesce(m, '{}'::jsonb)
  from unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
              $6::text[], $7::text[], $8::bool[], $9::float8[], $10::float8[],
              $11::float8[], $12::float8[], $13::float8[], $14::int4[], $15::int4[],
              $16::int2[], $17::text[], $18::jsonb[])
       as x(t, n, p, r, tg, k, a, u, l, lmin, lmax, j, pl, s, rc, sc, e, m)
on conflict (node, probe, target, time) do nothing";

const UPSERT_NODES: &str = "
insert into nodes (name, region, country, agent_version, last_seen_at)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
on conflict (name) do update
   set region = excluded.region,
       country = excluded.country,
       agent_version = excluded.agent_version,
       last_seen_at = greatest(nodes.last_seen_at, excluded.last_seen_at)";

/// Stores `batches` in one transaction. Samples already stored (same node, probe, target and
/// time) are skipped, so writing a batch twice stores it once.
pub async fn write(
    pool: &PgPool,
    batches: &[Batch],
    now: DateTime<Utc>,
) -> Result<Written, sqlx::Error> {
    let count: usize = batches.iter().map(|b| b.samples.len()).sum();
    let mut c = Columns::with_capacity(count);
    // A node is upserted once per write, with its newest sample time (not after `now`).
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
        for s in &batch.samples {
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
            c.sent
                .push(s.sent.map(|v| i32::try_from(v).unwrap_or(i32::MAX)));
            c.received
                .push(s.received.map(|v| i32::try_from(v).unwrap_or(i32::MAX)));
            c.status_code
                .push(s.status_code.map(|v| i16::try_from(v).unwrap_or(i16::MAX)));
            c.error.push(s.error.clone());
            c.metadata.push(
                (!s.metadata.is_empty()).then(|| serde_json::Value::Object(s.metadata.clone())),
            );
        }
    }

    let mut tx = pool.begin().await?;
    if !nodes.is_empty() {
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
            .execute(&mut *tx)
            .await?;
    }
    let inserted = if count == 0 {
        0
    } else {
        sqlx::query(INSERT_METRICS)
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
            .execute(&mut *tx)
            .await?
            .rows_affected()
    };
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
        }
    }
}
