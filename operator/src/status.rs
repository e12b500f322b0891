//! Fleet health from the database — the SQL of the gather step: each node's and each
//! target's newest sample, and the 15-minute figures of a probe, of each of its targets, and
//! of each target from each node (for localization).
//! Read-only; the figures are computed from the samples of the window (percentiles are never
//! averaged). What the figures mean for health is decided in [`crate::health`].

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::crd::Summary;

/// The window of `summary` and `targets`.
pub const WINDOW: &str = "15 minutes";
/// Samples are "recent" within this many probe intervals.
pub const REPORTING_INTERVALS: u32 = 3;

/// A small read-only pool (fiberstack-plumbing's): it connects lazily, so the operator starts
/// and keeps running without a database, and every transaction is read-only. Errors name the
/// URL without its password.
pub fn connect_lazy(
    url: &str,
    schema: Option<&str>,
) -> Result<PgPool, fiberstack_plumbing::postgres::DbError> {
    fiberstack_plumbing::postgres::DbConfig {
        schema: schema.map(str::to_owned),
        ..fiberstack_plumbing::postgres::DbConfig::new(url)
    }
    .connect_lazy_read_only()
}

/// A region's stream as its ETL last recorded it in `stream_stats`: the ETL owns these
/// figures (it reads them from Redis at every housekeeping round); the operator reads them
/// here and needs no connection to any region's Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFigures {
    /// Entries in `fiber:samples:<region>`: not yet written, or written and not yet trimmed.
    pub length: u64,
    /// Entries delivered to an ETL worker and not yet acknowledged.
    pub pending: u64,
    /// Entries in `fiber:dlq:<region>`.
    pub dead_letters: u64,
    /// When the ETL recorded them.
    pub recorded_at: DateTime<Utc>,
}

/// The newest figures the region's ETL recorded; None before its first record.
pub async fn stream_figures(
    pool: &PgPool,
    region: &str,
) -> Result<Option<StreamFigures>, sqlx::Error> {
    let row: Option<(DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(
        "select time, stream_length, pending, dead_letters from stream_stats
          where region = $1 order by time desc limit 1",
    )
    .bind(region)
    .fetch_optional(pool)
    .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(row.map(|(time, length, pending, dead)| StreamFigures {
        length: count(length),
        pending: count(pending),
        dead_letters: count(dead),
        recorded_at: time,
    }))
}

/// What the database says about one probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Each node's newest sample, for nodes with one within [`REPORTING_INTERVALS`] + 1
    /// intervals, sorted by node. Which of them report (within [`REPORTING_INTERVALS`]) is
    /// judged by [`Figures::reporting_nodes`] against the operator's clock — the very rule and
    /// clock that judge a target's silent nodes ([`crate::localize`]) — never by the
    /// database's `now()`: the interval more lets the edge be judged there.
    pub node_newest: Vec<(String, DateTime<Utc>)>,
    pub last_sample: Option<DateTime<Utc>>,
    pub summary: Summary,
    /// Targets with samples in the window, by name.
    pub targets: Vec<(String, Summary)>,
    /// HTTPS targets' certificate expiry (notAfter), by name: the earliest over the nodes, each
    /// node's from its newest sample of the window that saw a certificate (so a renewed
    /// certificate counts from its first sample on).
    pub certificates: Vec<(String, DateTime<Utc>)>,
    /// Each target from each vantage point (node) that measured it in the window, by target
    /// name: what [`crate::localize`] judges.
    pub vantages: Vec<(String, crate::localize::Vantage)>,
    /// Each spec target's newest sample (any time, not only the window), by name; targets
    /// never sampled are absent.
    pub target_newest: Vec<(String, DateTime<Utc>)>,
    /// Traceroute targets' rounds in their windows ([`crate::paths::rounds_many`]); None when
    /// the probe has none or they could not be read.
    pub paths: Option<Vec<crate::paths::Round>>,
}

type Row = (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);
/// A sample that saw a certificate: target, time, `cert_not_after`, `cert_days_to_expiry`.
type CertificateRow = (String, DateTime<Utc>, Option<String>, Option<String>);
/// A [`CertificateRow`] led by its probe.
type ProbeCertificateRow = (
    String,
    String,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
);
/// A row of the window's figures: probe, target, node, region (each NULL above its level),
/// the level (`grouping(target, node, region)`), the newest sample, then [`Row`], then the
/// late samples.
type WindowRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i32,
    Option<DateTime<Utc>>,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
);

fn summary((samples, p50, p95, loss, uptime): Row) -> Summary {
    let round = |v: Option<f64>| v.map(|v| (v * 100.0).round() / 100.0);
    Summary {
        samples,
        latency_p50_ms: round(p50),
        latency_p95_ms: round(p95),
        packet_loss_pct: round(loss),
        uptime_pct: round(uptime),
        late_samples: None,
    }
}

