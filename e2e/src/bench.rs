//! What the benchmarks share: their settings from the environment and the batches they
//! send (the data-path load benchmark in `e2e/benches`, the ETL writer's in `etl/benches`).

use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use fiberstack_model::{Batch, CheckKind, Sample};

/// The checked-out commit, read from `.git` (no git process), or `unknown`.
pub fn commit() -> String {
    let git = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    let read = |p: &str| std::fs::read_to_string(git.join(p)).ok();
    let head = read("HEAD").unwrap_or_default();
    let head = head.trim();
    match head.strip_prefix("ref: ") {
        None if !head.is_empty() => head.to_owned(),
        None => "unknown".to_owned(),
        Some(name) => read(name)
            .map(|c| c.trim().to_owned())
            .or_else(|| {
                read("packed-refs")?
                    .lines()
                    .find_map(|l| l.strip_suffix(name)?.strip_suffix(' ').map(str::to_owned))
            })
            .unwrap_or_else(|| "unknown".to_owned()),
    }
}

/// A numeric setting from the environment variable `name`, or `default`.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Batch `seq` of node `load-node-<node>`: `size` ICMP samples over 20 targets, one
/// millisecond apart, unique per node.
pub fn batch(node: usize, seq: u64, size: usize, base: DateTime<Utc>) -> Batch {
    let samples = (0..size)
        .map(|i| {
            let n = seq * size as u64 + i as u64;
            Sample {
                address: "127.0.0.1".into(),
                latency_ms: Some(1.0 + (n % 97) as f64),
                latency_min_ms: Some(1.0),
                latency_max_ms: Some(100.0),
                jitter_ms: Some(0.3),
                packet_loss: Some(0.0),
                sent: Some(5),
                received: Some(5),
                // Unique per probe: one target of 20, one millisecond each.
                ..Sample::new(
                    base + chrono::Duration::milliseconds((n / 20) as i64),
                    format!("target-{}", n % 20),
                    CheckKind::Icmp,
                    true,
                )
            }
        })
        .collect();
    Batch {
        probe: "load/bench".into(),
        region: "load".into(),
        country: "GH".into(),
        node: format!("load-node-{node}"),
        agent_version: "bench".into(),
        samples,
    }
}

/// The request bodies of one simulated probe's batches, each written from one encoding of its
/// first batch with only the sample times changed: encoding 500 samples per batch cost the
/// load bench's client ~0.8 µs of CPU per sample, on the same 2 cores that are measured.
pub struct BatchBodies {
    template: Template,
    base: DateTime<Utc>,
    size: usize,
}

/// The first batch's encoding, cut where the times go.
enum Template {
    /// The text around the times: `pieces[i]` before sample i's time, the last after.
    Json { pieces: Vec<Vec<u8>> },
    /// The whole batch, and where each sample's time (seconds, then nanoseconds) starts in
    /// it, to be overwritten in place.
    Binary { body: Vec<u8>, time_at: Vec<usize> },
}

impl BatchBodies {
    /// JSON bodies of node `node`'s batches of `size` samples (a multiple of 20) in `region`;
    /// None for a size that is not.
    pub fn new(node: usize, size: usize, base: DateTime<Utc>, region: &str) -> Option<Self> {
        let first = Self::first(node, size, base, region)?;
        let json = serde_json::to_vec(&first).ok()?;
        const KEY: &[u8] = b"\"time\":\"";
        let mut pieces = Vec::with_capacity(size + 1);
        let mut rest = &json[..];
        while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
            let value = at + KEY.len();
            pieces.push(rest[..value].to_vec());
            let end = value + rest[value..].iter().position(|&b| b == b'"')?;
            rest = &rest[end..];
        }
        pieces.push(rest.to_vec());
        (pieces.len() == size + 1).then_some(Self {
            template: Template::Json { pieces },
            base,
            size,
        })
    }

    /// [`Self::new`] in the binary encoding (`fiberstack_model::binary`, what fiber-probe
    /// sends): a sample's time is the 12 bytes after its flags and kind.
    pub fn binary(node: usize, size: usize, base: DateTime<Utc>, region: &str) -> Option<Self> {
        let mut first = Self::first(node, size, base, region)?;
        let body = fiberstack_model::binary::encode(&first);
        // Each sample's bytes are those it adds to a batch of one (after the header and the
        // count of 1, one byte).
        let samples = std::mem::take(&mut first.samples);
        let header = fiberstack_model::binary::encode(&first).len();
        let mut time_at = Vec::with_capacity(size);
        let mut at = body.len();
        for sample in samples.into_iter().rev() {
            first.samples = vec![sample];
            at -= fiberstack_model::binary::encode(&first).len() - header;
            time_at.push(at + 3);
        }
        time_at.reverse();
        Some(Self {
            template: Template::Binary { body, time_at },
            base,
            size,
        })
    }

    /// The node's first batch, in `region`; None for a size that is not a multiple of 20.
    fn first(node: usize, size: usize, base: DateTime<Utc>, region: &str) -> Option<Batch> {
        (size > 0 && size.is_multiple_of(20)).then(|| Batch {
            region: region.to_owned(),
            ..batch(node, 0, size, base)
        })
    }

    /// The time of sample `i` of batch `seq`: 20 samples a millisecond.
    fn time(&self, seq: u64, i: usize) -> (u64, DateTime<Utc>) {
        let ms = (seq * self.size as u64 + i as u64) / 20;
        (ms, self.base + Duration::milliseconds(ms as i64))
    }

    /// The body of batch `seq`, as encoding `batch(node, seq, size, base)` with the region set
    /// would write it but for the latencies.
    pub fn body(&self, seq: u64) -> Vec<u8> {
        match &self.template {
            Template::Binary { body, time_at } => {
                let mut out = body.clone();
                for (i, at) in time_at.iter().enumerate() {
                    let (_, time) = self.time(seq, i);
                    out[*at..*at + 8].copy_from_slice(&time.timestamp().to_le_bytes());
                    out[*at + 8..*at + 12]
                        .copy_from_slice(&time.timestamp_subsec_nanos().to_le_bytes());
                }
                out
            }
            Template::Json { pieces } => {
                let mut out =
                    Vec::with_capacity(pieces.iter().map(Vec::len).sum::<usize>() + 40 * self.size);
                let mut cached: Option<(u64, String)> = None;
                for (i, piece) in pieces[..self.size].iter().enumerate() {
                    out.extend_from_slice(piece);
                    let (ms, time) = self.time(seq, i);
                    if cached.as_ref().is_none_or(|(at, _)| *at != ms) {
                        cached = Some((
                            ms,
                            time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                        ));
                    }
                    out.extend_from_slice(
                        cached.as_ref().map_or("", |(_, t)| t.as_str()).as_bytes(),
                    );
                }
                out.extend_from_slice(&pieces[self.size]);
                out
            }
        }
    }
}

/// The probes of [`fleet_dataset`] (`bench/probe-0` …), `targets / PROBES` targets each.
pub const PROBES: u64 = 20;
/// Its nodes (`bench-node-0` …, in `region-0` … `region-2`): probe p runs on node p % 10.
pub const NODES: u64 = 10;

/// The fleet the dashboards and status benchmarks read (`etl/benches/dashboards.rs`,
/// `operator/benches/status.rs`): Nodes, stream stats, alerts and `hours` of samples of `targets` targets ending now, one
/// hour per statement (progress shows, and no transaction holds the whole set).
pub async fn fleet_dataset(
    pool: &sqlx::PgPool,
    targets: u64,
    hours: u64,
    now: DateTime<Utc>,
) -> Result<()> {
    fleet_dataset_with(pool, targets, hours, now, async |_| Ok(())).await
}