/// The figures of a group of samples, as a literal so queries stay `&'static str`.
macro_rules! figures {
    () => {
        "count(*)::int8,
         percentile_cont(0.5) within group (order by latency_ms),
         percentile_cont(0.95) within group (order by latency_ms),
         avg(packet_loss)::float8,
         (100.0 * avg(case when up then 1 else 0 end))::float8"
    };
}

/// The newest sample of any of `targets` of `probe` (`namespace/name`); None when none has
/// a sample.
pub async fn newest_sample(
    pool: &PgPool,
    probe: &str,
    targets: &[String],
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "select max(m.time) from unnest($2::text[]) t(name)
           cross join lateral (select time from metrics
                                where probe = $1 and target = t.name
                                order by time desc limit 1) m",
    )
    .bind(probe)
    .bind(targets)
    .fetch_one(pool)
    .await
}

impl Figures {
    /// Nodes whose newest sample is recent at `now` ([`crate::localize::recent`]), sorted.
    pub fn reporting_nodes(&self, now: DateTime<Utc>, recent: Duration) -> Vec<String> {
        self.node_newest
            .iter()
            .filter(|(_, newest)| crate::localize::recent(*newest, now, recent))
            .map(|(node, _)| node.clone())
            .collect()
    }
}

/// `probe` is `namespace/name`; `targets` are the spec's target names (the newest sample is
/// looked up per target, which the natural key, (probe, target, time, node), answers by
/// reading one index entry). The same figures as [`probe_figures_many`] for one probe.
pub async fn probe_figures(
    pool: &PgPool,
    probe: &str,
    targets: &[String],
    interval: Duration,
) -> Result<Figures, sqlx::Error> {
    let query = ProbeQuery {
        probe: probe.to_owned(),
        targets: targets.to_vec(),
        interval,
    };
    let mut figures = probe_figures_many(pool, std::slice::from_ref(&query)).await?;
    Ok(figures.remove(probe).unwrap_or_default())
}

/// One probe of [`probe_figures_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeQuery {
    /// `namespace/name`, as samples carry it.
    pub probe: String,
    /// The spec's target names: those whose newest sample counts.
    pub targets: Vec<String>,
    /// The probe's interval: nodes with a sample within [`REPORTING_INTERVALS`] of it report.
    pub interval: Duration,
}

/// The figures of many probes (those of one region's database) in four queries whatever their
/// number — reporting nodes, newest samples, the window's figures at three levels (probe,
/// target, target from each node) in one scan, certificates — instead of four per probe,
/// each of which read the window of every probe and kept its own. Keyed by `probe`; every
/// probe asked for has an entry.
pub async fn probe_figures_many(
    pool: &PgPool,
    probes: &[ProbeQuery],
) -> Result<HashMap<String, Figures>, sqlx::Error> {
    let names: Vec<&str> = probes.iter().map(|p| p.probe.as_str()).collect();
    let recent: Vec<f64> = probes
        .iter()
        .map(|p| p.interval.as_secs_f64() * f64::from(REPORTING_INTERVALS))
        .collect();
    // The nodes' newest samples are read one interval further back than Reporting looks,
    // so that a node at the edge is there for the operator's clock to judge.
    let bound: Vec<f64> = probes
        .iter()
        .map(|p| p.interval.as_secs_f64() * f64::from(REPORTING_INTERVALS + 1))
        .collect();
    let widest = bound.iter().copied().fold(0.0, f64::max);
    let (target_probes, target_names): (Vec<&str>, Vec<&str>) = probes
        .iter()
        .flat_map(|p| p.targets.iter().map(|t| (p.probe.as_str(), t.as_str())))
        .unzip();
    let mut figures: HashMap<String, Figures> = names
        .iter()
        .map(|name| ((*name).to_owned(), Figures::default()))
        .collect();

    // The widest window bounds the scan of the time index; each probe keeps its own window.
    let nodes: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "select p.probe, m.node, max(m.time)
           from unnest($1::text[], $2::float8[]) p(probe, secs)
           join metrics m on m.probe = p.probe and m.time > now() - make_interval(secs => p.secs)
          where m.time > now() - make_interval(secs => $3)
          group by 1, 2 order by 1, 2",
    )
    .bind(&names)
    .bind(&bound)
    .bind(widest)
    .fetch_all(pool)
    .await?;
    for (probe, node, newest) in nodes {
        if let Some(f) = figures.get_mut(&probe) {
            f.node_newest.push((node, newest));
        }
    }

    let newest: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "select t.probe, t.target, m.time
           from unnest($1::text[], $2::text[]) t(probe, target)
           cross join lateral (select time from metrics
                                where probe = t.probe and target = t.target
                                order by time desc limit 1) m",
    )
    .bind(&target_probes)
    .bind(&target_names)
    .fetch_all(pool)
    .await?;
    for (probe, target, time) in newest {
        if let Some(f) = figures.get_mut(&probe) {
            f.last_sample = f.last_sample.max(Some(time));
            f.target_newest.push((target, time));
        }
    }

    // grouping(target, node, region): 7 for a probe's row, 3 for a target's, 0 for a target
    // from one node. A sample is late when ingest received it more than the probe's
    // reporting span (3 intervals) after its time.
    let window: Vec<WindowRow> = sqlx::query_as(concat!(
        "select m.probe, target, node, region, grouping(target, node, region)::int4, max(time), ",
        figures!(),
        ", count(*) filter (where received_at > time + make_interval(secs => p.secs))::int8
           from unnest($1::text[], $2::float8[]) p(probe, secs)
           join metrics m on m.probe = p.probe
          where m.time > now() - interval '15 minutes'
          group by grouping sets ((m.probe), (m.probe, target), (m.probe, target, node, region))
          order by m.probe, target nulls first, region nulls first, node nulls first"
    ))
    .bind(&names)
    .bind(&recent)
    .fetch_all(pool)
    .await?;
    for (probe, target, node, region, level, newest, n, p50, p95, loss, up, late) in window {
        let Some(f) = figures.get_mut(&probe) else {
            continue;
        };
        let figures = Summary {
            late_samples: (late > 0).then_some(late),
            ..summary((n, p50, p95, loss, up))
        };
        match (level, target, node, region, newest) {
            (7, ..) => f.summary = figures,
            (3, Some(target), ..) => f.targets.push((target, figures)),
            (0, Some(target), Some(node), Some(region), Some(newest)) => {
                let vantage = crate::localize::Vantage {
                    node,
                    region,
                    summary: figures,
                    newest,
                };
                f.vantages.push((target, vantage));
            }
            _ => {}
        }
    }

    // The metadata is read as text and parsed here: a malformed value in one sample must not
    // fail the whole status query.
    let newest_certificates: Vec<ProbeCertificateRow> = sqlx::query_as(
        "select distinct on (probe, target, node) probe, target, time,
                    metadata->>'cert_not_after', metadata->>'cert_days_to_expiry'
               from metrics
              where probe = any($1) and time > now() - interval '15 minutes'
                and (metadata ? 'cert_not_after' or metadata ? 'cert_days_to_expiry')
              order by probe, target, node, time desc",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
    let mut certificates: HashMap<String, Vec<CertificateRow>> = HashMap::new();
    for (probe, target, time, not_after, days) in newest_certificates {
        certificates
            .entry(probe)
            .or_default()
            .push((target, time, not_after, days));
    }
    for (probe, rows) in certificates {
        if let Some(f) = figures.get_mut(&probe) {
            f.certificates = earliest_certificates(rows);
        }
    }
    Ok(figures)
}

/// Per target, the earliest notAfter of the rows (target, sample time, `cert_not_after`,
/// `cert_days_to_expiry`). A sample of a probe that records only the whole days counts as
/// expiring at its time plus those days, which is within a day of the truth; a value that
/// does not parse is skipped.
fn earliest_certificates(rows: Vec<CertificateRow>) -> Vec<(String, DateTime<Utc>)> {
    let mut earliest: std::collections::BTreeMap<String, DateTime<Utc>> = Default::default();
    for (target, time, not_after, days) in rows {
        let exact = not_after
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc));
        let from_days = || {
            let days: i64 = days?.parse().ok()?;
            time.checked_add_signed(chrono::TimeDelta::try_days(days)?)
        };
        if let Some(at) = exact.or_else(from_days) {
            let entry = earliest.entry(target).or_insert(at);
            *entry = (*entry).min(at);
        }
    }
    earliest.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_earliest_certificate_counts_and_a_malformed_one_is_skipped() {
        let at = |day: u32| Utc.with_ymd_and_hms(2027, 1, day, 0, 0, 0).unwrap();
        let text = |s: &str| Some(s.to_owned());
        let rows = vec![
            ("api".into(), at(1), text("2027-03-01T00:00:00Z"), None),
            ("api".into(), at(1), None, text("20")),
            ("api".into(), at(1), text("next tuesday"), None),
            (
                "web".into(),
                at(1),
                text("2027-02-01T00:00:00+01:00"),
                text("x"),
            ),
            ("dns".into(), at(1), text("soon"), text("many")),
        ];
        assert_eq!(
            earliest_certificates(rows),
            [
                ("api".to_owned(), at(21)),
                (
                    "web".to_owned(),
                    Utc.with_ymd_and_hms(2027, 1, 31, 23, 0, 0).unwrap()
                ),
            ]
        );
    }
}