/// [`fleet_dataset`], calling `after_hour` with the end of each hour once it is written
/// (oldest first), before the final vacuum: the dashboards bench refreshes rollups and drops
/// old raw samples there to hold 7 days in the disk of 1.
pub async fn fleet_dataset_with(
    pool: &sqlx::PgPool,
    targets: u64,
    hours: u64,
    now: DateTime<Utc>,
    mut after_hour: impl AsyncFnMut(DateTime<Utc>) -> Result<()>,
) -> Result<()> {
    sqlx::query(
        "insert into nodes (name, region, country, agent_version, last_seen_at)
         select 'bench-node-' || n, 'region-' || (n % 3), (array['GH', 'NG', 'KE'])[n % 3 + 1],
                '0.1.0', $1 - case when n = 9 then interval '1 hour' else interval '5 s' end
           from generate_series(0, $2 - 1) n",
    )
    .bind(now)
    .bind(NODES as i64)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into stream_stats (time, region, consumer, stream_length, pending, dead_letters)
         select t, 'region-' || r, 'etl-0', (extract(epoch from t)::int8 % 13) * 4, r, 2
           from generate_series($1 - make_interval(hours => $2), $1, interval '10 s') t,
                generate_series(0, 2) r",
    )
    .bind(now)
    .bind(hours as i32)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into alerts (id, namespace, probe, region, target, state, reason, started_at, ended_at)
         select 'bench/probe-' || a || '/target-1@' || a, 'bench', 'probe-' || a, 'region-' || (a % 3),
                'target-1', case when a = 0 then 'firing' else 'resolved' end, 'uptime below 99 %',
                $1 - make_interval(mins => a * 40 + 20),
                case when a = 0 then null else $1 - make_interval(mins => a * 40) end
           from generate_series(0, 9) a",
    )
    .bind(now)
    .execute(pool)
    .await?;
    let per_probe = (targets / PROBES) as i32;
    let start = Instant::now();
    for hour in (0..hours).rev() {
        let to = now - Duration::hours(hour as i64);
        // Each (probe, target) has a base latency of 2–200 ms; samples vary ±20 % around it
        // with a 2 % share of spikes to 3–5×; 0.5 % are down; ICMP loses 20 % of packets in
        // 5 % of its samples. Probe p runs on node p % 10, in that node's region.
        sqlx::query(
            "insert into metrics (time, node, probe, region, target, kind, address, up,
               latency_ms, latency_min_ms, latency_max_ms, jitter_ms, packet_loss, sent, received,
               status_code, error, metadata)
             select time, 'bench-node-' || (p % 10), 'bench/probe-' || p, 'region-' || (p % 10 % 3),
                    'target-' || t, kind, '10.' || p || '.0.' || t, up,
                    case when up then latency end,
                    case when up and kind = 'icmp' then latency * 0.9 end,
                    case when up and kind = 'icmp' then latency * 1.2 end,
                    case when kind = 'icmp' then latency * 0.05 end,
                    case when kind = 'icmp' then case when random() < 0.05 then 20.0 else 0.0 end end,
                    case when kind = 'icmp' then 5 end,
                    case when kind = 'icmp' then 4 end,
                    case when kind = 'http' then case when up then 200 else 503 end end,
                    case when not up then 'timeout' end,
                    case when kind = 'http' then jsonb_build_object('dns_ms', 1.0, 'connect_ms', 2.0,
                         'tls_ms', 3.5, 'ttfb_ms', latency * 0.8, 'total_ms', latency) else '{}' end
               from generate_series($1 - interval '1 hour' + interval '10 s', $1, interval '10 s') time
               cross join generate_series(0, 19) p
               cross join generate_series(0, $2 - 1) t
               cross join lateral (select (array['icmp', 'tcp', 'http', 'dns'])[t % 4 + 1] as kind,
                                          random() >= 0.005 as up,
                                          (2 + (p * 50 + t) % 199)
                                            * (0.8 + 0.4 * random())
                                            * case when random() < 0.02 then 3 + 2 * random() else 1 end
                                            as latency
                                    -- Naming `time` makes the draw per sample: otherwise the
                                    -- planner runs this once per (probe, target) and hour.
                                    where time is not null) s",
        )
        .bind(to)
        .bind(per_probe)
        .execute(pool)
        .await
        .with_context(|| format!("generating hour {hour}"))?;
        eprint!(
            "\rgenerated {} of {hours} hours ({:.0} s)",
            hours - hour,
            start.elapsed().as_secs_f64()
        );
        after_hour(to).await?;
    }
    eprintln!();
    sqlx::raw_sql("vacuum analyze").execute(pool).await?;
    Ok(())
}

/// Times `runs` runs of `f` after one warm-up; the durations in milliseconds, sorted.
pub async fn timed<F, Fut, T>(runs: usize, mut f: F) -> Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    f().await?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f().await?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_bodies_are_the_batches_but_for_latencies() {
        let base = Utc::now();
        let json = BatchBodies::new(3, 500, base, "load-x").unwrap();
        let binary = BatchBodies::binary(3, 500, base, "load-x").unwrap();
        for (seq, sent) in [0, 1, 7, 123_456].into_iter().flat_map(|seq| {
            [
                (
                    seq,
                    serde_json::from_slice::<Batch>(&json.body(seq)).unwrap(),
                ),
                (
                    seq,
                    fiberstack_model::binary::decode(&binary.body(seq)).unwrap(),
                ),
            ]
        }) {
            let expected = Batch {
                region: "load-x".into(),
                ..batch(3, seq, 500, base)
            };
            assert_eq!(sent.samples.len(), 500);
            for (s, e) in sent.samples.iter().zip(&expected.samples) {
                assert_eq!(
                    (s.time, &s.target, &s.address, s.kind, s.up),
                    (e.time, &e.target, &e.address, e.kind, e.up)
                );
            }
            assert_eq!(
                (&sent.node, &sent.region, &sent.probe),
                (&expected.node, &expected.region, &expected.probe)
            );
        }
        assert!(BatchBodies::new(3, 510, base, "load-x").is_none());
        assert!(BatchBodies::binary(3, 510, base, "load-x").is_none());
    }
}
